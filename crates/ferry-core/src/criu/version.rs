//! CRIU's version, as printed by `criu --version`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{criu_tool, CriuError};

/// A CRIU release number. Field order makes the derived ordering numeric (4.10 > 4.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CriuVersion {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

impl CriuVersion {
    /// The oldest CRIU ferry works with: 4.1 cannot dump TCP sockets on kernels >= 6.16, and 4.2
    /// fixed the nftables network-lock crash in RPC mode.
    pub const MIN: CriuVersion = CriuVersion::new(4, 2, 0);

    pub const fn new(major: u32, minor: u32, sublevel: u32) -> Self {
        CriuVersion {
            major,
            minor,
            sublevel,
        }
    }

    pub fn is_supported(&self) -> bool {
        *self >= Self::MIN
    }

    /// Reads the `Version: X.Y[.Z]` line of `criu --version` output.
    pub fn parse_version_output(output: &str) -> Result<Self, CriuError> {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| CriuError::VersionUnparsable {
                output: output.trim().to_owned(),
            })
    }
}

/// Parses "4.2", "4.2.1", and tolerates a suffix after the numbers ("4.2-rc1", "4.2.1-dirty").
impl FromStr for CriuVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let numeric: &str = s
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .unwrap_or("");
        let parts: Vec<&str> = numeric.trim_end_matches('.').split('.').collect();
        let num = |i: usize| -> Result<u32, String> {
            match parts.get(i) {
                None => Ok(0),
                Some(p) => p.parse().map_err(|_| format!("bad CRIU version {s:?}")),
            }
        };
        if parts.len() < 2 || parts.len() > 3 {
            return Err(format!("bad CRIU version {s:?}"));
        }
        Ok(CriuVersion::new(num(0)?, num(1)?, num(2)?))
    }
}

/// Prints like CRIU does: "4.2" for X.Y.0 releases, "4.2.1" otherwise.
impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sublevel == 0 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
        }
    }
}

/// The version of the CRIU binary ferry would run.
pub fn version() -> Result<CriuVersion, CriuError> {
    let out = criu_tool().arg("--version").run()?;
    CriuVersion::parse_version_output(&String::from_utf8_lossy(&out))
}

/// [`version`], refusing a CRIU older than [`CriuVersion::MIN`].
pub fn require_supported_version() -> Result<CriuVersion, CriuError> {
    let found = version()?;
    if !found.is_supported() {
        return Err(CriuError::TooOld {
            found,
            min: CriuVersion::MIN,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::testutil::{absent, Need};

    #[test]
    fn parses_criu_output() {
        let v = CriuVersion::parse_version_output("Version: 4.2.1\n").unwrap();
        assert_eq!(v, CriuVersion::new(4, 2, 1));
        let v = CriuVersion::parse_version_output("Version: 3.17\nGitID: v3.17-12-gabc\n").unwrap();
        assert_eq!(v, CriuVersion::new(3, 17, 0));
        assert_eq!(
            "4.2-rc1".parse::<CriuVersion>().unwrap(),
            CriuVersion::new(4, 2, 0)
        );
        assert!(CriuVersion::parse_version_output("criu: command not found").is_err());
        assert!("4".parse::<CriuVersion>().is_err());
        assert!("x.y".parse::<CriuVersion>().is_err());
    }

    #[test]
    fn ordering_and_display() {
        assert!(CriuVersion::new(4, 10, 0) > CriuVersion::new(4, 9, 3));
        assert!(CriuVersion::new(4, 1, 1) < CriuVersion::MIN);
        assert!(CriuVersion::new(4, 2, 1).is_supported());
        assert!(!CriuVersion::new(3, 17, 0).is_supported());
        assert_eq!(CriuVersion::new(4, 2, 0).to_string(), "4.2");
        assert_eq!(CriuVersion::new(4, 2, 1).to_string(), "4.2.1");
    }

    #[test]
    fn installed_criu_is_supported() {
        if absent(&[Need::Criu]) {
            return;
        }
        let v = require_supported_version().expect("the CRIU installed by setup.sh");
        assert!(v >= CriuVersion::MIN, "{v}");
    }
}
