//! Cluster CA and host identities.
//!
//! `ferry` creates one CA per cluster (`ca.pem`, `ca.key`) and issues each host a certificate
//! whose DNS name is the host's name (and whose IP SANs are its addresses), usable for both TLS
//! server and client auth. Both ends of a peer connection present their certificate; each accepts
//! only certificates chaining to the cluster CA. The client also checks the server's name, so it
//! talks to the peer it meant; the server reads the client's name from its certificate.
//!
//! rcgen cannot parse certificates without an extra dependency, so loading the CA keeps `ca.pem`
//! as written and rebuilds a signing certificate from `ca.key` with the same subject name. A
//! host certificate only records its issuer's name and is verified against `ca.pem`'s key, which
//! is checked to be the key in `ca.key`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::{validate_name, PeerError};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const HOST_CERT: &str = "host.pem";
const HOST_KEY: &str = "host.key";
const CA_COMMON_NAME: &str = "ferry cluster CA";
const CA_YEARS: i32 = 20;
const HOST_YEARS: i32 = 5;

pub struct ClusterCa {
    cert_pem: String,
    signer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Validity from yesterday (clock skew between hosts) for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let from = chrono::Utc::now() - chrono::Duration::days(1);
    let (y, m, d) = (from.year(), from.month() as u8, from.day() as u8);
    params.not_before = rcgen::date_time_ymd(y, m, d.min(28));
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

/// Writes a new file; refuses to replace one. Keys get mode 0600.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), PeerError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PeerError::Exists {
            path: path.to_path_buf(),
        },
        _ => PeerError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(PeerError::io(path))
}

fn read(path: &Path) -> Result<String, PeerError> {
    fs::read_to_string(path).map_err(PeerError::io(path))
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), PeerError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(PeerError::Exists { path: p.clone() }),
        None => Ok(()),
    }
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PeerError> {
    let text = read(path)?;
    let certs = rustls_pemfile::certs(&mut text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PeerError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PeerError::BadPem {
            path: path.to_path_buf(),
            reason: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

impl ClusterCa {
    /// Creates `dir/ca.pem` and `dir/ca.key` (mode 0600). Refuses if either exists.
    pub fn create(dir: &Path) -> Result<Self, PeerError> {
        fs::create_dir_all(dir).map_err(PeerError::io(dir))?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        refuse_existing(&[cert_path.clone(), key_path.clone()])?;
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        set_validity(&mut params, CA_YEARS);
        let signer = params.self_signed(&key)?;
        let cert_pem = signer.pem();
        write_new(&key_path, &key.serialize_pem(), true)?;
        write_new(&cert_path, &cert_pem, false)?;
        Ok(ClusterCa {
            cert_pem,
            signer,
            key,
        })
    }

    pub fn load(dir: &Path) -> Result<Self, PeerError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| PeerError::BadPem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        // The certificate embeds its public key verbatim; make sure it is this key's.
        let ca_der = pem_certs(&cert_path)?.remove(0);
        let spki = key.public_key_der();
        if !ca_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(PeerError::BadPem {
                path: key_path,
                reason: format!(
                    "key does not belong to the certificate in {}",
                    cert_path.display()
                ),
            });
        }
        let signer = ca_params().self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem,
            signer,
            key,
        })
    }

    /// The CA certificate, to distribute to hosts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues host `name` a certificate for `name` and `ips`; writes `out_dir/{ca.pem, host.pem,
    /// host.key}`. Refuses to overwrite an existing host identity.
    pub fn issue_host(&self, name: &str, ips: &[IpAddr], out_dir: &Path) -> Result<(), PeerError> {
        validate_name(name)?;
        fs::create_dir_all(out_dir).map_err(PeerError::io(out_dir))?;
        let paths = [
            out_dir.join(CA_CERT),
            out_dir.join(HOST_CERT),
            out_dir.join(HOST_KEY),
        ];
        // The CA's own directory may be the host's too: its ca.pem is the same file.
        let ca_there = paths[0].exists() && read(&paths[0])? == self.cert_pem;
        refuse_existing(if ca_there { &paths[1..] } else { &paths })?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, HOST_YEARS);
        let cert = params.signed_by(&key, &self.signer, &self.key)?;

        write_new(&paths[2], &key.serialize_pem(), true)?;
        write_new(&paths[1], &cert.pem(), false)?;
        if !ca_there {
            write_new(&paths[0], &self.cert_pem, false)?;
        }
        Ok(())
    }
}

/// This host's TLS identity: its name, certificate and key, and the cluster CA it trusts.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub name: String,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl HostIdentity {
    /// Loads `tls_dir/{ca.pem, host.pem, host.key}`; the name comes from the certificate.
    pub fn load(tls_dir: &Path) -> Result<Self, PeerError> {
        let ca_path = tls_dir.join(CA_CERT);
        let mut roots = RootCertStore::empty();
        for ca in pem_certs(&ca_path)? {
            roots.add(ca).map_err(|e| PeerError::BadPem {
                path: ca_path.clone(),
                reason: e.to_string(),
            })?;
        }
        let cert_path = tls_dir.join(HOST_CERT);
        let chain = pem_certs(&cert_path)?;
        let name = host_name(&chain[0]).ok_or_else(|| PeerError::BadPem {
            path: cert_path.clone(),
            reason: "certificate has no valid DNS name".into(),
        })?;
        let key_path = tls_dir.join(HOST_KEY);
        let key = rustls_pemfile::private_key(&mut read(&key_path)?.as_bytes())
            .map_err(|e| PeerError::BadPem {
                path: key_path.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| PeerError::BadPem {
                path: key_path.clone(),
                reason: "no private key in file".into(),
            })?;
        Ok(HostIdentity {
            name,
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        })
    }

    /// Server side: requires a client certificate signed by the cluster CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .expect("a non-empty root store always builds a verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("host key matches its certificate (both written by issue_host)");
        Arc::new(config)
    }

    /// Client side: trusts only the cluster CA, presents this host's certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .expect("host key matches its certificate (both written by issue_host)");
        Arc::new(config)
    }

    /// Client config without a client certificate: only for tests that prove it is refused.
    #[cfg(test)]
    pub(crate) fn anonymous_client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth(),
        )
    }
}

/// The host name a (verified) certificate was issued to: its first valid DNS SAN.
pub(crate) fn host_name(cert: &CertificateDer<'_>) -> Option<String> {
    super::der::dns_names(cert)?
        .into_iter()
        .find(|n| validate_name(n).is_ok())
}
