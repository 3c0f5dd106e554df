//! Checkpoint images: a checkpoint directory as a one-layer OCI image, the format Podman's
//! `container checkpoint --create-image` writes and CRI-O restores from. The layer holds the
//! checkpoint's files at its root; the manifest carries Podman's and CRI-O's annotations. Such
//! an image goes through any registry, which is how a checkpoint reaches a Kubernetes node.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::checkpoint::layout::{CONFIG_DUMP, CRIU_IMAGES_DIR, SPEC_DUMP};
use crate::image::{Digest, HashingWriter};

/// Podman's annotations (libpod/define/annotations.go) and CRI-O's name annotation.
pub const ANNOTATION_NAME: &str = "io.podman.annotations.checkpoint.name";
pub const ANNOTATION_RAW_IMAGE_NAME: &str = "io.podman.annotations.checkpoint.rawImageName";
pub const ANNOTATION_ROOTFS_IMAGE_ID: &str = "io.podman.annotations.checkpoint.rootfsImageID";
pub const ANNOTATION_ROOTFS_IMAGE_NAME: &str = "io.podman.annotations.checkpoint.rootfsImageName";
pub const ANNOTATION_CRIU_VERSION: &str = "io.podman.annotations.checkpoint.criu.version";
pub const ANNOTATION_RUNTIME_NAME: &str = "io.podman.annotations.checkpoint.runtime.name";
pub const ANNOTATION_HOST_ARCH: &str = "io.podman.annotations.checkpoint.host.arch";
pub const ANNOTATION_CRIO_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";

const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointImageError + '_ {
    move |source| CheckpointImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Who the checkpoint is of, for the annotations.
#[derive(Debug, Clone)]
pub struct Meta {
    pub container: String,
    pub image_reference: String,
    /// The rootfs image's config digest, hex (Podman's image id).
    pub image_id_hex: String,
    pub criu_version: String,
}

impl Meta {
    fn annotations(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (ANNOTATION_NAME, self.container.clone()),
            (ANNOTATION_CRIO_NAME, self.container.clone()),
            (ANNOTATION_RAW_IMAGE_NAME, self.image_reference.clone()),
            (ANNOTATION_ROOTFS_IMAGE_NAME, self.image_reference.clone()),
            (ANNOTATION_ROOTFS_IMAGE_ID, self.image_id_hex.clone()),
            (ANNOTATION_CRIU_VERSION, self.criu_version.clone()),
            (ANNOTATION_RUNTIME_NAME, "runc".to_owned()),
            (ANNOTATION_HOST_ARCH, crate::image::host_arch().to_owned()),
        ])
    }
}

/// The blobs of a built image, as files in the work dir, manifest first.
#[derive(Debug)]
pub struct Built {
    pub manifest: Digest,
    pub blobs: Vec<(Digest, PathBuf)>,
}

/// Builds the image of checkpoint `dir` in `work` (an empty scratch directory).
pub fn build(dir: &Path, work: &Path, meta: &Meta) -> Result<Built, CheckpointImageError> {
    let layer_path = work.join("layer.tar.gz");
    let (diff_id, digest, size) = write_layer(dir, &layer_path)?;
    let config = serde_json::to_vec(&json!({
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "architecture": crate::image::host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.as_str()] },
        "history": [{ "created_by": format!("ferry checkpoint of {}", meta.container) }],
    }))
    .expect("JSON of plain values");
    let config_digest = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_MANIFEST,
        "config": {
            "mediaType": crate::image::OCI_CONFIG,
            "digest": config_digest.as_str(),
            "size": config.len(),
        },
        "layers": [{ "mediaType": LAYER_GZIP, "digest": digest.as_str(), "size": size }],
        "annotations": meta.annotations(),
    }))
    .expect("JSON of plain values");
    let manifest_digest = Digest::of(&manifest);
    let mut blobs = Vec::new();
    for (d, bytes) in [(&manifest_digest, &manifest), (&config_digest, &config)] {
        let p = work.join(d.hex());
        std::fs::write(&p, bytes).map_err(io(&p))?;
        blobs.push((d.clone(), p));
    }
    blobs.push((digest, layer_path));
    Ok(Built {
        manifest: manifest_digest,
        blobs,
    })
}

/// The layer: every file of the checkpoint at the root of a gzip'd tar. Returns its diff_id,
/// digest and size.
fn write_layer(dir: &Path, out: &Path) -> Result<(Digest, Digest, u64), CheckpointImageError> {
    let file = File::create(out).map_err(io(out))?;
    let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    // Fast: a checkpoint is mostly memory pages, and this runs with the container stopped.
    let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
    let plain = HashingWriter::new(gz);
    let mut tar = tar::Builder::new(plain);
    let mut entries: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.map(|e| e.into_path()))
        .collect::<Result<_, _>>()
        .map_err(|e| CheckpointImageError::Io {
            path: dir.to_owned(),
            source: e.into(),
        })?;
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(dir).expect("walked below dir");
        tar.append_path_with_name(&path, rel).map_err(io(&path))?;
    }
    let plain = tar.into_inner().map_err(io(out))?;
    let (gz, diff_id, _) = plain.finish();
    let compressed = gz.finish().map_err(io(out))?;
    let (mut file, digest, size) = compressed.finish();
    file.flush().map_err(io(out))?;
    file.get_ref().sync_all().map_err(io(out))?;
    Ok((diff_id, digest, size))
}

/// Whether an unpacked image root holds a checkpoint (Podman's restore looks for no more).
pub fn is_checkpoint(root: &Path) -> bool {
    root.join(CONFIG_DUMP).is_file()
        && root.join(SPEC_DUMP).is_file()
        && root.join(CRIU_IMAGES_DIR).join("inventory.img").is_file()
}
