//! Choosing this host's manifest from a multi-arch index (`linux/amd64` here).

use super::RegistryError;
use crate::image::oci::{self, Descriptor, Index};

/// The host's platform in OCI spelling, from the build target.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let variant = match std::env::consts::ARCH {
        "aarch64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    ("linux", oci::host_arch(), variant)
}

/// The descriptor for `os/arch[/variant]` in `index`. Attestation manifests (Docker's
/// `unknown/unknown` with a reference type) never match. A wanted variant prefers an exact
/// match and takes a variant-less entry otherwise.
pub fn select<'i>(
    index: &'i Index,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    what: &str,
) -> Result<&'i Descriptor, RegistryError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !d.annotations.contains_key("vnd.docker.reference.type"))
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    let exact = candidates
        .iter()
        .find(|d| variant_of(d).as_deref() == variant)
        .or_else(|| candidates.iter().find(|d| variant_of(d).is_none()))
        .or_else(|| candidates.first());
    exact.copied().ok_or_else(|| RegistryError::NoPlatform {
        reference: what.to_owned(),
        wanted: match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        },
        available: index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::OCI_INDEX,
            "manifests": [
                {"mediaType": oci::OCI_MANIFEST, "digest": "sha256:a", "size": 1,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
                {"mediaType": oci::OCI_MANIFEST, "digest": "sha256:b", "size": 1,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": oci::OCI_MANIFEST, "digest": "sha256:c", "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": oci::OCI_MANIFEST, "digest": "sha256:d", "size": 1,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"mediaType": oci::OCI_MANIFEST, "digest": "sha256:e", "size": 1,
                 "platform": {"os": "windows", "architecture": "amd64"}}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn picks_the_platform() {
        let i = index();
        assert_eq!(
            select(&i, "linux", "amd64", None, "x").unwrap().digest,
            "sha256:c"
        );
        assert_eq!(
            select(&i, "linux", "arm", Some("v7"), "x").unwrap().digest,
            "sha256:b"
        );
        assert_eq!(
            select(&i, "windows", "amd64", None, "x").unwrap().digest,
            "sha256:e"
        );
        let e = select(&i, "linux", "s390x", None, "app")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux/s390x") && e.contains("linux/amd64"),
            "{e}"
        );
        let (os, arch, _) = host_platform();
        assert_eq!(os, "linux");
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(arch, "amd64");
        }
    }
}
