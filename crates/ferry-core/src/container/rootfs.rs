//! The container's root filesystem: an overlay of the image's layers with a per-container
//! upper dir. The upper dir is what a checkpoint or a migration carries.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::ContainerError;

/// Overlay options that make the rootfs's inodes decodable from file handles, which CRIU needs
/// to dump inotify watches (`nfs_export` requires `index`).
pub const EXPORT_OPTS: &str = "index=on,nfs_export=on";

/// The three overlay dirs of a container, all inside its state dir.
#[derive(Debug, Clone)]
pub struct RootfsDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

/// The mode of the image's `/`: its top layer's root. A layer dir that grants others no
/// search (unpacked before ferry kept layer modes) counts as the default.
pub fn root_mode(layers: &[PathBuf]) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    layers
        .last()
        .and_then(|top| std::fs::metadata(top).ok())
        .map(|m| m.permissions().mode() & 0o7777)
        .filter(|mode| mode & 0o001 != 0)
        .unwrap_or(crate::image::DEFAULT_ROOT_MODE)
}

impl RootfsDirs {
    pub fn new(ctr_dir: &Path) -> Self {
        RootfsDirs {
            upper: ctr_dir.join("upper"),
            work: ctr_dir.join("work"),
            merged: ctr_dir.join("rootfs"),
        }
    }

    /// Creates the three dirs inside a private container dir. overlayfs shows the upper dir's
    /// mode as the container's `/`, so a new one takes the image's (see [`root_mode`]), as
    /// Podman's storage does: CRIU checks that mode on restore, so a checkpoint moves between
    /// ferry and Podman only if both agree. Its parent (0700) keeps others out.
    pub fn create(&self, root_mode: u32) -> Result<(), ContainerError> {
        use crate::fsutil::{create_dir_with_mode, MODE_PRIVATE_DIR};
        for (d, mode) in [
            (&self.upper, root_mode),
            (&self.work, MODE_PRIVATE_DIR),
            (&self.merged, MODE_PRIVATE_DIR),
        ] {
            create_dir_with_mode(d, mode).map_err(|e| ContainerError::io(d, e))?;
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
        // File handles let CRIU resolve an inotify watch inside the rootfs to a path; without
        // them the dump fails ("fsnotify: Can't dump that handle"). The kernel refuses these
        // options when the upper dir is still in use by another overlay (index=on makes that
        // an error), and drops them by itself on a layer fs without file handles: either way
        // the container still runs, but its inotify watches cannot be checkpointed.
        let exportable = format!("{opts},{EXPORT_OPTS}");
        match self.mount_overlay(&exportable) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(
                    rootfs = %self.merged.display(),
                    error = %e,
                    "overlay refused {EXPORT_OPTS}; mounting without: inotify watches in this \
                     container cannot be checkpointed"
                );
                self.mount_overlay(&opts)
            }
        }
    }

    fn mount_overlay(&self, opts: &str) -> Result<(), ContainerError> {
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts),
        )
        .map_err(|e| ContainerError::Mount {
            path: self.merged.clone(),
            reason: format!("overlay ({opts}): {e}"),
        })
    }

    /// True when the mounted overlay decodes file handles (see [`EXPORT_OPTS`]), so CRIU can
    /// dump inotify watches inside it.
    pub fn exports_handles(&self) -> bool {
        mount_super_options(&self.merged)
            .is_some_and(|o| o.split(',').any(|o| o == "nfs_export=on"))
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

/// The super block options of the mount at `path` (mountinfo's last field).
fn mount_super_options(path: &Path) -> Option<String> {
    let canon = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = canon.to_string_lossy();
    // The last line wins: it is the mount on top.
    info.lines()
        .rfind(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| unescape_mountinfo(mp) == want)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
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
        dirs.create(0o755).unwrap();
        dirs.mount(std::slice::from_ref(&lower)).unwrap();
        assert!(dirs.is_mounted());
        std::fs::write(dirs.merged.join("g"), "upper").unwrap();
        assert_eq!(
            std::fs::read_to_string(dirs.merged.join("f")).unwrap(),
            "lower"
        );
        assert!(dirs.upper.join("g").exists());
        assert!(dirs.exports_handles(), "mounted with {EXPORT_OPTS}");
        dirs.unmount().unwrap();
        assert!(!dirs.is_mounted());
    }

    #[test]
    fn an_upper_dir_in_use_still_mounts_without_file_handles() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l1");
        std::fs::create_dir_all(&lower).unwrap();
        let first = RootfsDirs::new(&t.path().join("ctr"));
        first.create(0o755).unwrap();
        first.mount(std::slice::from_ref(&lower)).unwrap();
        // A second overlay on the same upper and work dirs: index=on refuses it (EBUSY).
        let second = RootfsDirs {
            merged: t.path().join("second"),
            ..first.clone()
        };
        second.create(0o755).unwrap();
        second.mount(std::slice::from_ref(&lower)).unwrap();
        assert!(second.is_mounted());
        assert!(!second.exports_handles());
        second.unmount().unwrap();
        first.unmount().unwrap();
    }
}
