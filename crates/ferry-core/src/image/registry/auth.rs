//! Registry credentials: ferry's own file, Docker's and Podman's, and the challenge a registry
//! answers with.
//!
//! ferryd does every registry call, so ferryd reads the credentials: `ferry login` sends the
//! password once over the API socket (root's, 0660), ferryd checks it against the registry and
//! stores it in `<root>/auth.json` (0600, Docker's `auths` format). A lookup then tries that
//! file, then `$REGISTRY_AUTH_FILE`, Podman's `${XDG_RUNTIME_DIR}/containers/auth.json` and
//! `/run/containers/0/auth.json`, then Docker's `$HOME/.docker/config.json` (ferryd's home).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::reference::registry_key;
use super::RegistryError;
use crate::fsutil;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.username)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
}

impl AuthEntry {
    fn decode(&self) -> Option<Credentials> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_deref()?.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }
}

/// Where credentials are looked up, ferry's own file first.
#[derive(Debug, Clone)]
pub struct AuthFiles {
    /// Written by `ferry login`.
    pub own: PathBuf,
    /// Read only.
    pub others: Vec<PathBuf>,
}

impl AuthFiles {
    pub fn for_daemon(root: &Path) -> AuthFiles {
        let mut others = Vec::new();
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
            others.push(PathBuf::from(p));
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            others.push(Path::new(&d).join("containers/auth.json"));
        }
        others.push(PathBuf::from("/run/containers/0/auth.json"));
        if let Some(h) = std::env::var_os("HOME") {
            others.push(Path::new(&h).join(".docker/config.json"));
        }
        AuthFiles {
            own: root.join("auth.json"),
            others,
        }
    }

    /// The credentials for `registry` (`host[:port]`), and the file they came from.
    pub fn lookup(&self, registry: &str) -> Result<Option<(Credentials, PathBuf)>, RegistryError> {
        let want = registry_key(registry)?;
        for p in std::iter::once(&self.own).chain(&self.others) {
            let Some(file) = read(p, p == &self.own)? else {
                continue;
            };
            for (k, e) in &file.auths {
                if registry_key(k).ok().as_deref() == Some(want.as_str()) {
                    if let Some(c) = e.decode() {
                        return Ok(Some((c, p.clone())));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Saves `creds` for `registry` in ferry's own file (0600, written atomically).
    pub fn store(&self, registry: &str, creds: &Credentials) -> Result<(), RegistryError> {
        let key = registry_key(registry)?;
        let mut file = read(&self.own, true)?.unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password));
        file.auths.insert(key, AuthEntry { auth: Some(token) });
        self.write(&file)
    }

    /// Forgets `registry` in ferry's own file; false when it had no entry.
    pub fn remove(&self, registry: &str) -> Result<bool, RegistryError> {
        let key = registry_key(registry)?;
        let Some(mut file) = read(&self.own, true)? else {
            return Ok(false);
        };
        let before = file.auths.len();
        file.auths
            .retain(|k, _| registry_key(k).ok().as_deref() != Some(key.as_str()));
        if file.auths.len() == before {
            return Ok(false);
        }
        self.write(&file)?;
        Ok(true)
    }

    fn write(&self, file: &AuthFile) -> Result<(), RegistryError> {
        fsutil::write_json(&self.own, file, 0o600).map_err(|e| RegistryError::Config {
            path: self.own.clone(),
            why: e.to_string(),
        })
    }
}

/// Reads an auth file; a missing one is `None`. Another tool's unreadable file is skipped
/// with a warning; ferry's own must parse.
fn read(p: &Path, own: bool) -> Result<Option<AuthFile>, RegistryError> {
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if !own => {
            tracing::warn!(path = %p.display(), error = %e, "skipping an unreadable auth file");
            return Ok(None);
        }
        Err(e) => {
            return Err(RegistryError::Config {
                path: p.to_owned(),
                why: e.to_string(),
            })
        }
    };
    match serde_json::from_slice::<AuthFile>(&bytes) {
        Ok(f) => Ok(Some(f)),
        Err(e) if !own => {
            tracing::warn!(path = %p.display(), error = %e, "skipping an auth file ferry cannot parse");
            Ok(None)
        }
        Err(e) => Err(RegistryError::Config {
            path: p.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// One `WWW-Authenticate` challenge: `Basic realm="x"` or
/// `Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercase: `basic` or `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => {
                            escaped = false;
                            value.push(c);
                        }
                    }
                }
            } else {
                value = chars
                    .by_ref()
                    .take_while(|c| *c != ',')
                    .collect::<String>()
                    .trim()
                    .to_owned();
            }
            params.insert(key, value);
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

/// Checks `creds` against the registry the way `docker login` does: `GET /v2/`, answering
/// a Basic challenge with them, or a Bearer challenge by asking its realm for a token.
pub async fn verify_login(
    client: &reqwest::Client,
    base: &str,
    registry: &str,
    creds: &Credentials,
) -> Result<(), RegistryError> {
    let net = |e: reqwest::Error| RegistryError::Network {
        registry: registry.to_owned(),
        why: super::error_chain(&e),
    };
    let url = format!("{base}/v2/");
    let resp = client.get(&url).send().await.map_err(net)?;
    if resp.status().is_success() {
        // Needs no credentials at all; storing them does no harm.
        return Ok(());
    }
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(RegistryError::Refused {
            registry: registry.to_owned(),
            why: format!("GET {url} answered {}", resp.status()),
        });
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(Challenge::parse);
    let refused = |status: reqwest::StatusCode| RegistryError::AuthFailed {
        registry: registry.to_owned(),
        why: format!(
            "the registry refused user {:?} ({status}): wrong user name or password",
            creds.username
        ),
    };
    // Bearer: the token endpoint takes the credentials; Basic (or none named): /v2/ itself.
    let request = match challenge {
        Some(c) if c.scheme == "bearer" => {
            let realm = c
                .params
                .get("realm")
                .ok_or_else(|| RegistryError::Refused {
                    registry: registry.to_owned(),
                    why: "its Bearer challenge names no realm".into(),
                })?;
            let q: Vec<(&str, &str)> = c
                .params
                .get("service")
                .map(|s| ("service", s.as_str()))
                .into_iter()
                .collect();
            client.get(realm).query(&q)
        }
        _ => client.get(&url),
    };
    let resp = request
        .basic_auth(&creds.username, Some(&creds.password))
        .send()
        .await
        .map_err(net)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(refused(resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let c = Challenge::parse(r#"Basic realm="basic-realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "basic-realm");
        let c = Challenge::parse(r#"Bearer realm="a \"q\"", error=invalid_token"#).unwrap();
        assert_eq!(c.params["realm"], "a \"q\"");
        assert_eq!(c.params["error"], "invalid_token");
        assert_eq!(Challenge::parse("Basic").unwrap().params.len(), 0);
        assert!(Challenge::parse("  ").is_none());
    }

    #[test]
    fn files_round_trip_and_others_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker.json");
        let podman = dir.path().join("podman.json");
        let files = AuthFiles {
            own: dir.path().join("auth.json"),
            others: vec![podman.clone(), docker.clone()],
        };
        assert!(files.lookup("reg:5000").unwrap().is_none());
        let alice = Credentials {
            username: "alice".into(),
            password: "s3:cret".into(),
        };
        files.store("https://reg:5000/", &alice).unwrap();
        let mode = std::fs::metadata(&files.own).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (c, from) = files.lookup("reg:5000").unwrap().unwrap();
        assert_eq!((c, from), (alice.clone(), files.own.clone()));

        // Docker's format, with Docker Hub's legacy key; an unreadable file is skipped.
        std::fs::write(&podman, b"not json").unwrap();
        std::fs::write(
            &docker,
            serde_json::json!({"auths": {"https://index.docker.io/v1/": {"auth": "Ym9iOnB3"}},
                               "credsStore": "desktop"})
            .to_string(),
        )
        .unwrap();
        let (c, from) = files.lookup("docker.io").unwrap().unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.password, "pw");
        assert_eq!(from, docker);

        assert!(files.remove("reg:5000").unwrap());
        assert!(!files.remove("reg:5000").unwrap());
        assert!(files.lookup("reg:5000").unwrap().is_none());
        assert!(!format!("{alice:?}").contains("s3:cret"));
    }
}
