//! One conversation with one registry about one repository: the client, the credentials, and
//! what its errors mean.

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use super::config::{oci_client, RegistryConfig, Transport};
use super::{error_chain, ImageRef, RegistryError};

pub(crate) struct Session {
    pub(crate) client: oci_client::Client,
    pub(crate) auth: RegistryAuth,
    pub(crate) transport: Transport,
    pub(crate) has_credentials: bool,
}

impl Session {
    /// Reaches `r`'s registry (the request's `insecure` or the configured list decide the
    /// scheme) and authenticates for `op`: Basic, or a Bearer token from the challenge's realm.
    pub(crate) async fn open(
        cfg: &RegistryConfig,
        r: &ImageRef,
        insecure: bool,
        op: RegistryOperation,
    ) -> Result<Session, RegistryError> {
        let transport = cfg.transport(r.registry(), insecure)?;
        let creds = cfg.auth_files().lookup(r.registry_name())?;
        let has_credentials = creds.is_some();
        let auth = match creds {
            Some((c, from)) => {
                tracing::debug!(registry = r.registry(), file = %from.display(), "using stored credentials");
                RegistryAuth::Basic(c.username, c.password)
            }
            None => RegistryAuth::Anonymous,
        };
        let s = Session {
            client: oci_client(&transport),
            auth,
            transport,
            has_credentials,
        };
        s.client
            .auth(&r.inner, &s.auth, op)
            .await
            .map_err(|e| s.classify(e))?;
        Ok(s)
    }

    pub(crate) fn registry(&self) -> &str {
        &self.transport.registry
    }

    /// Maps oci-client's error to whose fault it was.
    pub(crate) fn classify(&self, e: OciDistributionError) -> RegistryError {
        let registry = self.registry().to_owned();
        let auth_hint = if self.has_credentials {
            "the stored credentials were refused (ferry login again)".to_owned()
        } else {
            format!("the registry wants credentials: ferry login {registry}")
        };
        let err = match e {
            OciDistributionError::AuthenticationFailure(why) => RegistryError::AuthFailed {
                registry,
                why: format!("{auth_hint}: {}", why.trim()),
            },
            OciDistributionError::UnauthorizedError { url } => RegistryError::AuthFailed {
                registry,
                why: format!("{auth_hint} (HTTP 401 for {url})"),
            },
            OciDistributionError::ImageManifestNotFoundError(r) => {
                RegistryError::NotFound { reference: r }
            }
            OciDistributionError::ServerError { code: 404, url, .. } => {
                RegistryError::NotFound { reference: url }
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let has = |codes: &[OciErrorCode]| {
                    envelope.errors.iter().any(|e| codes.contains(&e.code))
                };
                if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::BlobUnknown,
                    OciErrorCode::NotFound,
                ]) {
                    RegistryError::NotFound { reference: url }
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    RegistryError::AuthFailed {
                        registry,
                        why: format!("{auth_hint} ({envelope} for {url})"),
                    }
                } else {
                    RegistryError::Refused {
                        registry,
                        why: format!("{envelope} ({url})"),
                    }
                }
            }
            // A status error is an answer; anything else (connect, TLS, timeout) is the network.
            OciDistributionError::RequestError(e) => match e.status() {
                Some(reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
                    RegistryError::AuthFailed {
                        registry,
                        why: format!("{auth_hint} ({})", error_chain(&e)),
                    }
                }
                Some(reqwest::StatusCode::NOT_FOUND) => RegistryError::NotFound {
                    reference: e.url().map(|u| u.to_string()).unwrap_or_default(),
                },
                Some(_) => RegistryError::Refused {
                    registry,
                    why: error_chain(&e),
                },
                None => RegistryError::Network {
                    registry,
                    why: error_chain(&e),
                },
            },
            OciDistributionError::IoError(e) => RegistryError::Network {
                registry,
                why: error_chain(&e),
            },
            other => RegistryError::Refused {
                registry,
                why: error_chain(&other),
            },
        };
        hint_insecure(err, &self.transport)
    }
}

/// A network error over HTTPS to a registry that may speak only HTTP says how to allow that.
pub(crate) fn hint_insecure(e: RegistryError, t: &Transport) -> RegistryError {
    match e {
        RegistryError::Network { registry, why } if !t.plain_http => RegistryError::Network {
            why: format!(
                "{why} (over HTTPS; if {registry} serves plain HTTP, name it insecure: \
                 --insecure, ferryd --insecure-registry {registry}, or registries.json; if it \
                 uses its own CA, put it in <root>/certs.d/{registry}/ca.crt)"
            ),
            registry,
        },
        other => other,
    }
}
