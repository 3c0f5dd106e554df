//! `ImageStore::import`: OCI layouts (directory or tar, optionally compressed), `docker save`
//! archives, and plain rootfs tarballs (like `podman import`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::compress::{decompress, LayerCompression};
use super::digest::{Digest, HashingReader};
use super::extract::normalize;
use super::guard::ImportGuard;
use super::oci::{
    self, ConfigFile, ContainerConfig, Descriptor, DockerSaveEntry, Index, Manifest, RootFs,
};
use super::store::{parse_digest, read_small, Staging, MAX_JSON};
use super::{io_err, normalize_name, Image, ImageError, ImageStore};
use crate::cancel::{is_fifo, spool_stream, Cancel, CANCELLED};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Layout files that say "this archive is an image, not a root filesystem".
const LAYOUT_MARKERS: [&str; 3] = ["oci-layout", "index.json", "manifest.json"];
const MAX_NESTING: usize = 4;

/// Where the blobs of a layout being imported come from.
enum Layout<'a> {
    /// An OCI layout directory: blobs are copied into staging on demand.
    Dir(&'a Path),
    /// A layout archive: every blob was already staged while reading it.
    Staged,
}

impl ImageStore {
    /// Imports an OCI image layout (directory, or tar plain/gzip/zstd), a `docker save`
    /// archive, or a plain rootfs tarball. `name` sets the image's name (`:latest` added when
    /// untagged) and, in a layout holding several images, selects the one with that ref
    /// name. Without it, names come from the layout's annotations. On error the store is
    /// unchanged.
    ///
    /// The input must be a regular file or a directory (a device such as `/dev/zero` never
    /// ends), fit in the store's free space, and be read within [`IMPORT_DEADLINE`]. It is read
    /// and staged without the store's lock, so incoming migrations and other imports go on
    /// meanwhile; the lock is held only for the commit's renames.
    pub fn import(&self, src: &Path, name: Option<&str>) -> Result<Image, ImageError> {
        self.import_within(src, name, IMPORT_DEADLINE)
    }

    /// [`ImageStore::import`] with another deadline.
    pub fn import_within(
        &self,
        src: &Path,
        name: Option<&str>,
        deadline: Duration,
    ) -> Result<Image, ImageError> {
        self.import_bounded(src, name, deadline, None)
    }

    /// [`ImageStore::import_within`] for a client that is waiting for it (ferryd's API): it
    /// stops, leaving nothing, once `cancel` is set (the client went away). Here `src` may
    /// also be a FIFO: its client can end it, so a stream that never ends costs no more than
    /// the client is willing to wait. It is copied into the staging dir first (bounded by the
    /// free space, the deadline and `cancel`), and imported from there.
    pub fn import_cancellable(
        &self,
        src: &Path,
        name: Option<&str>,
        deadline: Duration,
        cancel: &Cancel,
    ) -> Result<Image, ImageError> {
        self.import_bounded(src, name, deadline, Some(cancel))
    }

    fn import_bounded(
        &self,
        src: &Path,
        name: Option<&str>,
        deadline: Duration,
        cancel: Option<&Cancel>,
    ) -> Result<Image, ImageError> {
        let wanted = name.map(normalize_name).transpose()?;
        let mut staging = self.new_staging()?;
        let spooled = staging.path().join(SPOOLED_INPUT);
        let input = src;
        let never = Cancel::new();
        let (cancel, streams) = match cancel {
            Some(c) => (c, true),
            None => (&never, false),
        };
        let src = if streams && is_fifo(src) {
            let free = crate::fsutil::free_bytes(staging.path()).map_err(io_err(staging.path()))?;
            let room = free.saturating_sub(crate::fsutil::FREE_SPACE_RESERVE);
            let until = Instant::now()
                .checked_add(deadline)
                .unwrap_or_else(|| Instant::now() + IMPORT_DEADLINE);
            spool_stream(src, &spooled, room, until, cancel)
                .map_err(|e| stream_error(input, e, cancel))?;
            spooled.as_path()
        } else {
            src
        };
        let meta = fs::metadata(src).map_err(io_err(src))?;
        let size = if meta.is_dir() {
            crate::container::checkpoint::dir_size(src)
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(ImageError::BadSource {
                path: src.to_owned(),
                why: format!(
                    "it is a {}; import reads a regular file (an archive) or a directory (an OCI layout)",
                    kind_of(&meta)
                ),
            });
        };
        // Staging copies the input (at most its size); layers expand later, each bounded by
        // the free space then (see `unpack_layer`).
        let free = crate::fsutil::free_bytes(staging.path()).map_err(io_err(staging.path()))?;
        if size.saturating_add(crate::fsutil::FREE_SPACE_RESERVE) > free {
            return Err(ImageError::OverLimit {
                path: src.to_owned(),
                why: format!(
                    "it holds {size} bytes and the image store has {free} bytes free \
                     (keeping {} in reserve)",
                    crate::fsutil::FREE_SPACE_RESERVE
                ),
            });
        }
        staging.guard = ImportGuard::new(deadline).with_cancel(cancel);
        let guard = staging.guard.clone();
        let staged = self.stage_import(src, &meta, &staging, wanted.as_deref());
        let staged = staged.map_err(|e| match guard.why() {
            Some(why) => ImageError::OverLimit {
                path: input.to_owned(),
                why,
            },
            None => e,
        });
        // Whatever the staging did, a cancelled import commits nothing.
        if cancel.is_cancelled() {
            return Err(cancelled(input));
        }
        let staged = staged?;
        let (image, found_names) = staged;
        let names = match wanted {
            Some(n) => vec![n],
            None => found_names,
        };
        let _lock = self.lock()?;
        if cancel.is_cancelled() {
            return Err(cancelled(input));
        }
        self.commit(&staging, image, &names)
    }

    /// Reads `src` into `staging` and unpacks the layers the store lacks: everything of an
    /// import but the commit. Changes nothing in the store.
    fn stage_import(
        &self,
        src: &Path,
        meta: &fs::Metadata,
        staging: &Staging,
        wanted: Option<&str>,
    ) -> Result<(Image, Vec<String>), ImageError> {
        let (manifest, found_names) = if meta.is_dir() {
            let index = read_small(&src.join("index.json"), "index.json").map_err(|_| {
                ImageError::Corrupt {
                    what: src.display().to_string(),
                    why: "directory is not an OCI image layout (no readable index.json)".into(),
                }
            })?;
            select_from_index(&Layout::Dir(src), staging, &index, wanted)?
        } else {
            let scan = scan_archive(src, &staging.guard)?;
            if scan.is_layout {
                stage_layout_archive(src, staging, wanted)?
            } else {
                (stage_rootfs(src, staging, &scan)?, Vec::new())
            }
        };
        Ok((self.prepare(staging, &manifest)?, found_names))
    }
}

/// Where a FIFO's stream is copied, inside the import's staging dir.
const SPOOLED_INPUT: &str = "input";

fn cancelled(src: &Path) -> ImageError {
    ImageError::OverLimit {
        path: src.to_owned(),
        why: CANCELLED.to_owned(),
    }
}

/// Why copying the stream `src` failed, as the import reports it.
fn stream_error(src: &Path, e: std::io::Error, cancel: &Cancel) -> ImageError {
    if cancel.is_cancelled() {
        return cancelled(src);
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::Other => ImageError::OverLimit {
            path: src.to_owned(),
            why: e.to_string(),
        },
        _ => io_err(src)(e),
    }
}

/// The longest an image import may take: a big image from a slow disk takes minutes, and an
/// input that never ends must not hold the daemon forever.
pub const IMPORT_DEADLINE: Duration = Duration::from_secs(30 * 60);

fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Makes a blob of the layout available in staging (or finds it in the store).
fn layout_blob(layout: &Layout, staging: &Staging, d: &Digest) -> Result<PathBuf, ImageError> {
    if let Some(p) = staging.find_blob(d) {
        return Ok(p);
    }
    match layout {
        Layout::Dir(dir) => {
            let src = dir.join("blobs").join("sha256").join(d.hex());
            let f = File::open(&src).map_err(io_err(&src))?;
            staging.stage(Some(d), &format!("blob {d}"), f)?;
            Ok(staging.blob_path(d))
        }
        Layout::Staged => Err(ImageError::Corrupt {
            what: "image layout".into(),
            why: format!("blob {d} is not in the archive"),
        }),
    }
}

fn descriptor_names(d: &Descriptor) -> Vec<String> {
    [oci::ANNOTATION_CONTAINERD_NAME, oci::ANNOTATION_REF_NAME]
        .iter()
        .filter_map(|k| d.annotations.get(*k))
        .filter_map(|n| match normalize_name(n) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("ignoring image name annotation: {e}");
                None
            }
        })
        .take(1)
        .collect()
}

/// Picks the one manifest for this platform among `descs`, skipping attestations.
fn pick<'d>(descs: &'d [Descriptor], what: &str) -> Result<&'d Descriptor, ImageError> {
    let arch = oci::host_arch();
    let usable: Vec<&Descriptor> = descs
        .iter()
        .filter(|d| !d.annotations.contains_key("vnd.docker.reference.type"))
        .filter(|d| match &d.platform {
            Some(p) => p.os == "linux" && p.architecture == arch,
            None => true,
        })
        .collect();
    let mut exact: Vec<&Descriptor> = usable
        .iter()
        .copied()
        .filter(|d| d.platform.is_some())
        .collect();
    if exact.is_empty() {
        exact = usable;
    }
    exact.dedup_by(|a, b| a.digest == b.digest);
    match exact.len() {
        0 => Err(ImageError::NotFound(format!(
            "a linux/{arch} manifest in {what}"
        ))),
        1 => Ok(exact[0]),
        _ => Err(ImageError::Ambiguous {
            reference: what.to_owned(),
            candidates: exact
                .iter()
                .map(|d| {
                    let names = descriptor_names(d);
                    if names.is_empty() {
                        d.digest.clone()
                    } else {
                        names.join(",")
                    }
                })
                .collect(),
        }),
    }
}

fn is_index_json(bytes: &[u8], media_type: &str) -> bool {
    if oci::is_index_type(media_type) {
        return true;
    }
    if oci::is_manifest_type(media_type) {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.get("manifests").is_some())
        .unwrap_or(false)
}

/// From a layout's index.json down (through nested indexes) to one image manifest.
fn select_from_index(
    layout: &Layout,
    staging: &Staging,
    index_json: &[u8],
    wanted: Option<&str>,
) -> Result<(Digest, Vec<String>), ImageError> {
    let index: Index = serde_json::from_slice(index_json).map_err(|e| ImageError::Corrupt {
        what: "index.json".into(),
        why: e.to_string(),
    })?;
    let mut top: Vec<Descriptor> = index.manifests;
    if let Some(w) = wanted {
        let named: Vec<Descriptor> = top
            .iter()
            .filter(|d| descriptor_names(d).iter().any(|n| n == w))
            .cloned()
            .collect();
        if !named.is_empty() {
            top = named;
        }
    }
    let first = pick(&top, "index.json")?;
    let names = descriptor_names(first);
    let mut cur = first.clone();
    for _ in 0..MAX_NESTING {
        let d = parse_digest(&cur.digest, "index.json")?;
        if !cur.media_type.is_empty()
            && !oci::is_index_type(&cur.media_type)
            && !oci::is_manifest_type(&cur.media_type)
        {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("manifest {d}"),
                media_type: cur.media_type,
            });
        }
        let path = layout_blob(layout, staging, &d)?;
        let bytes = read_small(&path, &format!("manifest {d}"))?;
        if !is_index_json(&bytes, &cur.media_type) {
            // The image manifest: make sure its config and layers are staged too.
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
                what: format!("manifest {d}"),
                why: e.to_string(),
            })?;
            for desc in std::iter::once(&m.config).chain(m.layers.iter()) {
                let bd = parse_digest(&desc.digest, &format!("manifest {d}"))?;
                layout_blob(layout, staging, &bd)?;
            }
            return Ok((d, names));
        }
        let nested: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
            what: format!("index {d}"),
            why: e.to_string(),
        })?;
        cur = pick(&nested.manifests, &format!("index {d}"))?.clone();
    }
    Err(ImageError::Corrupt {
        what: "index.json".into(),
        why: format!("indexes nested deeper than {MAX_NESTING}"),
    })
}

/// What one read of an archive tells: layout or rootfs, and for a rootfs its digests.
struct Scan {
    is_layout: bool,
    compression: LayerCompression,
    blob: Digest,
    blob_size: u64,
    diff_id: Digest,
}

fn scan_archive(src: &Path, guard: &ImportGuard) -> Result<Scan, ImageError> {
    let corrupt = |why: String| ImageError::Corrupt {
        what: src.display().to_string(),
        why,
    };
    let f = File::open(src).map_err(io_err(src))?;
    let mut raw = HashingReader::new(guard.timed(f));
    let (compression, diff_id, entries) = {
        let (compression, dec) = decompress(&mut raw).map_err(|e| corrupt(e.to_string()))?;
        let mut plain = HashingReader::new(dec);
        let mut entries = 0u64;
        {
            let mut ar = tar::Archive::new(&mut plain);
            for e in ar.entries().map_err(|e| corrupt(e.to_string()))? {
                let e = e.map_err(|e| corrupt(format!("not a valid tar archive: {e}")))?;
                entries += 1;
                let p = normalize(&e.path_bytes())?;
                if e.header().entry_type().is_file()
                    && LAYOUT_MARKERS.iter().any(|m| p == Path::new(m))
                {
                    return Ok(Scan {
                        is_layout: true,
                        compression,
                        blob: Digest::of(b""),
                        blob_size: 0,
                        diff_id: Digest::of(b""),
                    });
                }
            }
        }
        let (diff_id, _) = plain
            .finish()
            .map_err(|e| corrupt(format!("decompression failed: {e}")))?;
        (compression, diff_id, entries)
    };
    if entries == 0 {
        return Err(corrupt("archive has no entries".into()));
    }
    let (blob, blob_size) = raw.finish().map_err(io_err(src))?;
    Ok(Scan {
        is_layout: false,
        compression,
        blob,
        blob_size,
        diff_id,
    })
}

/// A rootfs tarball becomes a one-layer image; the tarball itself is the layer blob.
fn stage_rootfs(src: &Path, staging: &Staging, scan: &Scan) -> Result<Digest, ImageError> {
    let f = File::open(src).map_err(io_err(src))?;
    staging.stage(Some(&scan.blob), &src.display().to_string(), f)?;
    // No creation time: importing the same tarball twice gives the same image id.
    let config = ConfigFile {
        created: None,
        architecture: oci::host_arch().to_owned(),
        os: "linux".into(),
        config: Some(ContainerConfig {
            env: Some(vec![DEFAULT_PATH.to_owned()]),
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![scan.diff_id.to_string()],
        },
    };
    write_manifest(
        staging,
        &config,
        vec![(scan.compression, scan.blob.clone(), scan.blob_size)],
    )
}

/// Stages a config and an OCI manifest for it; returns the manifest digest.
pub(crate) fn write_manifest(
    staging: &Staging,
    config: &ConfigFile,
    layers: Vec<(LayerCompression, Digest, u64)>,
) -> Result<Digest, ImageError> {
    let cbytes = to_json(config)?;
    let cdigest = staging.stage_bytes(&cbytes)?;
    let manifest = oci_manifest(oci::OCI_CONFIG, &cdigest, cbytes.len() as u64, layers);
    staging.stage_bytes(&to_json(&manifest)?)
}

/// An OCI image manifest for a config blob and layers we already hold.
fn oci_manifest(
    config_media_type: &str,
    config_digest: &Digest,
    config_size: u64,
    layers: Vec<(LayerCompression, Digest, u64)>,
) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: config_media_type.into(),
            digest: config_digest.to_string(),
            size: config_size,
            platform: None,
            annotations: Default::default(),
        },
        layers: layers
            .into_iter()
            .map(|(c, d, size)| Descriptor {
                media_type: c.layer_media_type().into(),
                digest: d.to_string(),
                size,
                platform: None,
                annotations: Default::default(),
            })
            .collect(),
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(|e| ImageError::Corrupt {
        what: "generated image document".into(),
        why: e.to_string(),
    })
}

/// Reads a layout archive once: blobs go to staging (verified against their names), the
/// small top-level documents stay in memory.
fn stage_layout_archive(
    src: &Path,
    staging: &Staging,
    wanted: Option<&str>,
) -> Result<(Digest, Vec<String>), ImageError> {
    let corrupt = |why: String| ImageError::Corrupt {
        what: src.display().to_string(),
        why,
    };
    let f = File::open(src).map_err(io_err(src))?;
    let (_, dec) = decompress(staging.guard.timed(f)).map_err(|e| corrupt(e.to_string()))?;
    let mut ar = tar::Archive::new(dec);
    let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
    // Archive path → staged digest (docker save refers to files by path).
    let mut files: HashMap<PathBuf, Digest> = HashMap::new();
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    for e in ar.entries().map_err(|e| corrupt(e.to_string()))? {
        let mut e = e.map_err(|e| corrupt(format!("not a valid tar archive: {e}")))?;
        let p = normalize(&e.path_bytes())?;
        let kind = e.header().entry_type();
        if kind == tar::EntryType::Symlink {
            if let Some(t) = e.link_name_bytes() {
                let parent = p.parent().unwrap_or(Path::new(""));
                let mut joined = parent.as_os_str().as_encoded_bytes().to_vec();
                joined.push(b'/');
                joined.extend_from_slice(&t);
                links.insert(p, normalize(&joined)?);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let ps = p.to_string_lossy().into_owned();
        if LAYOUT_MARKERS.contains(&ps.as_str()) || ps == "repositories" {
            let mut buf = Vec::new();
            (&mut e)
                .take(MAX_JSON + 1)
                .read_to_end(&mut buf)
                .map_err(|err| corrupt(format!("{ps}: {err}")))?;
            if buf.len() as u64 > MAX_JSON {
                return Err(corrupt(format!("{ps} is larger than {MAX_JSON} bytes")));
            }
            docs.insert(ps, buf);
            continue;
        }
        let expected = ps
            .strip_prefix("blobs/sha256/")
            .map(|hex| parse_digest(&format!("sha256:{hex}"), &ps))
            .transpose()?;
        let (d, _) = staging.stage(
            expected.as_ref(),
            &format!("{ps} in {}", src.display()),
            &mut e,
        )?;
        files.insert(p, d);
    }
    if let Some(index) = docs.get("index.json") {
        return select_from_index(&Layout::Staged, staging, index, wanted);
    }
    let Some(manifest_json) = docs.get("manifest.json") else {
        return Err(corrupt(
            "archive has neither index.json nor manifest.json".into(),
        ));
    };
    docker_save_manifest(staging, manifest_json, &files, &links, wanted)
}

/// Turns a `docker save` manifest.json entry into an OCI manifest over the staged files.
fn docker_save_manifest(
    staging: &Staging,
    manifest_json: &[u8],
    files: &HashMap<PathBuf, Digest>,
    links: &HashMap<PathBuf, PathBuf>,
    wanted: Option<&str>,
) -> Result<(Digest, Vec<String>), ImageError> {
    let what = "manifest.json (docker save)";
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(manifest_json).map_err(|e| ImageError::Corrupt {
            what: what.into(),
            why: e.to_string(),
        })?;
    let tags = |e: &DockerSaveEntry| -> Vec<String> {
        e.repo_tags
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| normalize_name(t).ok())
            .collect()
    };
    let chosen: Vec<&DockerSaveEntry> = match wanted {
        Some(w) if entries.iter().any(|e| tags(e).iter().any(|t| t == w)) => entries
            .iter()
            .filter(|e| tags(e).iter().any(|t| t == w))
            .collect(),
        _ => entries.iter().collect(),
    };
    let entry = match chosen.as_slice() {
        [one] => *one,
        [] => return Err(ImageError::NotFound(format!("an image in {what}"))),
        many => {
            return Err(ImageError::Ambiguous {
                reference: what.into(),
                candidates: many.iter().flat_map(|e| tags(e)).collect(),
            })
        }
    };
    let lookup = |path: &str| -> Result<Digest, ImageError> {
        let p = normalize(path.as_bytes())?;
        let p = links.get(&p).cloned().unwrap_or(p);
        files.get(&p).cloned().ok_or_else(|| ImageError::Corrupt {
            what: what.into(),
            why: format!("{path} is not in the archive"),
        })
    };
    let config_digest = lookup(&entry.config)?;
    let cbytes = staging.read_json_blob(&config_digest, "docker save config")?;
    let mut layers = Vec::new();
    for l in &entry.layers {
        let d = lookup(l)?;
        let path = staging.find_blob(&d).ok_or_else(|| ImageError::Corrupt {
            what: what.into(),
            why: format!("{l} is not staged"),
        })?;
        let mut head = [0u8; 4];
        let mut f = File::open(&path).map_err(io_err(&path))?;
        let n = f.read(&mut head).map_err(io_err(&path))?;
        let size = f.metadata().map_err(io_err(&path))?.len();
        layers.push((LayerCompression::sniff(&head[..n]), d, size));
    }
    // Keep docker's config bytes (its digest is the image's config digest), wrap in OCI.
    let manifest = oci_manifest(
        oci::DOCKER_CONFIG,
        &config_digest,
        cbytes.len() as u64,
        layers,
    );
    Ok((staging.stage_bytes(&to_json(&manifest)?)?, tags(entry)))
}
