//! `manifest.json`: what a checkpoint directory holds, with sizes and sha256 digests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ArchiveError, FORMAT, OLDEST_MAJOR, VERSION};
use crate::checkpoint::layout::MANIFEST;

/// Above this, a manifest is not a manifest.
pub(super) const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The checkpoint archive's `manifest.json`.
///
/// **Persisted format: changing this needs a version bump** ([`super::VERSION`]) by the
/// versioning rule in the `ferry_proto` crate docs: a new optional field with a serde default
/// is a minor bump; anything an older ferry would misread (a new required field, a renamed or
/// retyped one, a new meaning) is a major bump, and [`super::OLDEST_MAJOR`] says what is still
/// read. The same holds for [`Member`] and for the layout the manifest lists
/// (`crate::checkpoint::layout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// "MAJOR.MINOR".
    pub version: String,
    /// RFC 3339.
    pub created: String,
    pub container: String,
    pub ferry_version: String,
    /// Relative path ("/"-separated) → size and digest, for every regular file but the manifest.
    pub members: BTreeMap<String, Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

impl Manifest {
    /// Refuses anything but a ferry checkpoint of a format this ferry reads.
    pub fn check_format(&self) -> Result<(), ArchiveError> {
        if self.format != FORMAT {
            return Err(ArchiveError::UnknownFormat {
                found: self.format.clone(),
            });
        }
        let major = self.major()?;
        if !(OLDEST_MAJOR..=VERSION.0).contains(&major) {
            return Err(ArchiveError::UnsupportedVersion {
                found: self.version.clone(),
                newer: major > VERSION.0,
            });
        }
        for (name, member) in &self.members {
            check_member_path(name).map_err(|p| ArchiveError::member(name, p))?;
            if member.sha256.len() != 64 || !member.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ArchiveError::member(
                    name,
                    "manifest digest is not a sha256",
                ));
            }
        }
        Ok(())
    }

    /// The format's major version.
    pub fn major(&self) -> Result<u32, ArchiveError> {
        self.version
            .split_once('.')
            .and_then(|(major, minor)| {
                minor.parse::<u32>().ok()?;
                major.parse::<u32>().ok()
            })
            .ok_or_else(|| ArchiveError::Manifest {
                problem: format!("version {:?} is not MAJOR.MINOR", self.version),
            })
    }

    /// True if `dir` ("/"-separated, relative) is a parent directory of some member.
    pub(super) fn has_directory(&self, dir: &str) -> bool {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.members.keys().any(|m| m.starts_with(&prefix))
    }
}

/// A safe relative member path: no absolute paths, no "." or ".." or empty components.
pub(super) fn check_member_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("is an absolute path".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("escapes the archive root".into());
    }
    if path.split('/').any(|c| c.is_empty() || c == ".") {
        return Err("has an empty or \".\" path component".into());
    }
    if path == MANIFEST {
        return Err("the manifest cannot list itself".into());
    }
    Ok(())
}

/// Checksums every regular file in `dir` (except `manifest.json`) and writes the manifest.
/// Refuses symlinks, devices, sockets and FIFOs: a checkpoint is plain files.
pub fn write_manifest(dir: &Path, container: &str) -> Result<Manifest, ArchiveError> {
    let mut members = BTreeMap::new();
    for (rel, path) in regular_files(dir)? {
        if rel == MANIFEST {
            continue;
        }
        let (sha256, size) = hash_file(&path)?;
        members.insert(rel, Member { sha256, size });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        version: format!("{}.{}", VERSION.0, VERSION.1),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        container: container.to_owned(),
        ferry_version: env!("CARGO_PKG_VERSION").to_owned(),
        members,
    };
    let path = dir.join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Manifest {
        problem: e.to_string(),
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ArchiveError::io(dir, e))?;
    tmp.write_all(&json)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| ArchiveError::io(tmp.path(), e))?;
    tmp.persist(&path)
        .map_err(|e| ArchiveError::io(&path, e.error))?;
    Ok(manifest)
}

/// Reads and format-checks `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ArchiveError> {
    let path = dir.join(MANIFEST);
    let file = std::fs::File::open(&path).map_err(|e| ArchiveError::io(&path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ArchiveError::io(&path, e))?;
    parse_manifest(&bytes)
}

pub(super) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ArchiveError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ArchiveError::Manifest {
            problem: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| ArchiveError::Manifest {
        problem: e.to_string(),
    })?;
    manifest.check_format()?;
    Ok(manifest)
}

/// Checks that `dir` holds exactly the manifest's members, each with its size and digest.
pub fn verify_dir(dir: &Path) -> Result<Manifest, ArchiveError> {
    let manifest = read_manifest(dir)?;
    for (rel, _) in regular_files(dir)? {
        if rel != MANIFEST && !manifest.members.contains_key(&rel) {
            return Err(ArchiveError::Unlisted { path: rel });
        }
    }
    for (name, member) in &manifest.members {
        let path = dir.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArchiveError::member(name, "missing"));
            }
            Err(e) => return Err(ArchiveError::io(&path, e)),
        };
        if !meta.is_file() {
            return Err(ArchiveError::member(name, "is not a regular file"));
        }
        if meta.len() != member.size {
            return Err(ArchiveError::member(
                name,
                format!(
                    "size {} differs from the manifest's {}",
                    meta.len(),
                    member.size
                ),
            ));
        }
        let (sha256, _) = hash_file(&path)?;
        if sha256 != member.sha256 {
            return Err(ArchiveError::member(name, "sha256 mismatch"));
        }
    }
    Ok(manifest)
}

/// Every regular file under `dir` as ("/"-separated relative path, full path), sorted.
fn regular_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, ArchiveError> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_owned();
            ArchiveError::io(path, e.into())
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        if !ft.is_file() {
            return Err(ArchiveError::NotAllowed {
                path: entry.path().to_owned(),
                kind: kind_of(&ft),
            });
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("walkdir yields paths under its root");
        let rel = rel
            .to_str()
            .ok_or_else(|| ArchiveError::NotAllowed {
                path: entry.path().to_owned(),
                kind: "file with a non-UTF-8 name",
            })?
            .to_owned();
        out.push((rel, entry.path().to_owned()));
    }
    Ok(out)
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// (lowercase hex sha256, size).
pub(super) fn hash_file(path: &Path) -> Result<(String, u64), ArchiveError> {
    let mut file = std::fs::File::open(path).map_err(|e| ArchiveError::io(path, e))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(|e| ArchiveError::io(path, e))?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Hashes and counts what passes through.
pub(super) struct HashingReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub count: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn hex_digest(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
