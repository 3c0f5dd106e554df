//! `ferry image save`: an image as an OCI archive, the form Podman (`podman pull
//! oci-archive:FILE`, `podman load`), skopeo and `ferry image import` read.

use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::json;

use super::store::ImageStore;
use super::{io_err, oci, Image, ImageError};

/// Writes `image` to the archive `out` (which must not exist), named `reference` in its index;
/// returns the archive's size. The archive appears only when complete.
pub fn save(
    store: &ImageStore,
    image: &Image,
    reference: &str,
    out: &Path,
) -> Result<u64, ImageError> {
    if out.exists() {
        return Err(ImageError::BadSource {
            path: out.to_owned(),
            why: "the file already exists; save writes a new one".into(),
        });
    }
    let manifest = std::fs::read(store.blob_path(&image.digest))
        .map_err(io_err(&store.blob_path(&image.digest)))?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|m| m.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": image.digest.as_str(),
            "size": manifest.len(),
            "annotations": { oci::ANNOTATION_REF_NAME: reference },
        }],
    }))
    .expect("JSON of plain values");
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ferry-save-")
        .tempfile_in(parent)
        .map_err(io_err(parent))?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
    let io = io_err(tmp.path());
    let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes)
    };
    (|| -> std::io::Result<()> {
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        Ok(())
    })()
    .map_err(io)?;
    for (digest, _) in store.blobs_of(image) {
        let path = store.blob_path(&digest);
        tar.append_path_with_name(&path, format!("blobs/sha256/{}", digest.hex()))
            .map_err(io_err(&path))?;
    }
    let mut w = tar.into_inner().map_err(io_err(tmp.path()))?;
    w.flush().map_err(io_err(tmp.path()))?;
    drop(w);
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    let size = tmp.as_file().metadata().map_err(io_err(tmp.path()))?.len();
    tmp.persist(out).map_err(|e| ImageError::Io {
        path: out.to_owned(),
        source: e.error,
    })?;
    Ok(size)
}
