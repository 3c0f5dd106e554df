//! The layout of one host's state directory (`ferryd --root`).
//!
//! Every module asks this type for its paths, so the layout is written down in one place.

use std::path::{Path, PathBuf};

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

    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }

    /// Named volumes: `volumes/NAME/_data`.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn volume_data(&self, name: &str) -> PathBuf {
        self.volumes().join(name).join("_data")
    }

    /// Bind-mounted network namespace files, one per container.
    pub fn netns_dir(&self) -> PathBuf {
        self.root.join("netns")
    }

    pub fn netns(&self, id: &str) -> PathBuf {
        self.netns_dir().join(id)
    }

    /// Checkpoints: `checkpoints/CONTAINER/SNAPSHOT/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
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
