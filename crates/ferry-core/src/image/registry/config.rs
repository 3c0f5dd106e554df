//! How ferryd reaches a registry: HTTPS, trusting the system's roots plus
//! `<root>/certs.d/HOST[:PORT]/*.crt` (Docker's and Podman's certs.d layout); plain HTTP only
//! for registries named insecure, by `ferryd --insecure-registry HOST[:PORT]`, by
//! `<root>/registries.json` (`{"insecure": ["HOST[:PORT]", ...]}`), or per request.

use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use serde::Deserialize;

use super::auth::AuthFiles;
use super::RegistryError;

/// A registry that accepts no connection within this long is unreachable (and a migration
/// falls back to its source).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A registry that stops sending for this long is treated as gone.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The registry settings of one ferryd.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `registries.json` and `certs.d/` live here (ferryd's `--root`).
    root: PathBuf,
    /// From `--insecure-registry`.
    insecure: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistriesFile {
    #[serde(default)]
    insecure: Vec<String>,
}

/// The scheme and roots for one registry.
#[derive(Debug, Clone)]
pub struct Transport {
    pub registry: String,
    pub plain_http: bool,
    /// PEM files from certs.d for this registry.
    pub roots: Vec<(PathBuf, Vec<u8>)>,
}

impl Transport {
    pub fn scheme(&self) -> &'static str {
        if self.plain_http {
            "http"
        } else {
            "https"
        }
    }
}

/// `ferryd --insecure-registry`, for every registry call in the process (API requests and
/// migrations alike).
static DAEMON_INSECURE: OnceLock<Vec<String>> = OnceLock::new();

/// Called once by ferryd at startup with its `--insecure-registry` flags.
pub fn set_daemon_insecure(registries: Vec<String>) {
    let _ = DAEMON_INSECURE.set(registries);
}

/// reqwest is built without a default TLS provider (its default, aws-lc-rs, is not used
/// in ferry); this installs ring, which the rest of ferry uses, as the process default.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl RegistryConfig {
    pub fn new(root: &Path, insecure: Vec<String>) -> Self {
        RegistryConfig {
            root: root.to_owned(),
            insecure,
        }
    }

    pub fn registries_file(&self) -> PathBuf {
        self.root.join("registries.json")
    }

    pub fn certs_dir(&self, registry: &str) -> PathBuf {
        self.root.join("certs.d").join(registry)
    }

    pub fn auth_files(&self) -> AuthFiles {
        AuthFiles::for_daemon(&self.root)
    }

    /// The registries named insecure by flag and by `registries.json`.
    pub fn insecure_registries(&self) -> Result<Vec<String>, RegistryError> {
        let mut out = self.insecure.clone();
        out.extend(DAEMON_INSECURE.get().into_iter().flatten().cloned());
        let p = self.registries_file();
        match std::fs::read(&p) {
            Ok(bytes) => {
                let f: RegistriesFile =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Config {
                        path: p.clone(),
                        why: e.to_string(),
                    })?;
                out.extend(f.insecure);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RegistryError::Config {
                    path: p,
                    why: e.to_string(),
                })
            }
        }
        Ok(out)
    }

    /// How to reach `registry`; `insecure` is the request's own flag.
    pub fn transport(&self, registry: &str, insecure: bool) -> Result<Transport, RegistryError> {
        let plain_http = insecure || self.insecure_registries()?.iter().any(|r| r == registry);
        let mut roots = Vec::new();
        let dir = self.certs_dir(registry);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .collect();
            files.sort();
            for p in files {
                let pem = std::fs::read(&p).map_err(|e| RegistryError::Config {
                    path: p.clone(),
                    why: e.to_string(),
                })?;
                roots.push((p, pem));
            }
        }
        Ok(Transport {
            registry: registry.to_owned(),
            plain_http,
            roots,
        })
    }
}

/// An oci-client for one registry.
pub(crate) fn oci_client(t: &Transport) -> oci_client::Client {
    ensure_crypto_provider();
    let config = ClientConfig {
        protocol: if t.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: t
            .roots
            .iter()
            .map(|(_, pem)| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        // One PUT per blob, streamed from the store (no chunk buffering).
        use_monolithic_push: true,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    oci_client::Client::new(config)
}

/// A plain HTTP client with the same trust, for what oci-client does not expose (login).
pub(crate) fn http_client(t: &Transport) -> Result<reqwest::Client, RegistryError> {
    ensure_crypto_provider();
    let mut b = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
    for (path, pem) in &t.roots {
        let cert = reqwest::Certificate::from_pem(pem).map_err(|e| RegistryError::Config {
            path: path.clone(),
            why: format!("not a PEM certificate: {e}"),
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| RegistryError::Network {
        registry: t.registry.clone(),
        why: super::error_chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_from_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = RegistryConfig::new(dir.path(), vec!["a:5000".into()]);
        assert!(c.transport("a:5000", false).unwrap().plain_http);
        assert!(!c.transport("b:5000", false).unwrap().plain_http);
        assert!(c.transport("b:5000", true).unwrap().plain_http);
        std::fs::write(c.registries_file(), r#"{"insecure": ["b:5000"]}"#).unwrap();
        assert!(c.transport("b:5000", false).unwrap().plain_http);
        std::fs::write(c.registries_file(), r#"{"insecur": []}"#).unwrap();
        assert!(c.transport("b:5000", false).is_err());
        std::fs::remove_file(c.registries_file()).unwrap();
        std::fs::create_dir_all(c.certs_dir("b:5000")).unwrap();
        std::fs::write(c.certs_dir("b:5000").join("ca.crt"), b"pem").unwrap();
        std::fs::write(c.certs_dir("b:5000").join("notes.txt"), b"x").unwrap();
        let t = c.transport("b:5000", false).unwrap();
        assert_eq!(t.roots.len(), 1);
        assert_eq!(t.scheme(), "https");
    }
}
