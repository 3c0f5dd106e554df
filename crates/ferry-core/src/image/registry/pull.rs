//! `ferry pull`: from a reference to a registered image, every byte checked on the way in.

use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use oci_client::manifest::OciDescriptor;
use oci_client::RegistryOperation;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::platform;
use super::progress::{BlobInfo, TransferEvent, TransferProgress, TransferResult};
use super::session::Session;
use super::{io_err, ImageRef, RegistryConfig, RegistryError};
use crate::fsutil::blocking;
use crate::image::oci::{self, Descriptor, Index, Manifest};
use crate::image::store::MAX_JSON;
use crate::image::{Digest, Image, ImageError, ImageStore, RegistrySource};

const MANIFEST_TYPES: [&str; 2] = [oci::OCI_MANIFEST, oci::DOCKER_MANIFEST];
const ANY_TYPES: [&str; 4] = [
    oci::OCI_MANIFEST,
    oci::DOCKER_MANIFEST,
    oci::OCI_INDEX,
    oci::DOCKER_LIST,
];

/// Pulls `typed` (as the user wrote it) into `store`. The manifest (this host's, from a
/// multi-arch index), its config and the layers the store lacks are staged and verified
/// (sha256 of every blob, then each layer's diff_id while unpacking) before one commit
/// registers the image under the reference; any failure leaves the store unchanged.
pub async fn pull(
    store: &ImageStore,
    cfg: &RegistryConfig,
    typed: &str,
    insecure: bool,
    progress: &TransferProgress,
) -> Result<(Image, TransferResult), RegistryError> {
    let started = Instant::now();
    let r = ImageRef::parse(typed)?;
    let s = Session::open(cfg, &r, insecure, RegistryOperation::Pull).await?;
    let (top_bytes, top) = fetch_manifest(&s, &r, &ANY_TYPES, r.digest().as_ref()).await?;
    let (manifest_bytes, manifest_digest) = if is_index(&top_bytes) {
        let index: Index = serde_json::from_slice(&top_bytes).map_err(|e| corrupt(&r, &e))?;
        let (os, arch, variant) = platform::host_platform();
        let desc = platform::select(&index, os, arch, variant, &r.full())?;
        let d = parse_digest(&desc.digest, &r)?;
        progress.note(format!("{os}/{arch}: manifest {d} of index {top}"));
        fetch_manifest(&s, &r.at_digest(&d), &MANIFEST_TYPES, Some(&d)).await?
    } else {
        (top_bytes, top.clone())
    };
    let m: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| corrupt(&r, &e))?;
    // The manifest is fsync'd into a new staging dir: off the async workers.
    let staging = {
        let (store, bytes) = (store.clone(), manifest_bytes.clone());
        blocking(move || {
            let staging = store.new_staging()?;
            staging.stage_bytes(&bytes)?;
            Ok::<_, ImageError>(staging)
        })
        .await?
    };

    let blobs: Vec<(&Descriptor, &str)> = std::iter::once((&m.config, "config"))
        .chain(m.layers.iter().map(|l| (l, "layer")))
        .collect();
    progress.send(TransferEvent::Resolved {
        reference: r.full(),
        digest: manifest_digest.to_string(),
        blobs: blobs
            .iter()
            .map(|(d, kind)| BlobInfo {
                digest: d.digest.clone(),
                size: d.size,
                kind: (*kind).to_owned(),
            })
            .collect(),
    });
    let mut result = TransferResult {
        reference: r.full(),
        id: manifest_digest.to_string(),
        registry_digest: top.to_string(),
        ..Default::default()
    };
    for (desc, _) in &blobs {
        let d = parse_digest(&desc.digest, &r)?;
        if staging.find_blob(&d).is_some() {
            result.blobs_present += 1;
            progress.send(TransferEvent::BlobDone {
                digest: d.to_string(),
                size: desc.size,
                skipped: true,
            });
            continue;
        }
        let tmp = staging.path().join("tmp");
        let n = download(&s, &r, desc, &d, &tmp, &staging.blob_path(&d), progress).await?;
        result.blobs_moved += 1;
        result.bytes += n;
        progress.send(TransferEvent::BlobDone {
            digest: d.to_string(),
            size: n,
            skipped: false,
        });
    }

    let source = RegistrySource {
        reference: r.full(),
        registry: r.registry().to_owned(),
        repository: r.repository().to_owned(),
        digest: top,
    };
    let names = r.store_names(typed);
    let store2 = store.clone();
    let image = blocking(move || {
        // Unpacks the new layers into staging, checking each diff_id; then one commit.
        let mut image = store2.prepare(&staging, &manifest_digest)?;
        image.source = Some(source);
        let _lock = store2.lock()?;
        store2.commit(&staging, image, &names)
    })
    .await?;
    result.names = image.names.clone();
    result.ms = started.elapsed().as_millis() as u64;
    Ok((image, result))
}

/// Fetches the blobs `blobs` of the image `manifest` in `registry`/`repository` straight into
/// the store (each verified; a mismatch stores nothing): the manifest itself through the
/// manifest API, the others as blobs. For a migration's destination. Returns the digests
/// fetched and their bytes.
pub async fn fetch_blobs(
    store: &ImageStore,
    cfg: &RegistryConfig,
    registry: &str,
    repository: &str,
    manifest: &Digest,
    blobs: &[(Digest, u64)],
) -> Result<(Vec<Digest>, u64), RegistryError> {
    let r = ImageRef::parse(&format!("{registry}/{repository}@{manifest}"))?;
    let s = Session::open(cfg, &r, false, RegistryOperation::Pull).await?;
    let tmp = store.root().join("tmp");
    let (mut fetched, mut total) = (Vec::new(), 0);
    for (d, size) in blobs {
        if store.has_blob(d) {
            continue;
        }
        if d == manifest {
            let (bytes, _) = fetch_manifest(&s, &r, &ANY_TYPES, Some(d)).await?;
            let (store, d) = (store.clone(), d.clone());
            let n = blocking(move || store.write_blob(&d, &bytes[..])).await?;
            total += n;
        } else {
            let desc = Descriptor {
                media_type: String::new(),
                digest: d.to_string(),
                size: *size,
                platform: None,
                annotations: Default::default(),
            };
            let none = TransferProgress::none();
            total += download(&s, &r, &desc, d, &tmp, &store.blob_path(d), &none).await?;
        }
        fetched.push(d.clone());
    }
    Ok((fetched, total))
}

fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => p.media_type.as_deref().is_some_and(oci::is_index_type) || p.manifests.is_some(),
        Err(_) => false,
    }
}

fn corrupt(r: &ImageRef, e: &serde_json::Error) -> RegistryError {
    RegistryError::Refused {
        registry: r.registry().to_owned(),
        why: format!("its manifest for {r} is not valid JSON: {e}"),
    }
}

fn parse_digest(s: &str, r: &ImageRef) -> Result<Digest, RegistryError> {
    Digest::parse(s).map_err(|e| RegistryError::Refused {
        registry: r.registry().to_owned(),
        why: format!("its manifest for {r} has {e}"),
    })
}

/// A manifest's bytes and their digest, checked against `expected` when the reference or an
/// index named one (oci-client checks the registry's Docker-Content-Digest header too).
async fn fetch_manifest(
    s: &Session,
    r: &ImageRef,
    types: &[&str],
    expected: Option<&Digest>,
) -> Result<(Vec<u8>, Digest), RegistryError> {
    let (bytes, _) = s
        .client
        .pull_manifest_raw(&r.inner, &s.auth, types)
        .await
        .map_err(|e| match e {
            oci_client::errors::OciDistributionError::DigestError(_) => RegistryError::Refused {
                registry: r.registry().to_owned(),
                why: format!("the manifest of {r} does not match the digest it announced: {e}"),
            },
            e => s.classify(e),
        })?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(RegistryError::Refused {
            registry: r.registry().to_owned(),
            why: format!("the manifest of {r} is larger than {MAX_JSON} bytes"),
        });
    }
    let actual = Digest::of(&bytes);
    if let Some(want) = expected {
        if &actual != want {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest of {r}"),
                expected: want.clone(),
                actual,
            });
        }
    }
    Ok((bytes.to_vec(), actual))
}

/// Streams one blob into `tmp_dir`, hashing it, and renames it to `dest` only when its sha256
/// is `d`. Returns its size.
async fn download(
    s: &Session,
    r: &ImageRef,
    desc: &Descriptor,
    d: &Digest,
    tmp_dir: &Path,
    dest: &Path,
    progress: &TransferProgress,
) -> Result<u64, RegistryError> {
    let what = format!("blob {d} of {r}");
    let oci_desc = OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: d.to_string(),
        size: desc.size as i64,
        ..Default::default()
    };
    let mut stream = s
        .client
        .pull_blob_stream(&r.inner, &oci_desc)
        .await
        .map_err(|e| s.classify(e))?;
    std::fs::create_dir_all(tmp_dir).map_err(io_err(tmp_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix("blob-")
        .tempfile_in(tmp_dir)
        .map_err(io_err(tmp_dir))?;
    let (std_file, tmp_path) = tmp.into_parts();
    let mut f = tokio::fs::File::from_std(std_file);
    let mut hasher = Sha256::new();
    let (mut n, mut last) = (0u64, 0u64);
    let mut broken = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                n += b.len() as u64;
                if n > desc.size && desc.size > 0 {
                    return Err(RegistryError::Refused {
                        registry: s.registry().to_owned(),
                        why: format!(
                            "{what}: it sends more than the {} bytes the manifest says",
                            desc.size
                        ),
                    });
                }
                hasher.update(&b);
                f.write_all(&b).await.map_err(io_err(&tmp_path))?;
                progress.bytes(d.as_str(), &mut last, n, desc.size);
            }
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    f.flush().await.map_err(io_err(&tmp_path))?;
    f.sync_data().await.map_err(io_err(&tmp_path))?;
    drop(f);
    let actual = Digest::parse(&format!("sha256:{}", hex::encode(hasher.finalize())))
        .expect("a sha256 is a digest");
    if &actual != d {
        // All bytes arrived and they are wrong: tampering or corruption. Fewer bytes: the
        // connection broke.
        if n >= desc.size {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: d.clone(),
                actual,
            });
        }
        return Err(RegistryError::Network {
            registry: s.registry().to_owned(),
            why: format!(
                "{what}: the transfer ended after {n} of {} bytes{}",
                desc.size,
                broken.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        });
    }
    tmp_path.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(n)
}
