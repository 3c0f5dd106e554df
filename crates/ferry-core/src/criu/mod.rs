//! ferry's view of CRIU: which binary, which version, which kernel features it can use, how to
//! read its logs and statistics images, the receiving end of its page-server protocol (ferry
//! writes a stop-and-copy dump's pages itself), and the lazy-pages daemon a post-copy
//! destination runs.
//!
//! Checkpoint and restore themselves go through runc (see `runtime`); this module covers what
//! runc has no verb for.

mod config;
mod cpuinfo;
mod features;
mod image;
mod inventory;
mod log;
mod page_receiver;
mod page_socket;
pub mod preflight;
mod server;
mod stats;
#[cfg(test)]
pub(crate) mod testutil;
mod version;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub use config::{write_criu_config, CRIU_CONF, HOOK_SCRIPT, HOOK_SOCKET_ENV};
pub use cpuinfo::{cpuinfo_check, cpuinfo_dump};
pub use features::{probe, remember, require, Capabilities, Feature, MissingFeature};
pub use image::{
    read_image_entries, write_image_entries, ImageMagic, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC,
    STATS_MAGIC,
};
pub use inventory::skip_restore_network_unlock;
pub use log::{error_lines, explain_log, lazy_bytes_in_dump_log, CriuLogExcerpt};
pub use page_receiver::{PageReceiver, ReceivedPages, PAGEMAP_MAGIC};
pub use page_socket::{PageSocket, CONFIG_FILE_ENV};
pub use server::{free_loopback_port, LazyPagesDaemon, LazyTransfer, ReadySignal};
pub use stats::{read_dump_stats, read_restore_stats, CriuDumpStats, CriuRestoreStats};
pub use version::{require_supported_version, version, CriuVersion};

use crate::tool::{Tool, ToolError};

/// Generated from `proto/criu_stats.proto` (ferry's own description of CRIU's stats image).
pub(crate) mod proto {
    include!(concat!(env!("OUT_DIR"), "/ferry.criu.stats.rs"));
}

/// Environment variable naming the CRIU binary to use instead of the default.
pub const CRIU_ENV: &str = "FERRY_CRIU";

/// Where scripts/setup.sh installs the CRIU build ferry needs (Debian 12's own CRIU is too old).
pub const DEFAULT_CRIU: &str = "/usr/local/sbin/criu";

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("could not read CRIU's version from `criu --version`, which printed {output:?}")]
    VersionUnparsable { output: String },
    #[error("CRIU {found} is too old: ferry needs CRIU {min} or newer")]
    TooOld {
        found: CriuVersion,
        min: CriuVersion,
    },
    #[error("{}", missing_summary(.0))]
    MissingFeatures(Vec<MissingFeature>),
    #[error("{path}: {problem}")]
    Image { path: PathBuf, problem: String },
    /// The sender's fault: what a dump sent to ferry's page receiver breaks the protocol.
    #[error("the dump's page stream is malformed at byte {offset}: {problem}")]
    PageStream { offset: u64, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("criu {what} exited before it was ready ({status}){}; {excerpt}", stderr_suffix(.stderr))]
    NotReady {
        what: &'static str,
        status: String,
        stderr: String,
        excerpt: CriuLogExcerpt,
    },
    #[error("criu {what} failed ({status}){}; {excerpt}", stderr_suffix(.stderr))]
    Failed {
        what: &'static str,
        status: ExitStatus,
        stderr: String,
        excerpt: CriuLogExcerpt,
    },
}

fn missing_summary(missing: &[MissingFeature]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

impl CriuError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        CriuError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The CRIU binary ferry runs: `$FERRY_CRIU` if set, else [`DEFAULT_CRIU`] if it exists, else
/// `criu` from `PATH`.
pub fn criu_path() -> PathBuf {
    if let Some(p) = std::env::var_os(CRIU_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if Path::new(DEFAULT_CRIU).exists() {
        return PathBuf::from(DEFAULT_CRIU);
    }
    PathBuf::from("criu")
}

/// A CRIU command line with ferry's binary.
pub fn criu_tool() -> Tool {
    Tool::new(criu_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_path_prefers_installed_build() {
        // This test does not set FERRY_CRIU (tests run in parallel and share the environment).
        if std::env::var_os(CRIU_ENV).is_none() && Path::new(DEFAULT_CRIU).exists() {
            assert_eq!(criu_path(), PathBuf::from(DEFAULT_CRIU));
        }
    }
}
