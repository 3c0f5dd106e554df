//! CPU compatibility for migration: the source records its CPU (`criu cpuinfo dump`), the
//! destination checks it can run processes dumped there (`criu cpuinfo check`).

use std::path::Path;

use super::{criu_tool, CriuError};

/// The file `criu cpuinfo dump` writes into the directory.
pub const CPUINFO_IMAGE: &str = "cpuinfo.img";

/// Writes this host's `cpuinfo.img` into `dir`.
pub fn cpuinfo_dump(dir: &Path) -> Result<(), CriuError> {
    criu_tool().args(["cpuinfo", "dump", "-D"]).arg(dir).run()?;
    Ok(())
}

/// Checks that processes dumped on the host that wrote `dir/cpuinfo.img` can run here; the error
/// carries CRIU's explanation of the mismatch.
pub fn cpuinfo_check(dir: &Path) -> Result<(), CriuError> {
    let image = dir.join(CPUINFO_IMAGE);
    if !image.is_file() {
        return Err(CriuError::Image {
            path: image,
            problem: "missing: the source's CPU description was not received".into(),
        });
    }
    criu_tool()
        .args(["cpuinfo", "check", "-D"])
        .arg(dir)
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::testutil::{absent, Need};

    #[test]
    fn dump_then_check_on_the_same_host() {
        if absent(&[Need::Root, Need::Criu]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        cpuinfo_dump(dir.path()).unwrap();
        assert!(dir.path().join(CPUINFO_IMAGE).metadata().unwrap().len() > 0);
        cpuinfo_check(dir.path()).unwrap();
    }

    #[test]
    fn check_refuses_missing_or_damaged_image() {
        if absent(&[Need::Root, Need::Criu]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let err = cpuinfo_check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cpuinfo.img: missing"), "{err}");

        std::fs::write(dir.path().join(CPUINFO_IMAGE), b"not an image").unwrap();
        let err = cpuinfo_check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("criu cpuinfo check"), "{err}");
        assert!(err.contains("Error ("), "CRIU's stderr should be in: {err}");
    }
}
