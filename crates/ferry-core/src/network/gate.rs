//! The traffic gate of an uncommitted restored copy, as iptables rules in its netns.
//!
//! Each kind owns one chain, so removal deletes exactly the jumps and the chain it added and
//! nothing CRIU or anyone else put there. Rules go in through `iptables-restore --noflush`
//! (one atomic transaction) run under `nsenter --net`.

use std::io::Write;
use std::path::Path;

use super::error::NetError;
use crate::tool::Tool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// Drops every IPv4 packet in and out except on loopback (outgoing RSTs included): the copy
    /// is isolated while attached to the bridge.
    Full,
    /// Drops only outgoing TCP RSTs: a peer's retransmit cannot hit a socket that is not
    /// restored yet and reset the connection.
    RstOnly,
    /// Like `Full` for outgoing packets, but incoming ones go to NFQUEUE [`super::HOLD_QUEUE`],
    /// where a [`super::PacketHold`] keeps them until the commit.
    Hold,
}

impl GateKind {
    pub fn chain(self) -> &'static str {
        match self {
            GateKind::Full => "FERRY-GATE",
            GateKind::RstOnly => "FERRY-RSTGUARD",
            GateKind::Hold => "FERRY-HOLD",
        }
    }

    /// (built-in chain, match) pairs that jump into our chain.
    fn jumps(self) -> &'static [(&'static str, &'static str)] {
        match self {
            GateKind::Full => &[("INPUT", "! -i lo"), ("OUTPUT", "! -o lo")],
            GateKind::RstOnly => &[("OUTPUT", "")],
            GateKind::Hold => &[("INPUT", "! -i lo"), ("OUTPUT", "! -o lo")],
        }
    }

    fn rules(self) -> &'static [&'static str] {
        match self {
            GateKind::Full => &["-j DROP"],
            GateKind::RstOnly => &["-p tcp -m tcp --tcp-flags RST RST -j DROP"],
            // Outgoing packets have an out-interface; incoming ones fall through to the queue.
            // eth0 is `CONTAINER_IFNAME` (a literal here: the rules are static strings).
            GateKind::Hold => &["-o eth0 -j DROP", "-j NFQUEUE --queue-num 7470"],
        }
    }
}

/// The `iptables-restore --noflush` input that adds the gate.
pub(crate) fn install_script(kind: GateKind) -> String {
    let jumps: Vec<(&str, String)> = kind
        .jumps()
        .iter()
        .map(|(b, m)| (*b, m.to_string()))
        .collect();
    chain_script(kind.chain(), kind.rules(), &jumps)
}

/// A chain of its own with `rules`, and the jumps into it, as one transaction.
fn chain_script(chain: &str, rules: &[&str], jumps: &[(&str, String)]) -> String {
    let mut s = format!("*filter\n:{chain} - [0:0]\n");
    for rule in rules {
        s += &format!("-A {chain} {rule}\n");
    }
    for (builtin, matcher) in jumps {
        let sep = if matcher.is_empty() { "" } else { " " };
        s += &format!("-I {builtin} 1{sep}{matcher} -j {chain}\n");
    }
    s + "COMMIT\n"
}

/// The input that removes every trace of these chains found in `saved` (`iptables-save -t
/// filter` output), or None when there is nothing to remove. Jumps are deleted by their saved
/// spec, so whatever form iptables printed them in is what gets deleted.
fn removal_script<'a>(chains: impl IntoIterator<Item = &'a str>, saved: &str) -> Option<String> {
    let mut body = String::new();
    for chain in chains {
        let jump_suffix = format!(" -j {chain}");
        for line in saved.lines().map(str::trim) {
            if let Some(spec) = line.strip_prefix("-A ") {
                let builtin = spec.split_whitespace().next().unwrap_or("");
                if builtin != chain && spec.ends_with(&jump_suffix) {
                    body += &format!("-D {spec}\n");
                }
            }
        }
        if chain_exists(chain, saved) {
            body += &format!("-F {chain}\n-X {chain}\n");
        }
    }
    script(&body)
}

/// The input that puts a `RETURN` first in each of these chains found in `saved` that does
/// not start with one already, or None when none needs it.
fn opening_script<'a>(chains: impl IntoIterator<Item = &'a str>, saved: &str) -> Option<String> {
    let mut body = String::new();
    for chain in chains {
        let first_rule = format!("-A {chain} ");
        let opened = saved
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&first_rule))
            .is_some_and(|l| l == format!("-A {chain} -j RETURN"));
        if chain_exists(chain, saved) && !opened {
            body += &format!("-I {chain} 1 -j RETURN\n");
        }
    }
    script(&body)
}

fn chain_exists(chain: &str, saved: &str) -> bool {
    let declaration = format!(":{chain}");
    saved
        .lines()
        .any(|l| l.split_whitespace().next() == Some(declaration.as_str()))
}

fn script(body: &str) -> Option<String> {
    (!body.is_empty()).then(|| format!("*filter\n{body}COMMIT\n"))
}

fn in_ns(netns_path: &Path, program: &str) -> Tool {
    let mut net = std::ffi::OsString::from("--net=");
    net.push(netns_path);
    Tool::new("nsenter").arg(net).arg("--").arg(program)
}

fn restore(netns_path: &Path, script: &str) -> Result<(), NetError> {
    let mut file = tempfile::NamedTempFile::new().map_err(NetError::io(
        "create temporary rules file",
        std::env::temp_dir(),
    ))?;
    file.write_all(script.as_bytes())
        .map_err(NetError::io("write", file.path()))?;
    in_ns(netns_path, "iptables-restore")
        .arg("--noflush")
        .arg(file.path())
        .run()?;
    Ok(())
}

/// Adds the gate (replacing an earlier one of the same kind).
pub fn install_gate(netns_path: &Path, kind: GateKind) -> Result<(), NetError> {
    remove_gates(netns_path, &[kind])?;
    restore(netns_path, &install_script(kind))
}

/// Removes the gates of these kinds, in one transaction; nothing to remove is fine.
pub fn remove_gates(netns_path: &Path, kinds: &[GateKind]) -> Result<(), NetError> {
    remove_chains(netns_path, kinds.iter().map(|k| k.chain()))
}

/// Lets traffic through the gates of these kinds at once, without removing them: a `RETURN`
/// goes first in each of their chains that exists. nf_tables makes every transaction that
/// deletes a rule wait for an RCU grace period (10–25 ms here, measured), while adding one
/// takes ~3 ms, and a commit opens its gates inside the downtime. [`remove_gates`] tidies up
/// afterwards.
pub fn open_gates(netns_path: &Path, kinds: &[GateKind]) -> Result<(), NetError> {
    let saved = save(netns_path)?;
    let chains = kinds.iter().map(|k| k.chain());
    run_script(netns_path, opening_script(chains, &saved))
}

fn remove_chains<'a>(
    netns_path: &Path,
    chains: impl IntoIterator<Item = &'a str>,
) -> Result<(), NetError> {
    let saved = save(netns_path)?;
    run_script(netns_path, removal_script(chains, &saved))
}

fn save(netns_path: &Path) -> Result<String, NetError> {
    Ok(in_ns(netns_path, "iptables-save")
        .args(["-t", "filter"])
        .run_text()?)
}

fn run_script(netns_path: &Path, script: Option<String>) -> Result<(), NetError> {
    match script {
        Some(script) => restore(netns_path, &script),
        None => Ok(()),
    }
}

/// A TCP port of ferryd's own network namespace that only loopback may reach, for as long as
/// this value lives. CRIU's lazy page server binds 0.0.0.0 whatever address it is given, and
/// its pages must reach the destination only through the authenticated tunnel.
#[derive(Debug)]
pub struct LoopbackOnlyPort {
    port: u16,
    removed: bool,
}

impl LoopbackOnlyPort {
    const NETNS: &'static str = "/proc/self/ns/net";

    fn chain(port: u16) -> String {
        format!("FERRY-LOOPBACK-{port}")
    }

    /// Drops every packet to `port` that does not arrive on loopback (IPv4; CRIU's server
    /// socket is IPv4).
    pub fn install(port: u16) -> Result<Self, NetError> {
        let chain = Self::chain(port);
        remove_chains(Path::new(Self::NETNS), [chain.as_str()])?;
        let jumps = [("INPUT", format!("-p tcp --dport {port} ! -i lo"))];
        restore(
            Path::new(Self::NETNS),
            &chain_script(&chain, &["-j DROP"], &jumps),
        )?;
        Ok(LoopbackOnlyPort {
            port,
            removed: false,
        })
    }

    /// Removes the rule; the caller records a failure.
    pub fn remove(mut self) -> Result<(), NetError> {
        self.removed = true;
        remove_chains(Path::new(Self::NETNS), [Self::chain(self.port).as_str()])
    }
}

impl Drop for LoopbackOnlyPort {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_chains(Path::new(Self::NETNS), [Self::chain(self.port).as_str()])
            {
                tracing::warn!(port = self.port, error = %e, "removing the loopback-only rule");
            }
        }
    }
}

/// Whether `ifname` in the netns at `netns` answers ARP. An uncommitted copy stays silent
/// (`arp_ignore` 8): if its ferryd dies, it must not pull the clients away from a source that
/// resumed. Its MAC is announced by gratuitous ARP instead, while a migration runs.
pub fn set_arp_replies(netns: &Path, ifname: &str, on: bool) -> Result<(), NetError> {
    let knob = format!("/proc/sys/net/ipv4/conf/{ifname}/arp_ignore");
    let value = if on { "0" } else { "8" };
    super::in_netns(netns, move || std::fs::write(&knob, value))?.map_err(|e| NetError::Sysctl {
        what: format!("arp_ignore={value} on {ifname}"),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_script_uses_own_chain() {
        let s = install_script(GateKind::Full);
        assert!(s.contains(":FERRY-GATE - [0:0]\n"));
        assert!(s.contains("-I INPUT 1 ! -i lo -j FERRY-GATE\n"));
        assert!(s.contains("-I OUTPUT 1 ! -o lo -j FERRY-GATE\n"));
        let r = install_script(GateKind::RstOnly);
        assert!(r.contains("-I OUTPUT 1 -j FERRY-RSTGUARD\n"), "{r}");
        assert!(r.ends_with("COMMIT\n"));
    }

    #[test]
    fn removal_touches_only_our_rules() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:CRIU - [0:0]\n\
                     :FERRY-GATE - [0:0]\n-A INPUT ! -i lo -j FERRY-GATE\n-A INPUT -j CRIU\n\
                     -A OUTPUT ! -o lo -j FERRY-GATE\n-A FERRY-GATE -j DROP\nCOMMIT\n";
        let s = removal_script([GateKind::Full.chain()], saved).unwrap();
        assert_eq!(
            s,
            "*filter\n-D INPUT ! -i lo -j FERRY-GATE\n-D OUTPUT ! -o lo -j FERRY-GATE\n\
             -F FERRY-GATE\n-X FERRY-GATE\nCOMMIT\n"
        );
        assert_eq!(removal_script([GateKind::RstOnly.chain()], saved), None);
    }

    #[test]
    fn several_chains_go_in_one_transaction() {
        let saved = "*filter\n:FERRY-HOLD - [0:0]\n:FERRY-GATE - [0:0]\n\
                     -A INPUT ! -i lo -j FERRY-HOLD\n-A FERRY-HOLD -j RETURN\n\
                     -A FERRY-HOLD -j NFQUEUE --queue-num 7470\n-A FERRY-GATE -j DROP\nCOMMIT\n";
        let s = removal_script(["FERRY-HOLD", "FERRY-GATE", "FERRY-RSTGUARD"], saved).unwrap();
        assert_eq!(
            s,
            "*filter\n-D INPUT ! -i lo -j FERRY-HOLD\n-F FERRY-HOLD\n-X FERRY-HOLD\n\
             -F FERRY-GATE\n-X FERRY-GATE\nCOMMIT\n"
        );
    }

    #[test]
    fn opening_puts_one_return_first_in_each_present_chain() {
        let saved = "*filter\n:CRIU - [0:0]\n:FERRY-HOLD - [0:0]\n:FERRY-GATE - [0:0]\n\
                     -A INPUT ! -i lo -j FERRY-HOLD\n-A CRIU -j RETURN\n\
                     -A FERRY-HOLD -o eth0 -j DROP\n-A FERRY-GATE -j DROP\nCOMMIT\n";
        let chains = ["FERRY-HOLD", "FERRY-GATE", "FERRY-RSTGUARD"];
        assert_eq!(
            opening_script(chains, saved).unwrap(),
            "*filter\n-I FERRY-HOLD 1 -j RETURN\n-I FERRY-GATE 1 -j RETURN\nCOMMIT\n"
        );
        // Opened already (a RETURN first): nothing to do, so opening twice adds nothing.
        let opened = saved.replace(
            "-A FERRY-HOLD -o eth0",
            "-A FERRY-HOLD -j RETURN\n-A FERRY-HOLD -o eth0",
        );
        assert_eq!(opening_script(["FERRY-HOLD"], &opened), None, "{opened}");
        // A RETURN later in the chain does not open it.
        let late = saved.replace(
            "-A FERRY-GATE -j DROP",
            "-A FERRY-GATE -j DROP\n-A FERRY-GATE -j RETURN",
        );
        assert!(opening_script(["FERRY-GATE"], &late).is_some());
        assert_eq!(opening_script(["FERRY-RSTGUARD"], saved), None);
    }

    /// The real rule, in this process's netns: present while the guard lives, gone after.
    #[test]
    fn loopback_only_port_comes_and_goes() {
        let listing = || {
            in_ns(Path::new(LoopbackOnlyPort::NETNS), "iptables-save")
                .args(["-t", "filter"])
                .run_text()
                .unwrap()
        };
        let guard = LoopbackOnlyPort::install(47391).unwrap();
        let saved = listing();
        assert!(
            saved.contains("-A INPUT -p tcp -m tcp --dport 47391 ! -i lo -j FERRY-LOOPBACK-47391")
                || saved.contains(
                    "-A INPUT ! -i lo -p tcp -m tcp --dport 47391 -j FERRY-LOOPBACK-47391"
                ),
            "{saved}"
        );
        assert!(saved.contains("-A FERRY-LOOPBACK-47391 -j DROP"), "{saved}");
        guard.remove().unwrap();
        assert!(!listing().contains("FERRY-LOOPBACK-47391"));
        drop(LoopbackOnlyPort::install(47391).unwrap());
        assert!(
            !listing().contains("FERRY-LOOPBACK-47391"),
            "removed on drop too"
        );
    }
}
