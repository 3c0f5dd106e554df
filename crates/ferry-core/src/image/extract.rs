//! The one safe tar extractor: image layers, container filesystem diffs and volumes all go
//! through it.
//!
//! Entry paths are resolved lexically and never handed to the kernel with `..` in them; every
//! parent on the way to an entry must be a real directory inside the root (never a symlink), so
//! an archive can neither climb out of the root nor write through a link it planted earlier.
//! Symlinks themselves may point anywhere: their targets are resolved inside the container.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tar::EntryType;

/// Overlayfs marks an opaque directory with this xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const XATTR_PAX_PREFIX: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("unsafe archive entry {entry:?}: {why}")]
    Unsafe { entry: String, why: String },
    #[error("corrupt archive at entry {entry:?}: {why}")]
    Corrupt { entry: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How entries named `.wh.*` are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// OCI layer semantics: `.wh.NAME` becomes an overlayfs whiteout (char device 0:0) and
    /// `.wh..wh..opq` marks its directory opaque.
    Overlay,
    /// Names are ordinary files (volumes, container diffs whose whiteouts travel separately).
    Literal,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Metadata applied to directories only after all their children were written, because
/// writing a child changes the directory's mtime (and a read-only mode would be in the way).
struct DirFixup {
    path: PathBuf,
    mode: u32,
    mtime: FileTime,
}

/// Unpacks archives into one root. Call [`Extractor::finish`] at the end to give
/// directories their final modes and mtimes.
pub struct Extractor {
    root: PathBuf,
    whiteouts: Whiteouts,
    dirs: Vec<DirFixup>,
    stats: ExtractStats,
}

/// Splits an archive path into normal components, resolving `.` and `..` lexically.
/// Leading `/` is ignored (archives are relative to the root). Fails when `..` would climb
/// above the root.
pub fn normalize(raw: &[u8]) -> Result<PathBuf, ExtractError> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(ExtractError::Unsafe {
                        entry: String::from_utf8_lossy(raw).into_owned(),
                        why: "path escapes the root with '..'".into(),
                    });
                }
            }
            p => parts.push(p),
        }
    }
    let mut out = PathBuf::new();
    for p in parts {
        out.push(OsStr::from_bytes(p));
    }
    Ok(out)
}

fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Extractor {
    /// `root` must exist and be a directory.
    pub fn new(root: &Path, whiteouts: Whiteouts) -> Self {
        Extractor {
            root: root.to_owned(),
            whiteouts,
            dirs: Vec::new(),
            stats: ExtractStats::default(),
        }
    }

    pub fn stats(&self) -> ExtractStats {
        self.stats
    }

    /// Checks that every parent of `rel` inside the root is a real directory (creating
    /// missing ones with mode 0755 when `create` is set) and returns the absolute path.
    pub fn resolve(&self, rel: &Path, create: bool) -> Result<PathBuf, ExtractError> {
        let mut cur = self.root.clone();
        let comps: Vec<Component> = rel.components().collect();
        let n = comps.len();
        for (i, c) in comps.into_iter().enumerate() {
            let Component::Normal(name) = c else {
                return Err(ExtractError::Unsafe {
                    entry: display(rel),
                    why: "path is not normalized".into(),
                });
            };
            cur.push(name);
            if i + 1 == n {
                break;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ExtractError::Unsafe {
                        entry: display(rel),
                        why: format!(
                            "its parent {} is a symlink (writing through symlinks is refused)",
                            display(cur.strip_prefix(&self.root).unwrap_or(&cur))
                        ),
                    })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ExtractError::Unsafe {
                        entry: display(rel),
                        why: format!(
                            "its parent {} is not a directory",
                            display(cur.strip_prefix(&self.root).unwrap_or(&cur))
                        ),
                    })
                }
                Err(e) if not_found(&e) && create => {
                    fs::create_dir(&cur).map_err(io_err(&cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(&cur))?;
                }
                Err(e) => {
                    return Err(ExtractError::Io {
                        path: cur,
                        source: e,
                    })
                }
            }
        }
        Ok(cur)
    }

    /// Removes whatever is at `path` so a new entry can take its place. A directory stays
    /// when the new entry is a directory too (tar semantics: metadata is updated).
    fn clear(path: &Path, keep_dir: bool) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                if !keep_dir {
                    fs::remove_dir_all(path).map_err(io_err(path))?;
                }
                Ok(())
            }
            Ok(_) => fs::remove_file(path).map_err(io_err(path)),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(ExtractError::Io {
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    /// Removes the entry at `rel` (if any); refuses paths that escape or cross symlinks.
    pub fn remove(&self, rel: &Path) -> Result<(), ExtractError> {
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        match self.resolve(rel, false) {
            Ok(p) => Self::clear(&p, false),
            Err(ExtractError::Io { source, .. }) if not_found(&source) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts an overlayfs whiteout (char device 0:0) at `rel`, replacing what is there.
    pub fn whiteout(&mut self, rel: &Path) -> Result<(), ExtractError> {
        if rel.as_os_str().is_empty() {
            return Err(ExtractError::Unsafe {
                entry: "/".into(),
                why: "cannot white out the root".into(),
            });
        }
        let path = self.resolve(rel, true)?;
        if let Ok(m) = fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_char_device() && std::os::unix::fs::MetadataExt::rdev(&m) == 0 {
                return Ok(());
            }
        }
        Self::clear(&path, false)?;
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| io_err(&path)(io::Error::from(e)))
    }

    /// Marks the directory at `rel` opaque (creating it if missing).
    pub fn mark_opaque(&mut self, rel: &Path) -> Result<(), ExtractError> {
        let path = if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.resolve(rel, true)?
        };
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExtractError::Unsafe {
                    entry: display(rel),
                    why: "opaque marker for something that is not a directory".into(),
                })
            }
            Err(e) if not_found(&e) => {
                fs::create_dir(&path).map_err(io_err(&path))?;
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        xattr::set(&path, OPAQUE_XATTR, b"y").map_err(io_err(&path))
    }

    /// Extracts every entry of `tar`.
    pub fn unpack(&mut self, tar: impl Read) -> Result<ExtractStats, ExtractError> {
        let before = self.stats;
        let mut archive = tar::Archive::new(tar);
        let entries = archive.entries().map_err(|e| ExtractError::Corrupt {
            entry: String::new(),
            why: e.to_string(),
        })?;
        let mut last = String::from("(start of archive)");
        for entry in entries {
            let mut entry = entry.map_err(|e| ExtractError::Corrupt {
                entry: format!("after {last}"),
                why: e.to_string(),
            })?;
            last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.unpack_entry(&mut entry, &last)?;
        }
        Ok(ExtractStats {
            entries: self.stats.entries - before.entries,
            bytes: self.stats.bytes - before.bytes,
        })
    }

    fn unpack_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &str,
    ) -> Result<(), ExtractError> {
        let corrupt = |why: String| ExtractError::Corrupt {
            entry: name.to_owned(),
            why,
        };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName
        ) || matches!(kind, EntryType::GNULongLink)
        {
            return Ok(());
        }
        let rel = normalize(&entry.path_bytes())?;
        let pax = read_pax(entry).map_err(|e| corrupt(format!("bad PAX header: {e}")))?;
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| corrupt(format!("bad mode: {e}")))?
            & 0o7777;
        let uid = match pax.uid {
            Some(u) => u,
            None => header.uid().map_err(|e| corrupt(format!("bad uid: {e}")))?,
        };
        let gid = match pax.gid {
            Some(g) => g,
            None => header.gid().map_err(|e| corrupt(format!("bad gid: {e}")))?,
        };
        let mtime = match pax.mtime {
            Some(t) => t,
            None => FileTime::from_unix_time(
                header
                    .mtime()
                    .map_err(|e| corrupt(format!("bad mtime: {e}")))? as i64,
                0,
            ),
        };
        self.stats.entries += 1;

        // Whiteouts (layers only).
        if self.whiteouts == Whiteouts::Overlay {
            if let Some(file_name) = rel.file_name().map(|f| f.as_bytes()) {
                if file_name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                    let parent = rel.parent().unwrap_or(Path::new(""));
                    if file_name == OPAQUE_MARKER.as_bytes() {
                        return self.mark_opaque(parent);
                    }
                    let target = &file_name[WHITEOUT_PREFIX.len()..];
                    if target.starts_with(WHITEOUT_PREFIX.as_bytes()) || target.is_empty() {
                        // Other aufs metadata (`.wh..wh.plnk` etc.) means nothing to overlayfs.
                        return Ok(());
                    }
                    return self.whiteout(&parent.join(OsStr::from_bytes(target)));
                }
            }
        }

        if rel.as_os_str().is_empty() {
            // The root itself (`./`): only its metadata can be set.
            if kind != EntryType::Directory {
                return Err(ExtractError::Unsafe {
                    entry: name.to_owned(),
                    why: "archive root is not a directory".into(),
                });
            }
            let root = self.root.clone();
            chown(&root, uid, gid)?;
            self.set_xattrs(&root, &pax.xattrs)?;
            self.dirs.push(DirFixup {
                path: root,
                mode,
                mtime,
            });
            return Ok(());
        }

        let path = self.resolve(&rel, true)?;
        match kind {
            EntryType::Directory => {
                Self::clear(&path, true)?;
                if fs::symlink_metadata(&path).is_err() {
                    fs::create_dir(&path).map_err(io_err(&path))?;
                }
                chown(&path, uid, gid)?;
                self.set_xattrs(&path, &pax.xattrs)?;
                self.dirs.push(DirFixup { path, mode, mtime });
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                Self::clear(&path, false)?;
                let size = entry.size();
                let written = write_sparse(entry, &path, size).map_err(|e| match e {
                    WriteErr::Read(e) => corrupt(format!("file data unreadable: {e}")),
                    WriteErr::Write(e) => io_err(&path)(e),
                })?;
                self.stats.bytes += written;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt("symlink without target".into()))?;
                Self::clear(&path, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_err(&path))?;
                chown(&path, uid, gid)?;
                self.set_xattrs(&path, &pax.xattrs)?;
                set_times(&path, mtime)?;
                return Ok(());
            }
            EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| corrupt("hardlink without target".into()))?;
                let target_rel = normalize(&raw).map_err(|_| ExtractError::Unsafe {
                    entry: name.to_owned(),
                    why: format!(
                        "hardlink target {:?} escapes the root",
                        String::from_utf8_lossy(&raw)
                    ),
                })?;
                if target_rel == rel {
                    return Ok(());
                }
                let target =
                    self.resolve(&target_rel, false)
                        .map_err(|e| ExtractError::Unsafe {
                            entry: name.to_owned(),
                            why: format!("hardlink target {}: {e}", display(&target_rel)),
                        })?;
                match fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => {
                        return Err(ExtractError::Unsafe {
                            entry: name.to_owned(),
                            why: format!("hardlink to directory {}", display(&target_rel)),
                        })
                    }
                    Err(_) => {
                        return Err(corrupt(format!(
                            "hardlink target {} is not in the archive before it",
                            display(&target_rel)
                        )))
                    }
                }
                Self::clear(&path, false)?;
                fs::hard_link(&target, &path).map_err(io_err(&path))?;
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                Self::clear(&path, false)?;
                let (flag, dev) = if kind == EntryType::Fifo {
                    (SFlag::S_IFIFO, 0)
                } else {
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                    let flag = if kind == EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (flag, makedev(major.into(), minor.into()))
                };
                mknod(&path, flag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| io_err(&path)(io::Error::from(e)))?;
            }
            other => {
                return Err(corrupt(format!("unsupported entry type {other:?}")));
            }
        }
        // Regular files and device nodes: owner first (chown clears set-id bits), then mode.
        chown(&path, uid, gid)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        self.set_xattrs(&path, &pax.xattrs)?;
        set_times(&path, mtime)
    }

    fn set_xattrs(&self, path: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), ExtractError> {
        for (k, v) in xattrs {
            let kb = k.as_bytes();
            // Overlay's own xattrs would let an archive forge redirects or opaque dirs.
            if kb.starts_with(b"trusted.overlay.") || kb.starts_with(b"user.overlay.") {
                continue;
            }
            if let Err(e) = xattr::set(path, k, v) {
                if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    || e.raw_os_error() == Some(libc::EPERM)
                {
                    tracing::warn!(path = %path.display(), xattr = ?k, "xattr not supported here: {e}");
                    continue;
                }
                return Err(io_err(path)(e));
            }
        }
        Ok(())
    }

    /// Applies the deferred directory modes and mtimes, deepest first.
    pub fn finish(mut self) -> Result<ExtractStats, ExtractError> {
        // Later entries for the same directory win; deeper directories first so setting a
        // child's times does not disturb the parent's afterwards.
        let mut seen: HashMap<PathBuf, usize> = HashMap::new();
        for (i, d) in self.dirs.iter().enumerate() {
            seen.insert(d.path.clone(), i);
        }
        let mut order: Vec<usize> = seen.into_values().collect();
        order.sort_by_key(|i| std::cmp::Reverse(self.dirs[*i].path.components().count()));
        for i in order {
            let d = &self.dirs[i];
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(io_err(&d.path))?;
            set_times(&d.path, d.mtime)?;
        }
        self.dirs.clear();
        Ok(self.stats)
    }
}

/// Extracts a whole archive into `root` (which must exist) and finalizes directory metadata.
pub fn extract(
    tar: impl Read,
    root: &Path,
    whiteouts: Whiteouts,
) -> Result<ExtractStats, ExtractError> {
    let mut x = Extractor::new(root, whiteouts);
    x.unpack(tar)?;
    x.finish()
}

fn chown(path: &Path, uid: u64, gid: u64) -> Result<(), ExtractError> {
    let uid = u32::try_from(uid).map_err(|_| ExtractError::Corrupt {
        entry: display(path),
        why: format!("uid {uid} out of range"),
    })?;
    let gid = u32::try_from(gid).map_err(|_| ExtractError::Corrupt {
        entry: display(path),
        why: format!("gid {gid} out of range"),
    })?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err(path))
}

fn set_times(path: &Path, mtime: FileTime) -> Result<(), ExtractError> {
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(io_err(path))
}

#[derive(Default)]
struct Pax {
    mtime: Option<FileTime>,
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

fn read_pax<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Pax> {
    let mut pax = Pax::default();
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(pax);
    };
    for ext in exts {
        let ext = ext?;
        let key = ext.key_bytes();
        if key == b"mtime" {
            pax.mtime = parse_pax_time(ext.value_bytes());
        } else if key == b"uid" {
            pax.uid = ext.value().ok().and_then(|v| v.parse().ok());
        } else if key == b"gid" {
            pax.gid = ext.value().ok().and_then(|v| v.parse().ok());
        } else if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX.as_bytes()) {
            pax.xattrs.push((
                OsString::from_vec(name.to_vec()),
                ext.value_bytes().to_vec(),
            ));
        }
    }
    Ok(pax)
}

/// PAX times are decimal seconds with an optional fraction: "1700000000.123456789".
fn parse_pax_time(v: &[u8]) -> Option<FileTime> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        nanos = n * 10u32.pow(9 - digits.len() as u32);
    }
    if secs < 0 && nanos > 0 {
        // "-1.5" means 1.5 s before the epoch.
        return Some(FileTime::from_unix_time(secs - 1, 1_000_000_000 - nanos));
    }
    Some(FileTime::from_unix_time(secs, nanos))
}

/// Formats a time for a PAX `mtime` record.
pub fn format_pax_time(secs: i64, nanos: u32) -> String {
    if nanos == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{nanos:09}")
    }
}

enum WriteErr {
    Read(io::Error),
    Write(io::Error),
}

/// Writes `size` bytes from `src` into a new file, seeking over all-zero blocks so big sparse
/// files stay sparse.
fn write_sparse(src: &mut impl Read, path: &Path, size: u64) -> Result<u64, WriteErr> {
    const BLOCK: usize = 4096;
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(WriteErr::Write)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut pending_hole = false;
    while total < size {
        let want = buf.len().min((size - total) as usize);
        let n = read_full(src, &mut buf[..want]).map_err(WriteErr::Read)?;
        if n < want {
            return Err(WriteErr::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "archive ends {} bytes into a {size}-byte file",
                    total + n as u64
                ),
            )));
        }
        for chunk in buf[..n].chunks(BLOCK) {
            if chunk.iter().all(|b| *b == 0) {
                f.seek(SeekFrom::Current(chunk.len() as i64))
                    .map_err(WriteErr::Write)?;
                pending_hole = true;
            } else {
                f.write_all(chunk).map_err(WriteErr::Write)?;
                pending_hole = false;
            }
        }
        total += n as u64;
    }
    if pending_hole {
        f.set_len(size).map_err(WriteErr::Write)?;
    }
    Ok(total)
}

fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
#[path = "extract_tests.rs"]
pub(crate) mod tests;
