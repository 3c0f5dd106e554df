//! The checkpoint archive: a checkpoint directory (see [`super::layout`]) with a checksummed
//! `manifest.json`, exported as a tar (optionally zstd-compressed) with the manifest first, and
//! imported with every entry checked against that manifest before it is accepted.

pub mod crypt;
mod export;
mod foreign;
mod import;
mod manifest;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use crypt::ArchiveKey;
pub use export::{export, export_sealed, ExportSummary};
pub use import::{import, import_sealed, Limits, Origin};
pub use manifest::{read_manifest, verify_dir, write_manifest, Manifest, Member};

/// The `format` field of every ferry checkpoint manifest.
pub const FORMAT: &str = "ferry-checkpoint";
/// The format version this ferry writes. It reads 1.x and 2.x: 2.0 made `config.dump`
/// Podman's and moved ferry's own config to `ferry-config.json` (see
/// [`crate::checkpoint::layout`]); a 1.x `config.dump` is ferry's.
pub const VERSION: (u32, u32) = (2, 0);
/// The oldest major version this ferry reads.
pub const OLDEST_MAJOR: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a {kind}; a checkpoint may contain only regular files and directories")]
    NotAllowed { path: PathBuf, kind: &'static str },
    #[error("manifest.json: {problem}")]
    Manifest { problem: String },
    #[error("not a ferry checkpoint: manifest format is {found:?}, expected {FORMAT:?}")]
    UnknownFormat { found: String },
    #[error(
        "archive format version {found} is {} than this ferry supports ({}.x to {}.x)",
        newer_or_older(.newer),
        OLDEST_MAJOR,
        VERSION.0
    )]
    UnsupportedVersion { found: String, newer: bool },
    #[error("member {member}: {problem}")]
    Member { member: String, problem: String },
    #[error("{path} is not listed in the manifest")]
    Unlisted { path: String },
    #[error("entry {entry} {problem}")]
    Entry { entry: String, problem: String },
    #[error("archive is truncated: {detail}")]
    Truncated { detail: String },
    #[error("archive is damaged: {detail}")]
    Corrupt { detail: String },
    #[error("archive exceeds the import limits: {detail}")]
    OverLimit { detail: String },
    #[error("{path}: {detail}")]
    NotAnArchive { path: PathBuf, detail: String },
    #[error(
        "not a checkpoint archive: it neither starts with ferry's manifest.json nor holds \
         Podman's {missing}"
    )]
    NotACheckpoint { missing: &'static str },
    #[error("{path} is encrypted: give its key file (ferry restore --decrypt KEYFILE)")]
    Encrypted { path: PathBuf },
    #[error("{path} is not encrypted, but a key was given: refusing an archive that was expected to be sealed")]
    NotEncrypted { path: PathBuf },
    #[error("key file {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("{path} already exists; import needs a fresh destination")]
    DestinationExists { path: PathBuf },
}

fn newer_or_older(newer: &bool) -> &'static str {
    if *newer {
        "newer"
    } else {
        "older"
    }
}

impl ArchiveError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArchiveError::Io {
            path: path.into(),
            source,
        }
    }

    fn member(member: &str, problem: impl Into<String>) -> Self {
        ArchiveError::Member {
            member: member.to_owned(),
            problem: problem.into(),
        }
    }

    fn entry(entry: &str, problem: impl Into<String>) -> Self {
        ArchiveError::Entry {
            entry: entry.to_owned(),
            problem: problem.into(),
        }
    }
}

/// How an exported checkpoint archive is compressed: the user's choice (`--compress`), spelled
/// as `FromStr`/`Display` say. Not an image layer's ([`crate::image::LayerCompression`]) nor a
/// bulk stream's on the wire (`ferry_proto::StreamCompression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveCompression {
    None,
    /// Podman's default too.
    #[default]
    Zstd,
}

impl FromStr for ArchiveCompression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(ArchiveCompression::None),
            "zstd" => Ok(ArchiveCompression::Zstd),
            other => Err(format!(
                "unknown compression {other:?} (expected \"none\" or \"zstd\")"
            )),
        }
    }
}

impl fmt::Display for ArchiveCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchiveCompression::None => "none",
            ArchiveCompression::Zstd => "zstd",
        })
    }
}
