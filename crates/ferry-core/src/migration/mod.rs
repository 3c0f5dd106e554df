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
mod layers;
mod page_sink;
pub mod record;
pub mod recovery;
pub mod report;
pub mod resume;
pub mod source;
mod stats;
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
#[serde(deny_unknown_fields)]
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
        Some("pre-copy") => Err(serde::de::Error::custom(pre_copy_refusal())),
        Some(other) => serde_json::from_value(serde_json::Value::String(other.to_owned()))
            .map(Some)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "unknown migration mode {other:?}: use stop-copy, lazy or auto"
                ))
            }),
    }
}

/// Why `--mode pre-copy` is refused: the kernel's answer first, since that is what a user can
/// act on.
fn pre_copy_refusal() -> String {
    match crate::criu::require(&[crate::criu::Feature::MemDirtyTrack]) {
        Err(e) => format!(
            "pre-copy needs soft-dirty memory tracking, which this host lacks ({e}); use \
             stop-copy or lazy"
        ),
        Ok(()) => "pre-copy is not implemented in ferry yet; use stop-copy or lazy".into(),
    }
}

/// Memory above which `auto` picks post-copy. Measured side by side (bench/suite.sh, release,
/// this machine): post-copy's client gap was about 0.4 s for a near-empty container, 0.6 s at
/// 256 MiB, 0.7 s at 1 GiB and 1.0 s at 4 GiB, against stop-and-copy's 0.6, 1.3, 5.5 and 37 s.
/// Post-copy wins at every size, but it exposes the running state to a two-host window until
/// the last page: below this size stop-and-copy costs well under a second more and has no
/// such window.
pub const AUTO_LAZY_ABOVE: u64 = 256 << 20;

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
    Image(#[from] crate::image::ImageError),
    /// The peer sent something this side cannot use (a bad digest, summary or target): the
    /// peer's fault, named as such.
    #[error("the peer sent bad data: {0}")]
    BadPeerData(String),
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
    HostMem(#[from] crate::hostmem::HostMemError),
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

/// Runs blocking engine work (runc, CRIU, files) off the async workers, through
/// [`crate::fsutil::blocking`]. Unlike that, a panic in `f` comes back as
/// [`MigrationError::Internal`]: a driver must still roll back (resume the source, release the
/// destination) when its work panics.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MigrationError> + Send + 'static,
) -> Result<T, MigrationError> {
    let caught =
        crate::fsutil::blocking(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
            .await;
    caught.map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        MigrationError::Internal(format!("task failed: panicked: {why}"))
    })?
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(json: &str) -> Result<Option<MigrationMode>, String> {
        let body = format!(r#"{{"container":"r","to":"b"{json}}}"#);
        serde_json::from_str::<MigrateRequest>(&body)
            .map(|r| r.mode)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn migration_modes_from_the_api() {
        assert_eq!(mode(""), Ok(None));
        assert_eq!(mode(r#","mode":"auto""#), Ok(None));
        assert_eq!(
            mode(r#","mode":"stop-copy""#),
            Ok(Some(MigrationMode::StopAndCopy))
        );
        assert_eq!(
            mode(r#","mode":"stop-and-copy""#),
            Ok(Some(MigrationMode::StopAndCopy))
        );
        assert_eq!(mode(r#","mode":"lazy""#), Ok(Some(MigrationMode::PostCopy)));
        assert_eq!(
            mode(r#","mode":"post-copy""#),
            Ok(Some(MigrationMode::PostCopy))
        );
        let bogus = mode(r#","mode":"fast""#).unwrap_err();
        assert!(bogus.contains("use stop-copy, lazy or auto"), "{bogus}");
        // Pre-copy is refused with the kernel's reason (this machine has no soft-dirty).
        let pre = mode(r#","mode":"pre-copy""#).unwrap_err();
        assert!(pre.contains("pre-copy"), "{pre}");
        if crate::criu::require(&[crate::criu::Feature::MemDirtyTrack]).is_err() {
            assert!(pre.contains("soft-dirty"), "{pre}");
        }
    }

    #[test]
    fn auto_stays_on_stop_and_copy_for_small_or_unknown_memory() {
        assert_eq!(auto_mode(None), MigrationMode::StopAndCopy);
        assert_eq!(auto_mode(Some(64 << 20)), MigrationMode::StopAndCopy);
        let big = auto_mode(Some(AUTO_LAZY_ABOVE + 1));
        let lazy_ok = crate::criu::require(&[crate::criu::Feature::LazyPages]).is_ok();
        assert_eq!(big == MigrationMode::PostCopy, lazy_ok);
    }
}
