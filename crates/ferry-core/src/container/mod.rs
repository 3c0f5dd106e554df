//! Containers on one host: configuration, lifecycle and persisted state.

mod busy;
pub mod checkpoint;
mod config;
pub(crate) mod engine;
mod interop;
mod moving;
mod rootfs;
mod stats;
mod store;
mod volume;

pub use crate::cancel::{Cancel, CancelOnDrop, CANCELLED};
pub use busy::RM_WAIT;
pub use checkpoint::{RestoredImages, LAZY_PAGES_LOG};
pub use config::{
    merge_env, parse_labels, parse_ports, parse_volume, short_id, validate_env, validate_name,
    ContainerConfig, ContainerRecord, ExitInfo, RestartPolicy, RunOptions, Status, VolumeMount,
};
pub use engine::{Engine, EngineConfig};
pub use rootfs::{is_mount_point, RootfsDirs};
pub use stats::ContainerStats;
pub use store::RecordStore;
pub use volume::{VolumeError, VolumeInfo};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no such container: {0}")]
    NotFound(String),
    /// A user's ID prefix that fits several containers (their names).
    #[error("{prefix:?} is the start of several container IDs ({}): give more of the ID, or the name", matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
    /// Something else the caller named is not there (a checkpoint, an archive); the text
    /// says what, in full.
    #[error("{0}")]
    Missing(String),
    #[error("a container named {0:?} already exists")]
    NameInUse(String),
    /// An id, name or volume name that would not be one safe path component.
    #[error(transparent)]
    InvalidId(#[from] crate::ids::IdError),
    #[error("{0}")]
    Invalid(String),
    #[error("container {name} is {status}: {why}")]
    WrongState {
        name: String,
        status: Status,
        why: String,
    },
    #[error("mount {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Network(#[from] crate::network::NetError),
    #[error(transparent)]
    Dns(#[from] crate::network::dns::DnsError),
    #[error(transparent)]
    Ports(#[from] crate::network::ports::PortError),
    #[error(transparent)]
    Runc(#[from] crate::runtime::runc::RuncError),
    #[error(transparent)]
    Spec(#[from] crate::runtime::spec::SpecError),
    #[error(transparent)]
    Shim(#[from] crate::runtime::shim::ShimError),
    #[error(transparent)]
    FsDiff(#[from] crate::fsdiff::FsDiffError),
    #[error(transparent)]
    Archive(#[from] crate::checkpoint::archive::ArchiveError),
    /// A Podman checkpoint this ferry cannot read or recreate.
    #[error(transparent)]
    Podman(#[from] crate::checkpoint::podman::PodmanError),
    #[error(transparent)]
    CriuCheck(#[from] crate::criu::CriuError),
    /// A checkpoint or restore failed; `log` names CRIU's log and quotes its first error.
    #[error("{op} failed: {reason} ({log})")]
    Criu {
        op: &'static str,
        reason: String,
        log: String,
    },
}

impl ContainerError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ContainerError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
