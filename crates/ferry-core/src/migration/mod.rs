//! Live migration between hosts: the source and destination sides of the protocol.
//!
//! `source::migrate_out` drives a migration from this host; `dest::serve_incoming` answers
//! one from a peer. Both keep a `ferry_proto` state machine in step with every message (see
//! `wire`). The rollback rule: until the destination has confirmed the commit, the source is
//! either still running or frozen at CRIU's `post-dump` and resumable (see `hook`).

pub mod commit;
pub mod dest;
mod drain;
pub mod fault;
pub mod hook;
pub mod record;
pub mod recovery;
pub mod report;
pub mod resume;
pub mod source;
mod wire;

use std::path::Path;
use std::time::Duration;

use ferry_proto::MigrationMode;
use serde::{Deserialize, Serialize};

use crate::container::{ContainerError, Engine};
use crate::peer::handshake::LocalVersions;
use crate::peer::PeerError;

/// The file `criu cpuinfo dump` writes.
pub const CPUINFO_IMAGE: &str = "cpuinfo.img";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub container: String,
    /// A peer registered with `ferry host add`.
    pub to: String,
    /// `stop-copy` (or `stop-and-copy`), `lazy` (or `post-copy`), or `auto` (the default).
    #[serde(default, deserialize_with = "mode_or_auto")]
    pub mode: Option<MigrationMode>,
}

/// `auto` (or nothing) leaves the choice to [`auto_mode`].
fn mode_or_auto<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<MigrationMode>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("auto") => Ok(None),
        Some(other) => serde_json::from_value(serde_json::Value::String(other.to_owned()))
            .map(Some)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "unknown migration mode {other:?}: use stop-copy, lazy or auto"
                ))
            }),
    }
}

/// Memory above which `auto` picks post-copy. Measured on the project machine (bench/): at
/// 256 MiB stop-and-copy's gap is about 1.3 s; lazy's stays near its fixed cost. Until the
/// side-by-side benchmark pins the crossover, auto stays on the proven path for small ones.
pub const AUTO_LAZY_ABOVE: u64 = 512 << 20;

/// `auto`: post-copy when this host can do it and the container's memory is above
/// [`AUTO_LAZY_ABOVE`]; stop-and-copy otherwise.
pub fn auto_mode(memory_bytes: Option<u64>) -> MigrationMode {
    let big = memory_bytes.is_some_and(|m| m > AUTO_LAZY_ABOVE);
    if big && crate::criu::require(&[crate::criu::Feature::LazyPages]).is_ok() {
        MigrationMode::PostCopy
    } else {
        MigrationMode::StopAndCopy
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("no peer named {0:?}; register it with `ferry host add`")]
    UnknownPeer(String),
    #[error("the destination refused: {0}")]
    Refused(String),
    #[error("the destination aborted: {0}")]
    PeerAborted(String),
    #[error("restore failed on the destination: {0}")]
    RestoreFailed(String),
    #[error("dump failed: {0}")]
    Dump(String),
    #[error("in doubt: {0}")]
    InDoubt(String),
    /// Post-copy failed after the destination resumed (see `drain`).
    #[error("{0}")]
    PostCopyLost(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("protocol: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("image: {0}")]
    Image(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error(transparent)]
    Proto(#[from] ferry_proto::ProtoError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Criu(#[from] crate::criu::CriuError),
    #[error(transparent)]
    FsDiff(#[from] crate::fsdiff::FsDiffError),
    #[error(transparent)]
    Hook(#[from] hook::HookError),
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

impl MigrationError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        MigrationError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub fn unexpected(expected: &'static str, got: &ferry_proto::Message) -> Self {
        MigrationError::Unexpected {
            expected,
            got: got.name().to_owned(),
        }
    }
}

/// Where a migration's logs (CRIU's dump.log, restore.log) are kept after it fails.
pub fn logs_dir(paths: &crate::paths::HostPaths, id: &str) -> std::path::PathBuf {
    paths.migrations().join(id)
}

/// Runs blocking engine work (runc, CRIU, files) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MigrationError> + Send + 'static,
) -> Result<T, MigrationError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MigrationError::Internal(format!("task failed: {e}")))?
}

pub fn new_migration_id() -> String {
    use rand::Rng;
    format!(
        "m{:012x}",
        rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
    )
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What this host says about itself in the handshake.
pub fn host_versions(engine: &Engine) -> LocalVersions {
    LocalVersions {
        host: engine.config().host_name.clone(),
        criu_version: crate::criu::version()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "unknown".into()),
        runc_version: engine.runc_version(),
    }
}
