//! Which optional kernel/CRIU features this host has, asked of CRIU itself (`criu check`,
//! `criu check --feature NAME`). Nothing is assumed: a feature CRIU does not confirm is absent,
//! and CRIU's own explanation is kept.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::log::plain_messages;
use super::{criu_tool, version, CriuError, CriuVersion};
use crate::tool::ToolError;

/// Post-copy moves pages through pipes of this size; with the default 1 MiB limit (and no
/// CAP_SYS_RESOURCE) the transfer fails with "splice: Bad file descriptor".
const LAZY_PIPE_MIN: u64 = 4 << 20;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// An optional capability a ferry operation may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Soft-dirty page tracking: iterative memory pre-dump (pre-copy migration).
    MemDirtyTrack,
    /// Post-copy: CRIU's non-cooperative userfaultfd, plus `fs.pipe-max-size` >= 4 MiB.
    LazyPages,
    /// Plain userfaultfd.
    Uffd,
    /// TCP repair of half-closed connections.
    TcpHalfClosed,
    /// Restoring into a network namespace created outside CRIU (ferry's own netns).
    ExternalNetNs,
    /// Locking the container's network with nftables instead of iptables.
    NetworkLockNftables,
    /// The PAGEMAP_SCAN ioctl.
    PagemapScan,
    /// Time namespaces.
    #[serde(rename = "timens")]
    TimeNamespace,
    /// Cgroup namespaces.
    #[serde(rename = "cgroupns")]
    CgroupNamespace,
    /// Suspending seccomp while dumping a task that uses seccomp filters (every runc container).
    SeccompSuspend,
}

impl Feature {
    pub const ALL: [Feature; 10] = [
        Feature::MemDirtyTrack,
        Feature::LazyPages,
        Feature::Uffd,
        Feature::TcpHalfClosed,
        Feature::ExternalNetNs,
        Feature::NetworkLockNftables,
        Feature::PagemapScan,
        Feature::TimeNamespace,
        Feature::CgroupNamespace,
        Feature::SeccompSuspend,
    ];

    /// ferry's stable name, the key in [`Capabilities::features`].
    pub fn key(self) -> &'static str {
        match self {
            Feature::MemDirtyTrack => "mem_dirty_track",
            Feature::LazyPages => "lazy_pages",
            Feature::Uffd => "uffd",
            Feature::TcpHalfClosed => "tcp_half_closed",
            Feature::ExternalNetNs => "external_net_ns",
            Feature::NetworkLockNftables => "network_lock_nftables",
            Feature::PagemapScan => "pagemap_scan",
            Feature::TimeNamespace => "timens",
            Feature::CgroupNamespace => "cgroupns",
            Feature::SeccompSuspend => "seccomp_suspend",
        }
    }

    /// The name `criu check --feature` knows (CRIU 4.2's feature list).
    pub fn criu_name(self) -> &'static str {
        match self {
            Feature::LazyPages => "uffd-noncoop",
            other => other.key(),
        }
    }

    /// What needs the feature, in plain words.
    pub fn purpose(self) -> &'static str {
        match self {
            Feature::MemDirtyTrack => "pre-copy needs soft-dirty memory tracking",
            Feature::LazyPages => "post-copy (lazy pages) needs non-cooperative userfaultfd",
            Feature::Uffd => "lazy restore needs userfaultfd",
            Feature::TcpHalfClosed => {
                "moving half-closed TCP connections needs TCP repair of half-closed sockets"
            }
            Feature::ExternalNetNs => {
                "restoring into ferry's network namespace needs external network namespace support"
            }
            Feature::NetworkLockNftables => {
                "locking the network with nftables needs nftables support in CRIU and the kernel"
            }
            Feature::PagemapScan => "scanning written pages needs the PAGEMAP_SCAN ioctl",
            Feature::TimeNamespace => "checkpointing a time namespace needs time namespace support",
            Feature::CgroupNamespace => {
                "checkpointing a cgroup namespace needs cgroup namespace support"
            }
            Feature::SeccompSuspend => {
                "checkpointing a seccomp-confined container needs ptrace seccomp suspension"
            }
        }
    }

    pub fn from_key(key: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.key() == key)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A needed feature this host lacks, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFeature {
    pub feature: Feature,
    /// How the absence was found and CRIU's explanation.
    pub reason: String,
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, which this host lacks ({})",
            self.feature.purpose(),
            self.reason
        )
    }
}

/// What this host's CRIU can do; shown by `ferry info` and exchanged in the migration handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub version: CriuVersion,
    /// `criu check` (the features every dump needs) passed.
    pub checked: bool,
    /// CRIU's verdict: "Looks good." or what it complained about.
    #[serde(default)]
    pub check_message: String,
    /// [`Feature::key`] → present. Keys this ferry does not know (from a newer peer) are kept.
    pub features: BTreeMap<String, bool>,
    /// [`Feature::key`] → why it is absent, for every absent feature.
    #[serde(default)]
    pub reasons: BTreeMap<String, String>,
}

impl Capabilities {
    pub fn has(&self, feature: Feature) -> bool {
        self.features.get(feature.key()).copied().unwrap_or(false)
    }

    /// The needed features this host lacks (a feature never probed counts as lacking).
    pub fn missing(&self, needed: &[Feature]) -> Vec<MissingFeature> {
        needed
            .iter()
            .filter(|f| !self.has(**f))
            .map(|&feature| MissingFeature {
                feature,
                reason: self.reasons.get(feature.key()).cloned().unwrap_or_else(|| {
                    format!(
                        "not reported; see criu check --feature {}",
                        feature.criu_name()
                    )
                }),
            })
            .collect()
    }

    /// Refuses, naming every missing feature, unless all of `needed` are present.
    pub fn require(&self, needed: &[Feature]) -> Result<(), CriuError> {
        let missing = self.missing(needed);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CriuError::MissingFeatures(missing))
        }
    }
}

/// Asks CRIU for its version, runs `criu check`, and checks every [`Feature`]. Fails only when
/// CRIU cannot be run or its version cannot be read.
pub fn probe() -> Result<Capabilities, CriuError> {
    let version = version()?;
    let (checked, check_message) = run_criu_check()?;
    let mut features = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for feature in Feature::ALL {
        let absent_reason = check_feature(feature)?;
        features.insert(feature.key().to_owned(), absent_reason.is_none());
        if let Some(r) = absent_reason {
            reasons.insert(feature.key().to_owned(), r);
        }
    }
    Ok(Capabilities {
        version,
        checked,
        check_message,
        features,
        reasons,
    })
}

/// What the daemon probed at its start ([`remember`]).
static PROBED: std::sync::OnceLock<Capabilities> = std::sync::OnceLock::new();

/// Keeps the capabilities ferryd probed at start, so that each operation's [`require`] answers
/// from them instead of running `criu check` again. The first call wins.
pub fn remember(caps: Capabilities) -> &'static Capabilities {
    PROBED.get_or_init(|| caps)
}

/// Checks just `needed` on this host and refuses with a plain explanation if any is missing:
/// from what ferryd probed at start when it did, else by asking CRIU now.
pub fn require(needed: &[Feature]) -> Result<(), CriuError> {
    if let Some(caps) = PROBED.get() {
        return caps.require(needed);
    }
    let mut missing = Vec::new();
    for &feature in needed {
        if let Some(reason) = check_feature(feature)? {
            missing.push(MissingFeature { feature, reason });
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CriuError::MissingFeatures(missing))
    }
}

fn run_criu_check() -> Result<(bool, String), CriuError> {
    match criu_tool().arg("check").run() {
        Ok(out) => Ok((true, String::from_utf8_lossy(&out).trim().to_owned())),
        Err(ToolError::Failed { stderr, .. }) => Ok((false, plain_messages(&stderr))),
        Err(e) => Err(e.into()),
    }
}

/// `None` when present, else why not.
fn check_feature(feature: Feature) -> Result<Option<String>, CriuError> {
    let name = feature.criu_name();
    let criu_says = match criu_tool().args(["check", "--feature", name]).run() {
        Ok(_) => None,
        Err(ToolError::Failed { stderr, .. }) => {
            let msg = plain_messages(&stderr);
            Some(if msg.is_empty() {
                format!("criu check --feature {name} failed without saying why")
            } else {
                format!("criu check --feature {name}: {msg}")
            })
        }
        Err(e) => return Err(e.into()),
    };
    if criu_says.is_some() || feature != Feature::LazyPages {
        return Ok(criu_says);
    }
    Ok(lazy_pipe_size_problem())
}

fn lazy_pipe_size_problem() -> Option<String> {
    let text = match std::fs::read_to_string(PIPE_MAX_SIZE) {
        Ok(t) => t,
        Err(e) => return Some(format!("cannot read {PIPE_MAX_SIZE}: {e}")),
    };
    match text.trim().parse::<u64>() {
        Ok(size) if size >= LAZY_PIPE_MIN => None,
        Ok(size) => Some(format!(
            "fs.pipe-max-size is {size}, lazy page transfer needs at least {LAZY_PIPE_MIN}: sysctl -w fs.pipe-max-size={LAZY_PIPE_MIN}"
        )),
        Err(_) => Some(format!("{PIPE_MAX_SIZE} holds {:?}, not a number", text.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::testutil::{absent, Need};

    #[test]
    fn keys_round_trip_and_are_unique() {
        let keys: std::collections::BTreeSet<_> = Feature::ALL.iter().map(|f| f.key()).collect();
        assert_eq!(keys.len(), Feature::ALL.len());
        for f in Feature::ALL {
            assert_eq!(Feature::from_key(f.key()), Some(f));
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::json!(f.key()),
                "{f:?}"
            );
        }
    }

    #[test]
    fn require_names_the_missing_feature_in_plain_words() {
        let caps = Capabilities {
            version: CriuVersion::new(4, 2, 1),
            checked: true,
            check_message: "Looks good.".into(),
            features: [
                ("mem_dirty_track".to_owned(), false),
                ("lazy_pages".to_owned(), true),
            ]
            .into_iter()
            .collect(),
            reasons: [(
                "mem_dirty_track".to_owned(),
                "criu check --feature mem_dirty_track: Dirty tracking is OFF.".to_owned(),
            )]
            .into_iter()
            .collect(),
        };
        caps.require(&[Feature::LazyPages]).unwrap();
        let msg = caps
            .require(&[Feature::MemDirtyTrack, Feature::LazyPages])
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "pre-copy needs soft-dirty memory tracking, which this host lacks \
             (criu check --feature mem_dirty_track: Dirty tracking is OFF.)"
        );
        // A feature the peer never reported is missing, not assumed.
        let msg = caps.require(&[Feature::Uffd]).unwrap_err().to_string();
        assert!(msg.contains("lazy restore needs userfaultfd"), "{msg}");
    }

    #[test]
    fn capabilities_tolerate_unknown_keys_from_newer_peers() {
        let json = r#"{"version":{"major":4,"minor":3,"sublevel":0},"checked":true,
                       "features":{"uffd":true,"future_thing":true}}"#;
        let caps: Capabilities = serde_json::from_str(json).unwrap();
        assert!(caps.has(Feature::Uffd));
        assert!(!caps.has(Feature::LazyPages));
        assert_eq!(caps.features.get("future_thing"), Some(&true));
    }

    /// Against the real CRIU and kernel: this host passes `criu check`, has userfaultfd and
    /// lazy pages, and lacks soft-dirty (DESIGN.md §9).
    #[test]
    fn probe_this_host() {
        if absent(&[Need::Root, Need::Criu]) {
            return;
        }
        let caps = probe().unwrap();
        assert!(caps.version.is_supported(), "{:?}", caps.version);
        assert!(caps.checked, "criu check: {}", caps.check_message);
        assert_eq!(caps.check_message, "Looks good.");
        assert_eq!(caps.features.len(), Feature::ALL.len());
        assert!(caps.has(Feature::Uffd), "{:?}", caps.reasons);
        assert!(caps.has(Feature::LazyPages), "{:?}", caps.reasons);
        assert!(caps.has(Feature::ExternalNetNs), "{:?}", caps.reasons);
        assert!(!caps.has(Feature::MemDirtyTrack));
        let reason = &caps.reasons["mem_dirty_track"];
        assert!(reason.contains("Dirty tracking is OFF"), "{reason}");

        let err = require(&[Feature::Uffd, Feature::MemDirtyTrack])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("pre-copy needs soft-dirty memory tracking, which this host lacks (criu check --feature mem_dirty_track: Dirty tracking is OFF"),
            "{err}"
        );
        assert!(!err.contains("userfaultfd"), "{err}");
        require(&[Feature::LazyPages, Feature::Uffd]).unwrap();

        // Once ferryd remembers its probe, `require` answers from it, the same way.
        let kept = remember(caps.clone());
        assert_eq!(kept, &caps);
        let cached = require(&[Feature::Uffd, Feature::MemDirtyTrack]).unwrap_err();
        assert_eq!(cached.to_string(), err);
        require(&[Feature::LazyPages, Feature::Uffd]).unwrap();
    }
}
