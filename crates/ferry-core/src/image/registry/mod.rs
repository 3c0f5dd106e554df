//! Images from and to registries, over the OCI distribution API (the `oci-client` crate).
//!
//! - [`pull`] stages manifest, config and the layers the store lacks in a private scratch
//!   directory, verifying every sha256 as it streams, then registers the image in one commit;
//!   an interrupted or refused pull leaves the store as it was.
//! - [`push`] uploads the blobs the registry lacks (a HEAD first), then the manifest.
//! - [`login`] checks credentials with the registry before ferryd stores them (see [`auth`]).
//! - [`config`] says how a registry is reached: HTTPS with `certs.d` roots, or plain HTTP
//!   when named insecure.

pub mod auth;
pub mod config;
pub mod platform;
pub mod progress;
mod pull;
mod push;
pub mod reference;
mod session;

use std::path::PathBuf;

pub use auth::{AuthFiles, Credentials};
pub use config::RegistryConfig;
pub use progress::{BlobInfo, TransferEvent, TransferProgress, TransferResult};
pub use pull::{fetch_blobs, pull};
pub use push::push;
pub use reference::ImageRef;

use crate::image::{Digest, ImageError};

/// Whose fault a registry operation failed by.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {why}")]
    BadReference { reference: String, why: String },
    /// The registry could not be reached or stopped answering (network, TLS, timeout).
    #[error("cannot reach registry {registry}: {why}")]
    Network { registry: String, why: String },
    /// The registry answered, and said no.
    #[error("registry {registry} refused: {why}")]
    Refused { registry: String, why: String },
    #[error("authentication with registry {registry} failed: {why}")]
    AuthFailed { registry: String, why: String },
    #[error("{reference} not found in its registry")]
    NotFound { reference: String },
    /// What the registry sent is not what the manifest (or the reference) promised.
    #[error("{what}: digest mismatch, expected {expected}, got {actual}; the registry sent corrupt or tampered content, nothing was stored")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{reference} has no image for {wanted} (it has: {})", available.join(", "))]
    NoPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{what}: unsupported media type {media_type:?}")]
    Unsupported { what: String, media_type: String },
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl RegistryError {
    /// True when the registry could not be reached at all (a migration then falls back to
    /// its source).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RegistryError::Network { .. })
    }
}

pub(crate) use crate::error_chain;

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `ferry login`: checks `creds` with the registry, then stores them in ferryd's auth file.
/// Returns the file.
pub async fn login(
    cfg: &RegistryConfig,
    registry: &str,
    creds: &Credentials,
    insecure: bool,
) -> Result<PathBuf, RegistryError> {
    let key = reference::registry_key(registry)?;
    let host = if key == "docker.io" {
        "index.docker.io".to_owned()
    } else {
        key.clone()
    };
    let t = cfg.transport(&host, insecure)?;
    let client = config::http_client(&t)?;
    auth::verify_login(&client, &format!("{}://{host}", t.scheme()), &key, creds)
        .await
        .map_err(|e| session::hint_insecure(e, &t))?;
    let (files, creds) = (cfg.auth_files(), creds.clone());
    // An atomic, fsync'd write: off the async workers.
    crate::fsutil::blocking(move || {
        files.store(&key, &creds)?;
        Ok(files.own)
    })
    .await
}

/// `ferry logout`: forgets the registry's credentials in ferryd's own file; false when there
/// were none there.
pub fn logout(cfg: &RegistryConfig, registry: &str) -> Result<bool, RegistryError> {
    cfg.auth_files().remove(registry)
}
