//! Reading a checkpoint archive into a fresh directory, trusting nothing in it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::crypt::{self, ArchiveKey};
use super::manifest::{check_member_path, parse_manifest, HashingReader, MAX_MANIFEST_BYTES};
use super::{ArchiveError, Manifest};
use crate::checkpoint::layout::MANIFEST;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What an import accepts, checked against the manifest before any member is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_total_bytes: u64,
    pub max_member_bytes: u64,
    pub max_members: usize,
}

impl Default for Limits {
    /// Room for a container with a few tens of GiB of memory and state.
    fn default() -> Self {
        Limits {
            max_total_bytes: 64 << 30,
            max_member_bytes: 64 << 30,
            max_members: 100_000,
        }
    }
}

/// What an archive turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A ferry archive, checked member by member against its manifest.
    Ferry(Manifest),
    /// `podman container checkpoint --export`: no manifest, so each entry is checked for its
    /// kind, path and size only, and the whole against the limits and the free space.
    Podman,
}

/// Extracts `archive` (plain, zstd or gzip tar, detected by its magic) into `dest`, which
/// must not exist. A ferry archive (manifest first) has every entry checked against its
/// manifest: a regular file listed there (or one of their parent directories), once, with
/// its size and sha256. Any other archive must be Podman's export (see [`Origin::Podman`]).
/// On any error nothing is left at `dest`: the archive is extracted into a temporary sibling
/// that is renamed only at the end.
pub fn import(archive: &Path, dest: &Path, limits: &Limits) -> Result<Origin, ArchiveError> {
    import_sealed(archive, dest, limits, None)
}

/// [`import`] of an archive that may be encrypted (see [`super::crypt`]): an encrypted one
/// needs `key`, and a key is refused for one that is not (it was expected to be).
pub fn import_sealed(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    key: Option<&ArchiveKey>,
) -> Result<Origin, ArchiveError> {
    match std::fs::symlink_metadata(dest) {
        Ok(_) => {
            return Err(ArchiveError::DestinationExists {
                path: dest.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io(dest, e)),
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".ferry-import-")
        .permissions(std::fs::Permissions::from_mode(
            crate::fsutil::MODE_PRIVATE_DIR,
        ))
        .tempdir_in(parent)
        .map_err(|e| ArchiveError::io(parent, e))?;

    let origin = if starts_with_manifest(archive, key)? {
        Origin::Ferry(extract(open(archive, key)?, staging.path(), limits)?)
    } else {
        super::foreign::extract(open(archive, key)?, staging.path(), limits)?;
        Origin::Podman
    };

    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dest) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(ArchiveError::io(dest, e));
    }
    Ok(origin)
}

/// The archive's tar stream: decrypted with `key` if it is encrypted, and decompressed by
/// what its first bytes say.
pub(super) fn open(
    archive: &Path,
    key: Option<&ArchiveKey>,
) -> Result<Box<dyn Read>, ArchiveError> {
    let file = std::fs::File::open(archive).map_err(|e| ArchiveError::io(archive, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader
        .fill_buf()
        .map_err(|e| ArchiveError::io(archive, e))?;
    let sealed = head.starts_with(crypt::MAGIC);
    match (sealed, key) {
        (true, None) => Err(ArchiveError::Encrypted {
            path: archive.to_owned(),
        }),
        (false, Some(_)) => Err(ArchiveError::NotEncrypted {
            path: archive.to_owned(),
        }),
        (true, Some(key)) => {
            let plain = crypt::DecryptReader::new(reader, key)
                .map_err(|e| read_error(&e, "opening the encrypted archive"))?;
            decompress(BufReader::with_capacity(1 << 20, plain), archive)
        }
        (false, None) => decompress(reader, archive),
    }
}

fn decompress<R: BufRead + 'static>(
    mut reader: R,
    archive: &Path,
) -> Result<Box<dyn Read>, ArchiveError> {
    let head = reader
        .fill_buf()
        .map_err(|e| read_error(&e, "reading the archive"))?;
    Ok(if head.is_empty() {
        return Err(ArchiveError::Truncated {
            detail: "the file is empty".into(),
        });
    } else if head.starts_with(&ZSTD_MAGIC) {
        Box::new(zstd::Decoder::with_buffer(reader).map_err(|e| ArchiveError::io(archive, e))?)
    } else if head.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::bufread::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Whether the first tar entry is ferry's manifest (any read error says "no" here; the
/// extraction that follows reports it properly).
fn starts_with_manifest(archive: &Path, key: Option<&ArchiveKey>) -> Result<bool, ArchiveError> {
    let mut tar = tar::Archive::new(open(archive, key)?);
    let first = tar.entries().ok().and_then(|mut e| e.next());
    Ok(match first {
        Some(Ok(entry)) => entry_name(&entry).is_ok_and(|n| n == MANIFEST),
        _ => true,
    })
}

fn extract<R: Read>(reader: R, root: &Path, limits: &Limits) -> Result<Manifest, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive
        .entries()
        .map_err(|e| read_error(&e, "reading the archive"))?;

    let manifest = {
        let mut first = match entries.next() {
            None => {
                return Err(ArchiveError::Truncated {
                    detail: "it holds no entries".into(),
                })
            }
            Some(e) => e.map_err(|e| read_error(&e, "reading the first entry"))?,
        };
        let name = entry_name(&first)?;
        if name != MANIFEST || first.header().entry_type() != tar::EntryType::Regular {
            return Err(ArchiveError::entry(
                &name,
                "comes first, but a ferry checkpoint archive starts with manifest.json",
            ));
        }
        if first.size() > MAX_MANIFEST_BYTES {
            return Err(ArchiveError::Manifest {
                problem: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let mut bytes = Vec::new();
        first
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(&e, "reading manifest.json"))?;
        if bytes.len() as u64 != first.size() {
            return Err(ArchiveError::Truncated {
                detail: "manifest.json is cut short".into(),
            });
        }
        let manifest = parse_manifest(&bytes)?;
        check_limits(&manifest, limits)?;
        check_free_space(&manifest, root)?;
        write_file(root, MANIFEST, &bytes)?;
        manifest
    };

    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(&e, "reading an entry header"))?;
        let name = entry_name(&entry)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                let dir = name.trim_end_matches('/');
                if !manifest.has_directory(dir) {
                    return Err(ArchiveError::entry(&name, "is not listed in the manifest"));
                }
                let path = root.join(dir);
                crate::fsutil::create_private_dir_all(&path)
                    .map_err(|e| ArchiveError::io(&path, e))?;
            }
            tar::EntryType::Regular => {
                if name == MANIFEST || !seen.insert(name.clone()) {
                    return Err(ArchiveError::entry(&name, "appears twice"));
                }
                let Some(member) = manifest.members.get(&name) else {
                    return Err(ArchiveError::entry(&name, "is not listed in the manifest"));
                };
                if entry.size() != member.size {
                    return Err(ArchiveError::member(
                        &name,
                        format!(
                            "size {} in the archive differs from the manifest's {}",
                            entry.size(),
                            member.size
                        ),
                    ));
                }
                let mode = owner_mode(entry.header());
                let path = root.join(&name);
                let mut out = create_member(&path)?;
                let mut reader = HashingReader::new(&mut entry);
                let copied = std::io::copy(&mut reader, &mut out);
                if let Err(e) = copied {
                    // Reading the archive or writing the file; only the latter names the file.
                    if reader.count < member.size && e.kind() != std::io::ErrorKind::StorageFull {
                        return Err(read_error(&e, &format!("member {name}")));
                    }
                    return Err(ArchiveError::io(&path, e));
                }
                if reader.count != member.size {
                    return Err(ArchiveError::Truncated {
                        detail: format!(
                            "member {name} ends after {} of {} bytes",
                            reader.count, member.size
                        ),
                    });
                }
                if reader.hex_digest() != member.sha256 {
                    return Err(ArchiveError::member(&name, "sha256 mismatch"));
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| ArchiveError::io(&path, e))?;
            }
            other => return Err(refused_kind(&name, other)),
        }
    }

    if let Some(missing) = manifest.members.keys().find(|m| !seen.contains(*m)) {
        return Err(ArchiveError::Truncated {
            detail: format!("member {missing} is missing"),
        });
    }
    Ok(manifest)
}

/// The entry's path, checked to stay inside the archive root; a leading "./" is allowed.
pub(super) fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ArchiveError> {
    let raw = entry.path_bytes();
    let name = String::from_utf8_lossy(&raw).into_owned();
    if std::str::from_utf8(&raw).is_err() {
        return Err(ArchiveError::entry(&name, "has a non-UTF-8 name"));
    }
    let trimmed = name.strip_prefix("./").unwrap_or(&name);
    let check = trimmed.trim_end_matches('/');
    if let Err(problem) = check_member_path(check) {
        if check != MANIFEST {
            return Err(ArchiveError::entry(&name, problem));
        }
    }
    Ok(trimmed.to_owned())
}

fn check_limits(manifest: &Manifest, limits: &Limits) -> Result<(), ArchiveError> {
    if manifest.members.len() > limits.max_members {
        return Err(ArchiveError::OverLimit {
            detail: format!(
                "{} members, at most {} allowed",
                manifest.members.len(),
                limits.max_members
            ),
        });
    }
    let mut total: u64 = 0;
    for (name, m) in &manifest.members {
        if m.size > limits.max_member_bytes {
            return Err(ArchiveError::OverLimit {
                detail: format!(
                    "member {name} has {} bytes, at most {} allowed",
                    m.size, limits.max_member_bytes
                ),
            });
        }
        total = total.saturating_add(m.size);
    }
    if total > limits.max_total_bytes {
        return Err(ArchiveError::OverLimit {
            detail: format!(
                "{total} bytes in all, at most {} allowed",
                limits.max_total_bytes
            ),
        });
    }
    Ok(())
}

/// The manifest says how much the archive expands to: refuse, before writing any of it, an
/// archive that would not fit (a small zstd archive can declare many GiB of zeros).
fn check_free_space(manifest: &Manifest, root: &Path) -> Result<(), ArchiveError> {
    let total: u64 = manifest
        .members
        .values()
        .fold(0u64, |t, m| t.saturating_add(m.size));
    let free = crate::fsutil::free_bytes(root).map_err(|e| ArchiveError::io(root, e))?;
    let room = free.saturating_sub(crate::fsutil::FREE_SPACE_RESERVE);
    if total > room {
        return Err(ArchiveError::OverLimit {
            detail: format!(
                "it expands to {total} bytes, and {} has {free} bytes free (keeping {} in reserve)",
                root.display(),
                crate::fsutil::FREE_SPACE_RESERVE
            ),
        });
    }
    Ok(())
}

fn write_file(root: &Path, name: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    use std::io::Write;
    let path: PathBuf = root.join(name);
    create_member(&path)?
        .write_all(bytes)
        .map_err(|e| ArchiveError::io(&path, e))
}

/// A new file for a member (and its parent dirs), private whatever the archive says: a
/// checkpoint holds a whole memory.
pub(super) fn create_member(path: &Path) -> Result<std::fs::File, ArchiveError> {
    if let Some(dir) = path.parent() {
        crate::fsutil::create_private_dir_all(dir).map_err(|e| ArchiveError::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::fsutil::MODE_PRIVATE)
        .open(path)
        .map_err(|e| ArchiveError::io(path, e))
}

/// The archived mode of a member, owner's bits only (see [`create_member`]).
pub(super) fn owner_mode(header: &tar::Header) -> u32 {
    header.mode().unwrap_or(0o600) & 0o700
}

pub(super) fn read_error(e: &std::io::Error, context: &str) -> ArchiveError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ArchiveError::Truncated {
            detail: format!("{context}: {e}"),
        }
    } else {
        ArchiveError::Corrupt {
            detail: format!("{context}: {e}"),
        }
    }
}

/// An entry of a kind no checkpoint holds (a link, a device, a FIFO...).
pub(super) fn refused_kind(name: &str, kind: tar::EntryType) -> ArchiveError {
    ArchiveError::entry(
        name,
        format!(
            "is a {}, which checkpoint archives may not contain",
            describe(kind)
        ),
    )
}

fn describe(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "FIFO",
        _ => "special entry",
    }
}
