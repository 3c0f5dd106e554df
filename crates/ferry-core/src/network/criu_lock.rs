//! CRIU's network lock, left behind in a container's netns by a dump that did not finish.
//!
//! While it dumps, CRIU 4.2.1 (default `--network-lock iptables`) installs, in both iptables
//! and ip6tables of the container's netns:
//!
//! ```text
//! :CRIU - [0:0]
//! -A INPUT -j CRIU
//! -A OUTPUT -j CRIU
//! -A CRIU -m mark --mark 0xc114 -j ACCEPT
//! -A CRIU -j DROP
//! ```
//!
//! A failed dump that CRIU finishes itself removes it; a CRIU that was killed (or hung and was
//! killed by a rollback) leaves it, and the container then drops every packet. Outside a netns
//! CRIU locks each connection with a rule `! --mark 0xc114 … -j DROP` instead; those are removed
//! too. With `--network-lock nftables` the lock is an `inet` table named `CRIU` or `CRIU-<pid>`,
//! removed when the `nft` tool is installed (ferry's own CRIU config keeps the iptables default).

use std::io::Write;
use std::path::Path;

use crate::tool::{Tool, ToolError};

/// The chain CRIU's iptables lock uses.
pub const CRIU_CHAIN: &str = "CRIU";
/// The packet mark CRIU's own traffic carries through its lock (`SOCCR_MARK`).
pub const CRIU_MARK: &str = "0xc114";

#[derive(Debug, thiserror::Error)]
pub enum CriuLockError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("writing a rules file for {netns}: {source}")]
    RulesFile {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CRIU's network lock is still in {family} of netns {netns} after removing it:\n{left}"
    )]
    StillThere {
        family: &'static str,
        netns: String,
        left: String,
    },
}

/// What [`remove_criu_lock`] found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LockRemoval {
    /// e.g. "iptables: chain CRIU, 2 jumps", one entry per family that had a lock.
    pub removed: Vec<String>,
    /// False when `nft` is not installed, so an nftables lock could not be looked for.
    pub nft_checked: bool,
}

#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

fn in_ns(netns: &Path, program: &str) -> Tool {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(netns);
    Tool::new("nsenter").arg(net).arg("--").arg(program)
}

fn save(netns: &Path, family: Family) -> Result<String, CriuLockError> {
    Ok(in_ns(netns, &format!("{}-save", family.name()))
        .args(["-t", "filter"])
        .run_text()?)
}

/// True for a saved rule that is part of CRIU's lock.
fn is_lock_rule(spec: &str) -> bool {
    let chain = spec.split_whitespace().next().unwrap_or("");
    chain != CRIU_CHAIN
        && (spec.ends_with(&format!(" -j {CRIU_CHAIN}"))
            || (spec.contains(&format!("! --mark {CRIU_MARK}")) && spec.ends_with(" -j DROP")))
}

/// The `*-restore --noflush` input that removes CRIU's lock from `saved` (`*-save -t filter`
/// output), with a short description, or None when there is no lock. Rules are deleted by
/// their saved spec, so whatever form the tool printed them in is what gets deleted.
pub(crate) fn removal_script(saved: &str) -> Option<(String, String)> {
    let mut body = String::new();
    let mut chain = false;
    let mut rules = 0;
    for line in saved.lines().map(str::trim) {
        if line.split_whitespace().next() == Some(&format!(":{CRIU_CHAIN}")) {
            chain = true;
        }
        if let Some(spec) = line.strip_prefix("-A ") {
            if is_lock_rule(spec) {
                body += &format!("-D {spec}\n");
                rules += 1;
            }
        }
    }
    if chain {
        body += &format!("-F {CRIU_CHAIN}\n-X {CRIU_CHAIN}\n");
    }
    if body.is_empty() {
        return None;
    }
    let what = match (chain, rules) {
        (true, n) => format!("chain {CRIU_CHAIN} and {n} rules using it"),
        (false, n) => format!("{n} per-connection rules"),
    };
    Some((format!("*filter\n{body}COMMIT\n"), what))
}

fn restore(netns: &Path, family: Family, script: &str) -> Result<(), CriuLockError> {
    let file_err = |source| CriuLockError::RulesFile {
        netns: netns.display().to_string(),
        source,
    };
    let mut file = tempfile::NamedTempFile::new().map_err(file_err)?;
    file.write_all(script.as_bytes()).map_err(file_err)?;
    in_ns(netns, &format!("{}-restore", family.name()))
        .arg("--noflush")
        .arg(file.path())
        .run()?;
    Ok(())
}

fn remove_family(netns: &Path, family: Family) -> Result<Option<String>, CriuLockError> {
    let Some((script, what)) = removal_script(&save(netns, family)?) else {
        return Ok(None);
    };
    restore(netns, family, &script)?;
    // Verified by reading it back, not by the tool's exit status alone.
    let after = save(netns, family)?;
    if let Some((left, _)) = removal_script(&after) {
        return Err(CriuLockError::StillThere {
            family: family.name(),
            netns: netns.display().to_string(),
            left,
        });
    }
    Ok(Some(format!("{}: {what}", family.name())))
}

/// nftables tables CRIU's nft lock creates, from `nft list tables` output.
pub(crate) fn criu_nft_tables(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .map(str::trim)
        .filter(|name| *name == CRIU_CHAIN || name.starts_with("CRIU-"))
        .map(str::to_owned)
        .collect()
}

/// Removes CRIU's nftables lock. Ok(None) when `nft` is not installed.
fn remove_nft(netns: &Path) -> Result<Option<Vec<String>>, CriuLockError> {
    let listing = match in_ns(netns, "nft").args(["list", "tables"]).run_text() {
        Ok(l) => l,
        // nsenter reports a missing program as exit 127 ("No such file or directory").
        Err(ToolError::Failed { status, .. }) if status.code() == Some(127) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut removed = Vec::new();
    for table in criu_nft_tables(&listing) {
        in_ns(netns, "nft")
            .args(["delete", "table", "inet", &table])
            .run()?;
        removed.push(format!("nftables: table inet {table}"));
    }
    let left = criu_nft_tables(&in_ns(netns, "nft").args(["list", "tables"]).run_text()?);
    if !left.is_empty() {
        return Err(CriuLockError::StillThere {
            family: "nftables",
            netns: netns.display().to_string(),
            left: left.join(", "),
        });
    }
    Ok(Some(removed))
}

/// Removes every trace of CRIU's network lock from the netns at `netns` and checks it is
/// gone. Nothing to remove is fine. Each family is tried even when another failed; the first
/// error is returned after all were tried.
pub fn remove_criu_lock(netns: &Path) -> Result<LockRemoval, Vec<CriuLockError>> {
    let mut out = LockRemoval::default();
    let mut errors = Vec::new();
    for family in [Family::V4, Family::V6] {
        match remove_family(netns, family) {
            Ok(Some(what)) => out.removed.push(what),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    match remove_nft(netns) {
        Ok(Some(tables)) => {
            out.nft_checked = true;
            out.removed.extend(tables);
        }
        Ok(None) => out.nft_checked = false,
        Err(e) => errors.push(e),
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Installs a lock exactly as CRIU 4.2.1 does (for tests and fault injection).
pub fn install_criu_lock_like_criu(netns: &Path) -> Result<(), CriuLockError> {
    let script = format!(
        "*filter\n:{c} - [0:0]\n-I INPUT -j {c}\n-I OUTPUT -j {c}\n\
         -A {c} -m mark --mark {m} -j ACCEPT\n-A {c} -j DROP\nCOMMIT\n",
        c = CRIU_CHAIN,
        m = CRIU_MARK
    );
    for family in [Family::V4, Family::V6] {
        restore(netns, family, &script)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-save -t filter` of a netns after CRIU 4.2.1 was killed at post-dump.
    const AFTER_KILLED_DUMP: &str = "# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n\
        :INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:CRIU - [0:0]\n\
        :FERRY-GATE - [0:0]\n-A INPUT -j CRIU\n-A OUTPUT -j CRIU\n\
        -A OUTPUT ! -o lo -j FERRY-GATE\n-A CRIU -m mark --mark 0xc114 -j ACCEPT\n\
        -A CRIU -j DROP\nCOMMIT\n";

    #[test]
    fn removal_takes_only_criu_rules() {
        let (s, what) = removal_script(AFTER_KILLED_DUMP).unwrap();
        assert_eq!(
            s,
            "*filter\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-F CRIU\n-X CRIU\nCOMMIT\n"
        );
        assert_eq!(what, "chain CRIU and 2 rules using it");
    }

    #[test]
    fn per_connection_rules_are_removed() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.2/32 -d 10.0.0.1/32 -p tcp \
                     -m tcp --sport 5 --dport 6 -m mark ! --mark 0xc114 -j DROP\n\
                     -A INPUT -p tcp -j DROP\nCOMMIT\n";
        let (s, _) = removal_script(saved).unwrap();
        assert!(s.contains("-D INPUT -s 10.0.0.2/32"), "{s}");
        assert!(!s.contains("-D INPUT -p tcp -j DROP"), "{s}");
    }

    #[test]
    fn nothing_to_remove() {
        assert_eq!(
            removal_script("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn nft_tables_by_name() {
        let l = "table inet filter\ntable inet CRIU-4242\ntable ip CRIU\ntable inet CRIU\n";
        assert_eq!(criu_nft_tables(l), vec!["CRIU-4242", "CRIU"]);
    }

    /// A real netns: the lock as CRIU installs it drops traffic, and removal leaves the
    /// other rules alone.
    #[test]
    fn real_netns_lock_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns");
        crate::network::create_netns(&ns).expect("create netns (needs root)");
        let result = std::panic::catch_unwind(|| {
            assert_eq!(remove_criu_lock(&ns).unwrap().removed, Vec::<String>::new());
            in_ns(&ns, "iptables")
                .args(["-A", "INPUT", "-p", "udp", "-j", "DROP"])
                .run()
                .unwrap();
            install_criu_lock_like_criu(&ns).unwrap();
            assert!(save(&ns, Family::V4).unwrap().contains(":CRIU"));
            let r = remove_criu_lock(&ns).unwrap();
            assert_eq!(
                r.removed,
                vec![
                    "iptables: chain CRIU and 2 rules using it".to_owned(),
                    "ip6tables: chain CRIU and 2 rules using it".to_owned()
                ]
            );
            for family in [Family::V4, Family::V6] {
                assert!(!save(&ns, family).unwrap().contains("CRIU"));
            }
            assert!(save(&ns, Family::V4)
                .unwrap()
                .contains("-A INPUT -p udp -j DROP"));
        });
        crate::network::delete_netns(&ns).expect("delete netns");
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
