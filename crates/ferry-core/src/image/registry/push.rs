//! `ferry push`: the blobs the registry lacks (asked with a HEAD each), then the manifest,
//! byte for byte as stored, so the image keeps its id in the registry.

use std::time::Instant;

use futures::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;

use super::progress::{BlobInfo, TransferEvent, TransferProgress, TransferResult};
use super::session::Session;
use super::{io_err, ImageRef, RegistryConfig, RegistryError};
use crate::fsutil::blocking;
use crate::image::oci;
use crate::image::{Digest, Image, ImageStore, RegistrySource};

/// Pushes the image `image` resolves to as `target` (default: `image` itself, which must then
/// be a name with a registry). Records the registry as the image's source.
pub async fn push(
    store: &ImageStore,
    cfg: &RegistryConfig,
    image: &str,
    target: Option<&str>,
    insecure: bool,
    progress: &TransferProgress,
) -> Result<(Image, TransferResult), RegistryError> {
    let started = Instant::now();
    let img = store.resolve(image)?;
    let target = target.unwrap_or(image);
    let r = ImageRef::parse(target)?;
    if r.digest().is_some() {
        return Err(RegistryError::BadReference {
            reference: target.to_owned(),
            why: "push to a tag, not a digest".into(),
        });
    }
    let s = Session::open(cfg, &r, insecure, RegistryOperation::Push).await?;
    let manifest_path = store.blob_path(&img.digest);
    let manifest = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());

    let blobs: Vec<(Digest, u64, &str)> = std::iter::once((img.config_digest.clone(), "config"))
        .chain(img.layers.iter().map(|l| (l.clone(), "layer")))
        .map(|(d, kind)| {
            let p = store.blob_path(&d);
            std::fs::metadata(&p)
                .map(|m| (d, m.len(), kind))
                .map_err(io_err(&p))
        })
        .collect::<Result<_, _>>()?;
    progress.send(TransferEvent::Resolved {
        reference: r.full(),
        digest: img.digest.to_string(),
        blobs: blobs
            .iter()
            .map(|(d, size, kind)| BlobInfo {
                digest: d.to_string(),
                size: *size,
                kind: (*kind).to_owned(),
            })
            .collect(),
    });
    let mut result = TransferResult {
        reference: r.full(),
        id: img.digest.to_string(),
        registry_digest: img.digest.to_string(),
        names: img.names.clone(),
        ..Default::default()
    };
    for (d, size, _) in &blobs {
        let exists = s
            .client
            .blob_exists(&r.inner, d.as_str())
            .await
            .map_err(|e| s.classify(e))?;
        if !exists {
            upload(&s, &r, store, d, *size, progress).await?;
            result.blobs_moved += 1;
            result.bytes += size;
        } else {
            result.blobs_present += 1;
        }
        progress.send(TransferEvent::BlobDone {
            digest: d.to_string(),
            size: *size,
            skipped: exists,
        });
    }
    let content_type = media_type.parse().map_err(|_| RegistryError::Unsupported {
        what: format!("manifest {}", img.digest),
        media_type: media_type.clone(),
    })?;
    s.client
        .push_manifest_raw(&r.inner, manifest, content_type)
        .await
        .map_err(|e| s.classify(e))?;
    let source = RegistrySource {
        reference: r.full(),
        registry: r.registry().to_owned(),
        repository: r.repository().to_owned(),
        digest: img.digest.clone(),
    };
    // Takes the store's lock, which a concurrent pull holds while it unpacks: off the workers.
    let store = store.clone();
    let img = blocking(move || store.set_source(&img.digest, source)).await?;
    result.ms = started.elapsed().as_millis() as u64;
    Ok((img, result))
}

/// Streams one blob from the store (a single monolithic PUT); the registry checks the digest.
async fn upload(
    s: &Session,
    r: &ImageRef,
    store: &ImageStore,
    d: &Digest,
    size: u64,
    progress: &TransferProgress,
) -> Result<(), RegistryError> {
    let path = store.blob_path(d);
    let file = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
    let p = progress.clone();
    let digest = d.to_string();
    let (mut sent, mut last) = (0u64, 0u64);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
        if let Ok(b) = &chunk {
            sent += b.len() as u64;
            p.bytes(&digest, &mut last, sent, size);
        }
        chunk.map_err(OciDistributionError::IoError)
    });
    s.client
        .push_blob_stream(&r.inner, stream, d.as_str(), Some(size))
        .await
        .map_err(|e| s.classify(e))?;
    Ok(())
}
