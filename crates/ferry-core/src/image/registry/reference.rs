//! Image references as users write them (`busybox`, `reg:5000/team/app:v1`, `…@sha256:…`),
//! resolved with Docker's rules: the first component is a registry only if it has a `.` or a
//! `:` or is `localhost`; Docker Hub names get `library/`.

use oci_client::Reference;

use super::RegistryError;
use crate::image::{normalize_name, Digest};

/// A parsed reference and what ferry derives from it.
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub(crate) inner: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, RegistryError> {
        let s = s.trim();
        let bad = |why: String| RegistryError::BadReference {
            reference: s.to_owned(),
            why,
        };
        if s.is_empty() {
            return Err(bad("empty".into()));
        }
        let inner: Reference = s.parse().map_err(|e| bad(format!("{e}")))?;
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|e| bad(e.to_string()))?;
        }
        Ok(ImageRef { inner })
    }

    /// `name` as a reference only when it names its registry itself (`reg:5000/app:v1`,
    /// `localhost/app`), not when Docker Hub is implied (`busybox:latest`): a local name must
    /// never send ferry to the Internet.
    pub fn explicit(name: &str) -> Option<ImageRef> {
        let (first, _) = name.split_once('/')?;
        if !(first.contains('.') || first.contains(':') || first == "localhost") {
            return None;
        }
        ImageRef::parse(name).ok()
    }

    /// The registry as ferry connects to it (`index.docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    /// The registry as written in names and credentials (`docker.io` for Docker Hub).
    pub fn registry_name(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// `registry/repository:tag` or `registry/repository@digest`.
    pub fn full(&self) -> String {
        self.inner.whole()
    }

    /// The same repository at another digest (a manifest chosen from an index).
    pub fn at_digest(&self, d: &Digest) -> ImageRef {
        ImageRef {
            inner: self.inner.clone_with_digest(d.to_string()),
        }
    }

    /// The names a pulled image gets in the store: what the user typed (`busybox:latest`)
    /// and the full reference (`docker.io/library/busybox:latest`). A digest reference gives
    /// none: such an image is found by its id.
    pub fn store_names(&self, typed: &str) -> Vec<String> {
        if self.inner.digest().is_some() {
            return Vec::new();
        }
        let mut names = Vec::new();
        for n in [typed.trim().to_owned(), self.full()] {
            if let Ok(n) = normalize_name(&n) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full())
    }
}

/// A registry name as given to `ferry login`: `host[:port]`, optionally as a URL or with a
/// path (Docker accepts both); Docker Hub's aliases become `docker.io`.
pub fn registry_key(s: &str) -> Result<String, RegistryError> {
    let bad = |why: &str| RegistryError::BadReference {
        reference: s.to_owned(),
        why: why.to_owned(),
    };
    let t = s.trim();
    let t = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .unwrap_or(t);
    let host = t.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("no registry host"));
    }
    if host
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
    {
        return Err(bad("a registry is host[:port]"));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.registry_name(), "docker.io");
        assert_eq!(r.registry(), "index.docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.full(), "docker.io/library/busybox:latest");
        assert_eq!(
            r.store_names("busybox"),
            vec!["busybox:latest", "docker.io/library/busybox:latest"]
        );

        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.store_names("127.0.0.1:5000/team/app:v1"), vec![r.full()]);

        let r = ImageRef::parse("localhost/app").unwrap();
        assert_eq!(r.registry(), "localhost");
        // A first component without . or : is a Docker Hub user.
        let r = ImageRef::parse("someone/app").unwrap();
        assert_eq!(r.registry_name(), "docker.io");
        assert_eq!(r.repository(), "someone/app");
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"x");
        let r = ImageRef::parse(&format!("reg.example:443/app@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d));
        assert!(r.store_names("x").is_empty());
        let other = Digest::of(b"y");
        assert_eq!(r.at_digest(&other).digest(), Some(other));
        assert!(ImageRef::parse("reg.example/app@sha256:abc").is_err());
        assert!(ImageRef::parse("").is_err());
        assert!(ImageRef::parse("reg.example/app:ta g").is_err());
        assert!(ImageRef::parse("reg.example/app:").is_err());
    }

    #[test]
    fn explicit_registries_only() {
        assert!(ImageRef::explicit("busybox:latest").is_none());
        assert!(ImageRef::explicit("someone/app:v1").is_none());
        let r = ImageRef::explicit("10.77.0.100:5000/ferry/busybox:v1").unwrap();
        assert_eq!(r.registry(), "10.77.0.100:5000");
        assert_eq!(r.repository(), "ferry/busybox");
        assert!(ImageRef::explicit("localhost/app").is_some());
        assert!(ImageRef::explicit("docker.io/library/redis:7").is_some());
    }

    #[test]
    fn registry_keys() {
        assert_eq!(
            registry_key("https://reg.example:5000/v2/").unwrap(),
            "reg.example:5000"
        );
        assert_eq!(registry_key("index.docker.io").unwrap(), "docker.io");
        assert_eq!(registry_key("10.77.0.1:5000").unwrap(), "10.77.0.1:5000");
        assert!(registry_key("").is_err());
        assert!(registry_key("a b").is_err());
    }
}
