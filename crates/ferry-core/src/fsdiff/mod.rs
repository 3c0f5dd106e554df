//! A container's filesystem changes (its overlay upper dir) and its volumes as tar streams.
//!
//! Checkpoint export writes them Podman-style (`rootfs-diff.tar` + `deleted.files`); migration
//! sends a full pass while the container runs, then a delta after the freeze. Whiteouts and
//! opaque directories travel in the [`DiffSummary`], not in the tar, and are recreated on the
//! other side. Extraction goes through the same safe extractor as image layers.

mod walk;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::extract::{self, ExtractError, Extractor, Whiteouts, OPAQUE_XATTR};
use walk::{walk, Walked};

#[derive(Debug, thiserror::Error)]
pub enum FsDiffError {
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the tar stream failed at {path}: {source}")]
    Stream {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FsDiffError + '_ {
    move |source| FsDiffError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// Overlayfs whiteout (char device 0:0).
    Whiteout,
    Char,
    Block,
    Fifo,
    Socket,
}

/// What is remembered of one upper-dir entry to notice a change later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStat {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl EntryStat {
    fn of(meta: &fs::Metadata) -> EntryStat {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_char_device() && meta.rdev() == 0 {
            EntryKind::Whiteout
        } else if ft.is_char_device() {
            EntryKind::Char
        } else if ft.is_block_device() {
            EntryKind::Block
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            EntryKind::Socket
        };
        EntryStat {
            kind,
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// The state of an upper dir as of one export; keys are paths relative to `/` ("/" is the root).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpperSnapshot {
    pub entries: BTreeMap<String, EntryStat>,
}

/// What an export wrote and what the receiver must do besides extracting the tar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Whiteouts (files deleted from lower layers), as paths relative to `/`: Podman's
    /// `deleted.files`. Always the complete current list.
    pub deleted: Vec<String>,
    /// Opaque directories (replaced lower directories). Always the complete current list.
    pub opaque: Vec<String>,
    /// Delta only: paths present in `since` but gone now; the receiver removes them first.
    pub removed: Vec<String>,
    /// Entries written to the tar.
    pub files: u64,
    /// Bytes of regular-file content written to the tar.
    pub bytes: u64,
    pub snapshot: UpperSnapshot,
}

fn key(rel: &Path) -> String {
    format!("/{}", rel.to_string_lossy())
}

fn rel_of(key: &str) -> Result<PathBuf, FsDiffError> {
    Ok(extract::normalize(key.as_bytes())?)
}

/// Counts the bytes that reach the underlying writer.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes filesystem entries into a tar with full metadata (PAX mtime in ns, xattrs) and
/// hardlinks preserved within the stream.
struct TarWriter<W: Write> {
    builder: tar::Builder<Counting<W>>,
    /// (dev, ino) → first path written for files with several links.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
    bytes: u64,
}

enum Written {
    Yes,
    /// The entry disappeared between the walk and the copy (the container is running).
    Vanished,
}

impl<W: Write> TarWriter<W> {
    fn new(out: W) -> Self {
        let mut builder = tar::Builder::new(Counting {
            inner: out,
            count: 0,
        });
        builder.follow_symlinks(false);
        TarWriter {
            builder,
            links: HashMap::new(),
            entries: 0,
            bytes: 0,
        }
    }

    fn finish(self) -> Result<u64, FsDiffError> {
        let mut c = self
            .builder
            .into_inner()
            .map_err(|source| FsDiffError::Stream {
                path: PathBuf::from("(end of archive)"),
                source,
            })?;
        c.flush().map_err(|source| FsDiffError::Stream {
            path: PathBuf::from("(end of archive)"),
            source,
        })?;
        Ok(c.count)
    }

    fn write(&mut self, root: &Path, w: &Walked) -> Result<Written, FsDiffError> {
        let abs = root.join(&w.rel);
        let name: PathBuf = if w.rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            w.rel.clone()
        };
        let meta = &w.meta;
        let stream = |source: io::Error| FsDiffError::Stream {
            path: abs.clone(),
            source,
        };
        let mut h = tar::Header::new_gnu();
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mode(meta.mode() & 0o7777);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);

        let ft = meta.file_type();
        // Hardlinks first: a later path of a multiply-linked inode is only a reference.
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                h.set_entry_type(tar::EntryType::Link);
                let first = first.clone();
                self.builder
                    .append_link(&mut h, &name, &first)
                    .map_err(stream)?;
                self.entries += 1;
                return Ok(Written::Yes);
            }
        }

        let mut pax: Vec<(String, Vec<u8>)> = vec![(
            "mtime".into(),
            extract::format_pax_time(meta.mtime(), meta.mtime_nsec() as u32).into_bytes(),
        )];
        if !ft.is_symlink() {
            match xattr::list(&abs) {
                Ok(names) => {
                    for n in names {
                        let nb = std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str());
                        if nb.starts_with(b"trusted.overlay.") || nb.starts_with(b"user.overlay.") {
                            continue;
                        }
                        if let Ok(Some(v)) = xattr::get(&abs, &n) {
                            pax.push((format!("SCHILY.xattr.{}", n.to_string_lossy()), v));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Written::Vanished),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => return Err(io_err(&abs)(e)),
            }
        }

        if ft.is_file() {
            let f = match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&abs)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Written::Vanished),
                Err(e) => return Err(io_err(&abs)(e)),
            };
            // The size in the header is fixed now; if the file changes while we copy, the
            // content is cut or zero-padded to it (the next delta sends it again).
            let size = f.metadata().map_err(io_err(&abs))?.len();
            self.append_pax(&pax, &abs)?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            let data = f.take(size).chain(io::repeat(0)).take(size);
            self.builder
                .append_data(&mut h, &name, data)
                .map_err(stream)?;
            if meta.nlink() > 1 {
                self.links.insert((meta.dev(), meta.ino()), name.clone());
            }
            self.bytes += size;
        } else if ft.is_dir() {
            self.append_pax(&pax, &abs)?;
            h.set_entry_type(tar::EntryType::Directory);
            self.builder
                .append_data(&mut h, &name, io::empty())
                .map_err(stream)?;
        } else if ft.is_symlink() {
            let target = match fs::read_link(&abs) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Written::Vanished),
                Err(e) => return Err(io_err(&abs)(e)),
            };
            self.append_pax(&pax, &abs)?;
            h.set_entry_type(tar::EntryType::Symlink);
            self.builder
                .append_link(&mut h, &name, &target)
                .map_err(stream)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            self.append_pax(&pax, &abs)?;
            if ft.is_fifo() {
                h.set_entry_type(tar::EntryType::Fifo);
            } else {
                h.set_entry_type(if ft.is_char_device() {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                let rdev = meta.rdev();
                h.set_device_major(nix::sys::stat::major(rdev) as u32)
                    .map_err(stream)?;
                h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
                    .map_err(stream)?;
            }
            self.builder
                .append_data(&mut h, &name, io::empty())
                .map_err(stream)?;
            if meta.nlink() > 1 {
                self.links.insert((meta.dev(), meta.ino()), name.clone());
            }
        } else {
            // Sockets cannot live in a tar; a restored process recreates its own.
            return Ok(Written::Vanished);
        }
        self.entries += 1;
        Ok(Written::Yes)
    }

    fn append_pax(&mut self, pax: &[(String, Vec<u8>)], abs: &Path) -> Result<(), FsDiffError> {
        self.builder
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|source| FsDiffError::Stream {
                path: abs.to_owned(),
                source,
            })
    }
}

fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Writes the upper dir's content (not its whiteouts) as a tar. With `since`, only entries
/// new or changed since that snapshot (size, mtime, ctime, inode, mode, owner), plus their
/// parent directories. The returned summary carries whiteouts, opaque dirs, removals and the
/// new snapshot for the next delta.
pub fn export_upper(
    upper: &Path,
    out: impl Write,
    since: Option<&UpperSnapshot>,
) -> Result<DiffSummary, FsDiffError> {
    let walked = walk(upper)?;
    let mut summary = DiffSummary::default();
    let mut include: BTreeSet<PathBuf> = BTreeSet::new();
    for w in &walked {
        let stat = EntryStat::of(&w.meta);
        let k = key(&w.rel);
        match stat.kind {
            EntryKind::Whiteout => summary.deleted.push(k.clone()),
            EntryKind::Dir if is_opaque(&upper.join(&w.rel)) => summary.opaque.push(k.clone()),
            _ => {}
        }
        let changed = match since {
            None => true,
            Some(s) => s.entries.get(&k) != Some(&stat),
        };
        if changed && stat.kind != EntryKind::Whiteout {
            include.insert(w.rel.clone());
            let mut p = w.rel.parent();
            while let Some(d) = p {
                if !include.insert(d.to_owned()) {
                    break;
                }
                p = d.parent();
            }
        }
        summary.snapshot.entries.insert(k, stat);
    }
    include.insert(PathBuf::new());
    if let Some(s) = since {
        summary.removed = s
            .entries
            .keys()
            .filter(|k| !summary.snapshot.entries.contains_key(*k))
            .cloned()
            .collect();
    }
    let mut tw = TarWriter::new(out);
    for w in walked.iter().filter(|w| include.contains(&w.rel)) {
        if EntryStat::of(&w.meta).kind == EntryKind::Whiteout {
            continue;
        }
        match tw.write(upper, w)? {
            Written::Yes => {}
            Written::Vanished => {
                // Keep its old record: if a previous pass sent it, the next delta lists it
                // as removed; a stale record can only cause an extra resend.
                tracing::debug!(path = %w.rel.display(), "vanished during export");
            }
        }
    }
    summary.files = tw.entries;
    summary.bytes = tw.bytes;
    tw.finish()?;
    Ok(summary)
}

/// Rebuilds or updates a (not mounted) upper dir: removes `summary.removed`, extracts the tar
/// with the safe extractor, recreates whiteouts for `summary.deleted` and marks
/// `summary.opaque` directories.
pub fn apply_to_upper(
    upper: &Path,
    tar: impl Read,
    summary: &DiffSummary,
) -> Result<(), FsDiffError> {
    crate::fsutil::create_dir_with_mode(upper, crate::fsutil::MODE_CONTAINER_DIR)
        .map_err(io_err(upper))?;
    let mut x = Extractor::new(upper, Whiteouts::Literal);
    for r in &summary.removed {
        x.remove(&rel_of(r)?)?;
    }
    x.unpack(tar)?;
    for d in &summary.deleted {
        x.whiteout(&rel_of(d)?)?;
    }
    for o in &summary.opaque {
        x.mark_opaque(&rel_of(o)?)?;
    }
    x.finish()?;
    Ok(())
}

/// Writes a whole directory (a volume) as a tar; returns the bytes written to `out`.
pub fn pack_dir(dir: &Path, out: impl Write) -> Result<u64, FsDiffError> {
    let walked = walk(dir)?;
    let mut tw = TarWriter::new(out);
    for w in &walked {
        tw.write(dir, w)?;
    }
    tw.finish()
}

/// Extracts a tar made by [`pack_dir`] into `dir` (created if missing), safely.
pub fn unpack_dir(tar: impl Read, dir: &Path) -> Result<(), FsDiffError> {
    crate::fsutil::create_dir_with_mode(dir, crate::fsutil::MODE_CONTAINER_DIR)
        .map_err(io_err(dir))?;
    extract::extract(tar, dir, Whiteouts::Literal)?;
    Ok(())
}
