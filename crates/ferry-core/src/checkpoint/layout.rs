//! The checkpoint directory layout. It follows Podman's `podman container checkpoint --export`
//! layout so the ecosystem's tools can read it, plus ferry's `manifest.json`.

use std::path::{Path, PathBuf};

use crate::ids::{PathComponent, VolumeName};

/// CRIU's images (not OCI images: those are the host's image store, `engine.images()`).
pub const CRIU_IMAGES_DIR: &str = "checkpoint";
/// The container's OCI runtime spec (config.json).
pub const SPEC_DUMP: &str = "spec.dump";
/// The container's configuration as Podman's libpod writes it (JSON), for Podman and the
/// tools that read its checkpoints. ferry's own is [`FERRY_CONFIG`] (format 2.0 on); in a
/// format 1.x archive this member held ferry's.
pub const CONFIG_DUMP: &str = "config.dump";
/// ferry's own container configuration (JSON).
pub const FERRY_CONFIG: &str = "ferry-config.json";
/// The contents of a Podman container's /dev/shm (a tar).
pub const DEVSHM_TAR: &str = "devshm-checkpoint.tar";
/// The container's network settings (JSON).
pub const NETWORK_STATUS: &str = "network.status";
/// Files added or changed in the container's writable layer.
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
/// Files deleted from the image's layers (JSON array of paths).
pub const DELETED_FILES: &str = "deleted.files";
/// One `NAME.tar` per named volume.
pub const VOLUMES_DIR: &str = "volumes";
/// CRIU's dump statistics, copied out of the images.
pub const STATS_DUMP: &str = "stats-dump";
/// ferry's checksummed member list (see [`super::archive::Manifest`]).
pub const MANIFEST: &str = "manifest.json";

/// Paths inside one checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointLayout {
    root: PathBuf,
}

impl CheckpointLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CheckpointLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// CRIU's images ([`CRIU_IMAGES_DIR`]).
    pub fn criu_images(&self) -> PathBuf {
        self.root.join(CRIU_IMAGES_DIR)
    }

    pub fn spec(&self) -> PathBuf {
        self.root.join(SPEC_DUMP)
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_DUMP)
    }

    pub fn network_status(&self) -> PathBuf {
        self.root.join(NETWORK_STATUS)
    }

    pub fn rootfs_diff(&self) -> PathBuf {
        self.root.join(ROOTFS_DIFF)
    }

    pub fn deleted_files(&self) -> PathBuf {
        self.root.join(DELETED_FILES)
    }

    pub fn volumes(&self) -> PathBuf {
        self.root.join(VOLUMES_DIR)
    }

    pub fn volume_tar(&self, name: &(impl PathComponent<VolumeName> + ?Sized)) -> PathBuf {
        let name = name.component();
        self.volumes().join(format!("{name}.tar"))
    }

    pub fn stats_dump(&self) -> PathBuf {
        self.root.join(STATS_DUMP)
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join(MANIFEST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_names() {
        let l = CheckpointLayout::new("/c");
        assert_eq!(l.criu_images(), Path::new("/c/checkpoint"));
        assert_eq!(l.spec(), Path::new("/c/spec.dump"));
        assert_eq!(l.config(), Path::new("/c/config.dump"));
        assert_eq!(l.network_status(), Path::new("/c/network.status"));
        assert_eq!(l.rootfs_diff(), Path::new("/c/rootfs-diff.tar"));
        assert_eq!(l.deleted_files(), Path::new("/c/deleted.files"));
        assert_eq!(l.volume_tar("data"), Path::new("/c/volumes/data.tar"));
        assert_eq!(l.stats_dump(), Path::new("/c/stats-dump"));
        assert_eq!(l.manifest(), Path::new("/c/manifest.json"));
    }
}
