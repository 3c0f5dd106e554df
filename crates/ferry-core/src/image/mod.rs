//! Content-addressed OCI image store.
//!
//! Layout under `HostPaths::images()`:
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs, as in an OCI image layout;
//! - `layers/<blob hex>/`: each layer unpacked once (overlayfs whiteouts), shared by containers;
//! - `images.json`: the image records with their names;
//! - `tmp/`: staging for imports and incoming blobs; `lock`: serializes writers (flock).
//!
//! Every change is prepared in `tmp/` and committed by renames, so a failed import leaves the
//! store as it was.

mod compress;
mod digest;
pub mod extract;
pub mod fixture;
mod guard;
mod import;
mod layer;
mod save;
pub use layer::DEFAULT_ROOT_MODE;
pub use oci::{host_arch, OCI_CONFIG, OCI_MANIFEST};
pub use save::save;
mod oci;
pub mod registry;
mod store;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use compress::LayerCompression;
pub use digest::{BadDigest, Digest, HashingReader, HashingWriter};
pub use import::IMPORT_DEADLINE;
pub use store::ImageStore;

/// One image: a manifest (its digest is the image id), its config and its layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Manifest digest = image id.
    pub digest: Digest,
    /// Normalized references (`name:tag`) pointing at this image; may be empty.
    pub names: Vec<String>,
    pub config_digest: Digest,
    /// Layer blob digests, lowest first.
    pub layers: Vec<Digest>,
    /// Uncompressed layer digests (config `rootfs.diff_ids`), lowest first.
    pub diff_ids: Vec<Digest>,
    /// Sum of manifest, config and layer blob sizes.
    pub size: u64,
    pub created: Option<String>,
    pub config: RunConfig,
    /// Where the image came from (or was last pushed to), when that was a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RegistrySource>,
}

/// An image's place in a registry: enough to fetch its blobs from there again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySource {
    /// The full reference, `registry/repository:tag` or `registry/repository@digest`.
    pub reference: String,
    /// `host[:port]` as ferry connects to it (`index.docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    /// The digest the registry serves for the reference: the image index's for a multi-arch
    /// image, else the manifest's (then equal to the image id).
    pub digest: Digest,
}

/// What the image says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image not found: {0}")]
    NotFound(String),
    #[error("{reference:?} is ambiguous: matches {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("{what} is corrupt: {why}")]
    Corrupt { what: String, why: String },
    #[error("refusing archive entry {entry:?}: {why}")]
    Traversal { entry: String, why: String },
    #[error("{what}: digest mismatch, expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    /// The import's input is not something ferry imports (a device, a FIFO, a socket).
    #[error("cannot import {path}: {why}")]
    BadSource { path: PathBuf, why: String },
    /// The import was stopped by one of its bounds (deadline, free space).
    #[error("import of {path} refused: {why}")]
    OverLimit { path: PathBuf, why: String },
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
}

impl From<extract::ExtractError> for ImageError {
    fn from(e: extract::ExtractError) -> Self {
        match e {
            extract::ExtractError::Unsafe { entry, why } => ImageError::Traversal { entry, why },
            extract::ExtractError::Corrupt { entry, why } => ImageError::Corrupt {
                what: format!("archive entry {entry:?}"),
                why,
            },
            extract::ExtractError::Io { path, source } => ImageError::Io { path, source },
        }
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `busybox` → `busybox:latest`; `reg:5000/a/b` → `reg:5000/a/b:latest`; keeps given tags.
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let bad = |why: &str| ImageError::BadName {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.contains('@') {
        return Err(bad(
            "digest references are not names; use the digest itself",
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    {
        return Err(bad("contains whitespace or control characters"));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.is_empty() || last.starts_with(':') {
        return Err(bad("missing repository name"));
    }
    if last.ends_with(':') {
        return Err(bad("empty tag"));
    }
    if last.contains(':') {
        Ok(name.to_owned())
    } else {
        Ok(format!("{name}:latest"))
    }
}
