//! The store itself: blobs, unpacked layers, the image index, and the staging/commit protocol
//! that keeps every change atomic.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::digest::{Digest, HashingWriter};
use super::guard::ImportGuard;
use super::layer::unpack_layer;
use super::oci::{self, ConfigFile, Manifest};
use super::{io_err, normalize_name, Image, ImageError, RunConfig};
use crate::fsutil::{self, ScratchDir, MODE_PRIVATE};
use crate::paths::HostPaths;

/// Manifests, configs and indexes are small; refuse to slurp anything bigger.
pub(crate) const MAX_JSON: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct IndexFile {
    images: Vec<Image>,
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneStats {
    pub blobs: usize,
    pub layers: usize,
}

/// A private scratch directory for one operation; removed on drop, so an error anywhere
/// leaves nothing behind.
pub(crate) struct Staging {
    dir: ScratchDir,
    store_blobs: PathBuf,
    /// The bounds of the import this staging serves (none for a peer's blobs).
    pub(crate) guard: ImportGuard,
}

impl Staging {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir().join("blobs").join(d.hex())
    }

    fn layer_path(&self, d: &Digest) -> PathBuf {
        self.dir().join("layers").join(d.hex())
    }

    /// The blob, staged here or already in the store.
    pub(crate) fn find_blob(&self, d: &Digest) -> Option<PathBuf> {
        let staged = self.blob_path(d);
        if staged.exists() {
            return Some(staged);
        }
        let stored = self.store_blobs.join(d.hex());
        stored.exists().then_some(stored)
    }

    /// Streams `r` into a staged blob, verifying `expected` when given.
    pub(crate) fn stage(
        &self,
        expected: Option<&Digest>,
        what: &str,
        r: impl Read,
    ) -> Result<(Digest, u64), ImageError> {
        write_verified(
            &self.dir().join("tmp"),
            &self.dir().join("blobs"),
            expected,
            what,
            self.guard.timed(r),
        )
    }

    pub(crate) fn stage_bytes(&self, bytes: &[u8]) -> Result<Digest, ImageError> {
        let d = Digest::of(bytes);
        let p = self.blob_path(&d);
        fs::write(&p, bytes).map_err(io_err(&p))?;
        Ok(d)
    }

    pub(crate) fn read_json_blob(&self, d: &Digest, what: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.find_blob(d).ok_or_else(|| ImageError::Corrupt {
            what: what.to_owned(),
            why: format!("blob {d} is missing"),
        })?;
        read_small(&path, what)
    }
}

pub(crate) fn read_small(path: &Path, what: &str) -> Result<Vec<u8>, ImageError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(ImageError::Corrupt {
            what: what.to_owned(),
            why: format!("larger than {MAX_JSON} bytes"),
        });
    }
    Ok(buf)
}

/// Writes `r` to a temp file in `tmp_dir` while hashing it, then renames it to
/// `final_dir/<hex>`. A mismatch with `expected` deletes the temp file.
fn write_verified(
    tmp_dir: &Path,
    final_dir: &Path,
    expected: Option<&Digest>,
    what: &str,
    mut r: impl Read,
) -> Result<(Digest, u64), ImageError> {
    fs::create_dir_all(tmp_dir).map_err(io_err(tmp_dir))?;
    fs::create_dir_all(final_dir).map_err(io_err(final_dir))?;
    let tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_err(tmp_dir))?;
    let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(256 * 1024, tmp));
    std::io::copy(&mut r, &mut w).map_err(|e| ImageError::Corrupt {
        what: what.to_owned(),
        why: format!("reading failed: {e}"),
    })?;
    let (buf, actual, n) = w.finish();
    let tmp = buf
        .into_inner()
        .map_err(|e| io_err(tmp_dir)(e.into_error()))?;
    if let Some(expected) = expected {
        if &actual != expected {
            return Err(ImageError::DigestMismatch {
                what: what.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    tmp.as_file().sync_data().map_err(io_err(tmp.path()))?;
    let dest = final_dir.join(actual.hex());
    tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
    Ok((actual, n))
}

impl ImageStore {
    pub fn open(paths: &HostPaths) -> Result<Self, ImageError> {
        let store = ImageStore {
            root: paths.images(),
        };
        for d in [store.blobs_dir(), store.layers_dir(), store.tmp_dir()] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        // Leftovers of an import or unpack that crashed midway.
        let _lock = store.lock()?;
        let tmp = store.tmp_dir();
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let p = e.map_err(io_err(&tmp))?.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_err(&p))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn layer_path(&self, d: &Digest) -> PathBuf {
        self.layers_dir().join(d.hex())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// Exclusive writer lock, across threads and processes (flock on separate opens).
    pub(crate) fn lock(&self) -> Result<Flock<File>, ImageError> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io_err(&p)(e.into()))
    }

    pub(crate) fn new_staging(&self) -> Result<Staging, ImageError> {
        let tmp = self.tmp_dir();
        let dir = ScratchDir::new_in(&tmp, "stage-").map_err(io_err(&tmp))?;
        for d in ["blobs", "layers", "tmp"].map(|sub| dir.path().join(sub)) {
            fs::create_dir(&d).map_err(io_err(&d))?;
        }
        Ok(Staging {
            dir,
            store_blobs: self.blobs_dir(),
            guard: ImportGuard::none(),
        })
    }

    fn read_index(&self) -> Result<Vec<Image>, ImageError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice::<IndexFile>(&bytes)
                .map(|f| f.images)
                .map_err(|e| ImageError::Corrupt {
                    what: p.display().to_string(),
                    why: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    fn write_index(&self, images: Vec<Image>) -> Result<(), ImageError> {
        // Private, as it has always been (a tempfile's mode), though nothing in it is secret.
        let p = self.index_path();
        fsutil::write_json(&p, &IndexFile { images }, MODE_PRIVATE).map_err(io_err(&p))
    }

    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.read_index()
    }

    /// By name[:tag], full digest `sha256:…`, or a unique hex prefix of at least 12 digits
    /// (with or without `sha256:`).
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let images = self.read_index()?;
        find(&images, reference).map(|i| images[i].clone())
    }

    /// Removes the image (all its names) and the blobs and layers no other image uses. The
    /// caller checks that no container uses it.
    pub fn remove(&self, reference: &str) -> Result<Image, ImageError> {
        let _lock = self.lock()?;
        let mut images = self.read_index()?;
        let i = find(&images, reference)?;
        let gone = images.remove(i);
        self.write_index(images.clone())?;
        let (blobs, layers) = referenced(&images);
        for (d, _) in self.blobs_of(&gone) {
            if !blobs.contains(&d) {
                remove_path(&self.blob_path(&d))?;
            }
        }
        for d in &gone.layers {
            if !layers.contains(d) {
                remove_path(&self.layer_path(d))?;
            }
        }
        Ok(gone)
    }

    /// Gives the image `reference` resolves to the name `name` too (taken from any other
    /// image that had it).
    pub fn tag(&self, reference: &str, name: &str) -> Result<Image, ImageError> {
        let name = normalize_name(name)?;
        let _lock = self.lock()?;
        let mut images = self.read_index()?;
        let i = find(&images, reference)?;
        for (j, other) in images.iter_mut().enumerate() {
            if j != i {
                other.names.retain(|n| n != &name);
            }
        }
        if !images[i].names.contains(&name) {
            images[i].names.push(name);
        }
        let tagged = images[i].clone();
        self.write_index(images)?;
        Ok(tagged)
    }

    /// Records where in a registry the image with id `digest` lives (after a push).
    pub fn set_source(
        &self,
        digest: &Digest,
        source: super::RegistrySource,
    ) -> Result<Image, ImageError> {
        let _lock = self.lock()?;
        let mut images = self.read_index()?;
        let img = images
            .iter_mut()
            .find(|i| &i.digest == digest)
            .ok_or_else(|| ImageError::NotFound(digest.to_string()))?;
        img.source = Some(source);
        let out = img.clone();
        self.write_index(images)?;
        Ok(out)
    }

    /// Removes every blob and unpacked layer no image references (e.g. left by an aborted
    /// migration). Do not run it while blobs for a pending `register` are being received.
    pub fn prune(&self) -> Result<PruneStats, ImageError> {
        let _lock = self.lock()?;
        let images = self.read_index()?;
        let (blobs, layers) = referenced(&images);
        let mut stats = PruneStats::default();
        for (dir, keep, count) in [
            (self.blobs_dir(), &blobs, &mut stats.blobs),
            (self.layers_dir(), &layers, &mut stats.layers),
        ] {
            for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let p = e.map_err(io_err(&dir))?.path();
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                let known = Digest::parse(&format!("sha256:{name}"))
                    .map(|d| keep.contains(&d))
                    .unwrap_or(false);
                if !known {
                    remove_path(&p)?;
                    *count += 1;
                }
            }
        }
        Ok(stats)
    }

    /// The unpacked layer directories, lowest layer first (overlayfs wants them reversed).
    /// Layers missing on disk are unpacked from their blobs.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        if image.layers.len() != image.diff_ids.len() {
            return Err(ImageError::Corrupt {
                what: format!("image {}", image.digest),
                why: "layer and diff_id counts differ".into(),
            });
        }
        let mut out = Vec::with_capacity(image.layers.len());
        for (layer, diff_id) in image.layers.iter().zip(&image.diff_ids) {
            let dir = self.layer_path(layer);
            if !dir.is_dir() {
                let _lock = self.lock()?;
                if !dir.is_dir() {
                    let staging = self.new_staging()?;
                    let blob = self.blob_path(layer);
                    if !blob.exists() {
                        return Err(ImageError::Corrupt {
                            what: format!("image {}", image.digest),
                            why: format!("layer blob {layer} is missing"),
                        });
                    }
                    let tmp = staging.layer_path(layer);
                    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
                    unpack_layer(&blob, layer, diff_id, &tmp, &staging.guard)?;
                    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
                }
            }
            out.push(dir);
        }
        Ok(out)
    }

    /// Manifest, config and layer blobs with their sizes: what a peer needs to rebuild the image.
    pub fn blobs_of(&self, image: &Image) -> Vec<(Digest, u64)> {
        std::iter::once(&image.digest)
            .chain(std::iter::once(&image.config_digest))
            .chain(image.layers.iter())
            .map(|d| {
                let size = fs::metadata(self.blob_path(d))
                    .map(|m| m.len())
                    .unwrap_or(0);
                (d.clone(), size)
            })
            .collect()
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, ImageError> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::NotFound(format!("blob {d}"))
            } else {
                io_err(&p)(e)
            }
        })
    }

    /// Streams a blob into the store, verifying its sha256; nothing is stored on mismatch.
    /// Returns its size.
    pub fn write_blob(&self, expected: &Digest, r: impl Read) -> Result<u64, ImageError> {
        let (_, n) = write_verified(
            &self.tmp_dir(),
            &self.blobs_dir(),
            Some(expected),
            &format!("blob {expected}"),
            r,
        )?;
        Ok(n)
    }

    /// Records an image whose blobs are all in the store already (sent by a peer): parses and
    /// checks manifest and config, unpacks its layers, and gives it `names`.
    pub fn register(&self, manifest: &Digest, names: &[String]) -> Result<Image, ImageError> {
        let names = names
            .iter()
            .map(|n| normalize_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let _lock = self.lock()?;
        let staging = self.new_staging()?;
        let image = self.prepare(&staging, manifest)?;
        self.commit(&staging, image, &names)
    }

    /// Parses and verifies an image whose blobs are staged or stored, and unpacks into the
    /// staging area every layer the store does not have yet. Changes nothing in the store.
    pub(crate) fn prepare(
        &self,
        staging: &Staging,
        manifest: &Digest,
    ) -> Result<Image, ImageError> {
        let what = format!("manifest {manifest}");
        let bytes = staging.read_json_blob(manifest, &what)?;
        let actual = Digest::of(&bytes);
        if &actual != manifest {
            return Err(ImageError::DigestMismatch {
                what,
                expected: manifest.clone(),
                actual,
            });
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
            what: what.clone(),
            why: e.to_string(),
        })?;
        if let Some(mt) = &m.media_type {
            if !oci::is_manifest_type(mt) {
                return Err(ImageError::UnsupportedMediaType {
                    what,
                    media_type: mt.clone(),
                });
            }
        }
        if !oci::is_config_type(&m.config.media_type) {
            return Err(ImageError::UnsupportedMediaType {
                what: format!("config of {what}"),
                media_type: m.config.media_type,
            });
        }
        let config_digest = parse_digest(&m.config.digest, &what)?;
        let cwhat = format!("config {config_digest}");
        let cbytes = staging.read_json_blob(&config_digest, &cwhat)?;
        let actual = Digest::of(&cbytes);
        if actual != config_digest {
            return Err(ImageError::DigestMismatch {
                what: cwhat,
                expected: config_digest,
                actual,
            });
        }
        let config: ConfigFile =
            serde_json::from_slice(&cbytes).map_err(|e| ImageError::Corrupt {
                what: cwhat.clone(),
                why: e.to_string(),
            })?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(ImageError::Corrupt {
                what: cwhat,
                why: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    m.layers.len()
                ),
            });
        }
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut size = bytes.len() as u64 + cbytes.len() as u64;
        for (desc, diff) in m.layers.iter().zip(&config.rootfs.diff_ids) {
            if !oci::is_layer_type(&desc.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!("layer {} of {what}", desc.digest),
                    media_type: desc.media_type.clone(),
                });
            }
            let layer = parse_digest(&desc.digest, &what)?;
            let diff_id = parse_digest(diff, &cwhat)?;
            let blob = staging
                .find_blob(&layer)
                .ok_or_else(|| ImageError::Corrupt {
                    what: what.clone(),
                    why: format!("layer blob {layer} is missing"),
                })?;
            size += fs::metadata(&blob).map_err(io_err(&blob))?.len();
            let staged_dir = staging.layer_path(&layer);
            if !self.layer_path(&layer).is_dir() && !staged_dir.exists() {
                fs::create_dir(&staged_dir).map_err(io_err(&staged_dir))?;
                unpack_layer(&blob, &layer, &diff_id, &staged_dir, &staging.guard)?;
            }
            layers.push(layer);
            diff_ids.push(diff_id);
        }
        let cc = config.config.unwrap_or_default();
        Ok(Image {
            digest: manifest.clone(),
            names: Vec::new(),
            config_digest,
            layers,
            diff_ids,
            size,
            created: config.created,
            config: RunConfig {
                env: cc.env.unwrap_or_default(),
                entrypoint: cc.entrypoint.unwrap_or_default(),
                cmd: cc.cmd.unwrap_or_default(),
                working_dir: cc.working_dir.unwrap_or_default(),
                user: cc.user.unwrap_or_default(),
            },
            source: None,
        })
    }

    /// Moves staged blobs and layers into the store and records the image under `names`
    /// (taking those names from other images). Caller holds the lock.
    pub(crate) fn commit(
        &self,
        staging: &Staging,
        mut image: Image,
        names: &[String],
    ) -> Result<Image, ImageError> {
        for d in std::iter::once(&image.digest)
            .chain(std::iter::once(&image.config_digest))
            .chain(image.layers.iter())
        {
            let dest = self.blob_path(d);
            let staged = staging.blob_path(d);
            if !dest.exists() {
                fs::rename(&staged, &dest).map_err(io_err(&dest))?;
            }
        }
        for d in &image.layers {
            let dest = self.layer_path(d);
            let staged = staging.layer_path(d);
            if !dest.exists() && staged.exists() {
                fs::rename(&staged, &dest).map_err(io_err(&dest))?;
            }
        }
        let mut images = self.read_index()?;
        for other in images.iter_mut() {
            if other.digest != image.digest {
                other.names.retain(|n| !names.contains(n));
            }
        }
        let result = match images.iter_mut().find(|i| i.digest == image.digest) {
            Some(existing) => {
                for n in names {
                    if !existing.names.contains(n) {
                        existing.names.push(n.clone());
                    }
                }
                if image.source.is_some() {
                    existing.source = image.source.clone();
                }
                existing.clone()
            }
            None => {
                image.names = names.to_vec();
                images.push(image.clone());
                image
            }
        };
        self.write_index(images)?;
        Ok(result)
    }
}

pub(crate) fn parse_digest(s: &str, what: &str) -> Result<Digest, ImageError> {
    Digest::parse(s).map_err(|e| ImageError::Corrupt {
        what: what.to_owned(),
        why: e.to_string(),
    })
}

fn referenced(images: &[Image]) -> (HashSet<Digest>, HashSet<Digest>) {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for i in images {
        blobs.insert(i.digest.clone());
        blobs.insert(i.config_digest.clone());
        blobs.extend(i.layers.iter().cloned());
        layers.extend(i.layers.iter().cloned());
    }
    (blobs, layers)
}

fn remove_path(p: &Path) -> Result<(), ImageError> {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(io_err(p))
}

fn find(images: &[Image], reference: &str) -> Result<usize, ImageError> {
    let not_found = || ImageError::NotFound(reference.to_owned());
    if let Ok(d) = Digest::parse(reference) {
        return images
            .iter()
            .position(|i| i.digest == d)
            .ok_or_else(not_found);
    }
    if let Ok(name) = normalize_name(reference) {
        if let Some(i) = images.iter().position(|i| i.names.contains(&name)) {
            return Ok(i);
        }
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_lowercase();
        let hits: Vec<usize> = (0..images.len())
            .filter(|i| images[*i].digest.hex().starts_with(&hex))
            .collect();
        return match hits.len() {
            0 => Err(not_found()),
            1 => Ok(hits[0]),
            _ => Err(ImageError::Ambiguous {
                reference: reference.to_owned(),
                candidates: hits.iter().map(|i| images[*i].digest.to_string()).collect(),
            }),
        };
    }
    Err(not_found())
}
