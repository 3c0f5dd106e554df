//! The container's root filesystem: an overlay of the image's layers with a per-container
//! upper dir. The upper dir is what a checkpoint or a migration carries.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::ContainerError;

/// The three overlay dirs of a container, all inside its state dir.
#[derive(Debug, Clone)]
pub struct RootfsDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl RootfsDirs {
    pub fn new(ctr_dir: &Path) -> Self {
        RootfsDirs {
            upper: ctr_dir.join("upper"),
            work: ctr_dir.join("work"),
            merged: ctr_dir.join("rootfs"),
        }
    }

    pub fn create(&self) -> Result<(), ContainerError> {
        for d in [&self.upper, &self.work, &self.merged] {
            std::fs::create_dir_all(d).map_err(|e| ContainerError::io(d, e))?;
        }
        Ok(())
    }

    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.merged)
    }

    /// Mounts the overlay; `layers` lowest first, as the image store lists them.
    pub fn mount(&self, layers: &[PathBuf]) -> Result<(), ContainerError> {
        if self.is_mounted() {
            return Ok(());
        }
        // An empty image has no layers; overlay needs at least one lower dir.
        let empty = self.merged.with_file_name("empty-lower");
        let lowers: Vec<String> = if layers.is_empty() {
            std::fs::create_dir_all(&empty).map_err(|e| ContainerError::io(&empty, e))?;
            vec![empty.display().to_string()]
        } else {
            layers
                .iter()
                .rev()
                .map(|p| p.display().to_string())
                .collect()
        };
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        );
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| ContainerError::Mount {
            path: self.merged.clone(),
            reason: format!("overlay ({opts}): {e}"),
        })
    }

    pub fn unmount(&self) -> Result<(), ContainerError> {
        if !self.is_mounted() {
            return Ok(());
        }
        umount2(&self.merged, MntFlags::MNT_DETACH).map_err(|e| ContainerError::Mount {
            path: self.merged.clone(),
            reason: format!("unmount: {e}"),
        })
    }
}

/// True when `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn overlay_mount_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l1");
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::write(lower.join("f"), "lower").unwrap();
        let dirs = RootfsDirs::new(&t.path().join("ctr"));
        dirs.create().unwrap();
        dirs.mount(std::slice::from_ref(&lower)).unwrap();
        assert!(dirs.is_mounted());
        std::fs::write(dirs.merged.join("g"), "upper").unwrap();
        assert_eq!(
            std::fs::read_to_string(dirs.merged.join("f")).unwrap(),
            "lower"
        );
        assert!(dirs.upper.join("g").exists());
        dirs.unmount().unwrap();
        assert!(!dirs.is_mounted());
    }
}
