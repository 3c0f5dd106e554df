//! The one way ferry replaces a file, makes a scratch directory, and runs a future from
//! blocking code.
//!
//! - [`write_atomic`] / [`write_json`]: temp file in the same directory, fsync, rename, fsync
//!   of the directory. A crash leaves the old file or the new one, never half of either, and a
//!   failed write leaves no temp file behind.
//! - [`ScratchDir`]: a uniquely named directory removed on drop (two operations never share
//!   one), with a failed removal logged instead of ignored.
//! - [`block_on_fresh`]: a future run to completion on a private single-threaded runtime.
//! - [`blocking`]: the other direction, blocking work (files with fsync, tools, locks) awaited
//!   from async code on tokio's blocking pool, so it never stalls an async worker.
//!
//! Errors are `io::Error`s, so they fit every module's path-and-io error variant; inside each
//! is an [`FsError`] that names the step that failed and whose fault it was.

use std::fs::Permissions;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Mode of a file that holds a container's environment, keys, or other private state.
pub const MODE_PRIVATE: u32 = 0o600;
/// Mode of a file anyone on the host may read (less the umask).
pub const MODE_SHARED: u32 = 0o644;
/// Mode of every state directory: checkpoints hold whole memories, records hold environments.
pub const MODE_PRIVATE_DIR: u32 = 0o700;
/// The most a log may be: the owner writes, the group (e.g. an operators' group) reads.
pub const MODE_LOG: u32 = 0o640;
/// ferryd's umask: what it, runc and CRIU create is private unless made otherwise on purpose.
pub const PRIVATE_UMASK: u32 = 0o077;

/// Creates `path` and any missing parents as private directories ([`MODE_PRIVATE_DIR`]).
/// Directories that exist keep their mode.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE_PRIVATE_DIR)
        .create(path)
        .map_err(FsError::io("create", path))
}

/// [`create_private_dir_all`], and tightens `path` itself to [`MODE_PRIVATE_DIR`] if it was
/// there already (a state dir made by an older ferry, or by hand).
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    create_private_dir_all(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(MODE_PRIVATE_DIR))
        .map_err(FsError::io("make private", path))
}

/// Mode of a directory a container sees as its own: the overlay upper dir (overlayfs gives
/// the container's `/` the upper dir's mode) and a volume's `_data`. Its privacy comes from
/// the private directories above it.
pub const MODE_CONTAINER_DIR: u32 = 0o755;

/// Creates `path` (parents private) with exactly `mode`, whatever the umask, if it does not
/// exist; a directory that exists keeps its mode (the container may have changed it).
pub fn create_dir_with_mode(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(FsError::io("create", path)(e)),
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(FsError::io("set the mode of", path))
}

/// Space an import leaves free on the filesystem it writes to, for everything else.
pub const FREE_SPACE_RESERVE: u64 = 256 << 20;

/// Bytes an unprivileged writer may still use on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| FsError::io("measure the free space of", path)(e.into()))?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Sets the process umask to [`PRIVATE_UMASK`], for the daemon: files that runc, CRIU and the
/// shims create (images, logs, pid files) are then private too.
pub fn set_private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(PRIVATE_UMASK));
}

/// What went wrong, carried inside the `io::Error` the functions here return.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The host's filesystem refused: full disk, permissions, a file in the way.
    #[error("could not {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The value has no JSON form (a bug in ferry, e.g. a map with non-string keys).
    #[error("could not serialize the JSON for {path} (a bug in ferry): {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl FsError {
    /// An `io::Error` of the same kind as `source`, carrying the step and the path.
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
        move |source| {
            let kind = source.kind();
            let e = FsError::Io {
                op,
                path: path.to_owned(),
                source,
            };
            io::Error::new(kind, e)
        }
    }
}

/// Replaces `path` with `bytes` at `mode` (e.g. [`MODE_PRIVATE`]): a temp file in the same
/// directory (so the rename cannot cross filesystems), fsync, rename, fsync of the directory
/// (so the rename itself survives a crash). The directory is created if missing. On error the
/// temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A unique hidden name: two writers of one file never share a temp file.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(FsError::io("create a temp file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(FsError::io("write", tmp.path()))?;
    // On failure the temp file inside the error is dropped, which removes it.
    tmp.persist(path)
        .map_err(|e| FsError::io("replace", path)(e.error))?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::io("fsync directory", dir))
}

/// [`write_atomic`] of `value` as pretty JSON (ferry's state files are read by people too).
/// A value that cannot be serialized is an `InvalidData` error and writes nothing.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| {
        let e = FsError::Json {
            path: path.to_owned(),
            source,
        };
        io::Error::new(io::ErrorKind::InvalidData, e)
    })?;
    write_atomic(path, &bytes, mode)
}

/// A uniquely named directory that is removed with everything in it on drop.
///
/// This is `tempfile::TempDir`, plus a log line when the removal fails: a leftover directory
/// is worth a warning, not silence.
#[derive(Debug)]
pub struct ScratchDir {
    dir: Option<tempfile::TempDir>,
}

impl ScratchDir {
    /// Creates `parent` if needed, then `parent/<prefix><random>`.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<Self> {
        create_private_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(Permissions::from_mode(MODE_PRIVATE_DIR))
            .tempdir_in(parent)
            .map_err(FsError::io("create a scratch directory in", parent))?;
        Ok(ScratchDir { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// Removes the directory now and says whether that worked.
    pub fn close(mut self) -> io::Result<()> {
        let dir = self.dir.take().expect("present until drop");
        let path = dir.path().to_owned();
        dir.close().map_err(FsError::io("remove", &path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                tracing::warn!(dir = %path.display(), "could not remove scratch dir: {e}");
            }
        }
    }
}

/// Runs `fut` to completion on a fresh single-threaded runtime, from blocking code: the engine's
/// synchronous paths and threads that entered another network namespace (netlink sockets
/// belong to the namespace of the thread that opens them, so no shared runtime will do).
///
/// Panics when called on a thread that is already inside a tokio runtime, as tokio does.
pub fn block_on_fresh<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a single-threaded tokio runtime")
        .block_on(fut)
}

/// Runs blocking work (fsync'd writes, external tools, file locks) on tokio's blocking pool and
/// awaits it, so an async worker thread never stalls on it. A panic in `f` is re-raised here,
/// as if `f` had run inline. Must be called inside a tokio runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task; nobody is left to wait for it.
        Err(e) => panic!("blocking task cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Everything in `dir` but the names given.
    fn others(dir: &Path, known: &[&str]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !known.contains(&n.as_str()))
            .collect()
    }

    /// The process umask, read from /proc (setting it to read it would race other tests).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn writes_the_json_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("rec.json");
        let v = serde_json::json!({"id": "c1", "env": ["A=1"]});
        write_json(&p, &v, MODE_SHARED).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(others(d.path(), &["rec.json"]).is_empty());
    }

    #[test]
    fn private_files_are_0600_even_when_replacing_a_shared_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        write_atomic(&p, b"old", MODE_SHARED).unwrap();
        assert_eq!(mode_of(&p), 0o644 & !umask());
        write_atomic(&p, b"secret", MODE_PRIVATE).unwrap();
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
    }

    /// The `FsError` inside an `io::Error` from this module.
    fn inner(e: &io::Error) -> &FsError {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<FsError>())
            .expect("an FsError inside")
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file_and_the_target_alone() {
        let d = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should go: rename(2) refuses.
        let p = d.path().join("state.json");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("keep"), b"x").unwrap();
        let err = write_json(&p, &[1, 2, 3], MODE_PRIVATE).unwrap_err();
        match inner(&err) {
            FsError::Io { op, path, .. } => assert_eq!((*op, path), ("replace", &p)),
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("state.json"), "{err}");
        assert!(others(d.path(), &["state.json"]).is_empty());
        assert_eq!(std::fs::read(p.join("keep")).unwrap(), b"x");
    }

    #[test]
    fn a_value_without_json_form_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.json");
        let v: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let err = write_json(&p, &v, MODE_SHARED).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(inner(&err), FsError::Json { .. }), "{err}");
        assert!(err.to_string().contains("a bug in ferry"), "{err}");
        assert!(others(d.path(), &[]).is_empty());
    }

    #[test]
    fn a_missing_directory_is_created() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/f.json");
        write_atomic(&p, b"x", MODE_SHARED).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_an_error_that_names_it() {
        let d = tempfile::tempdir().unwrap();
        let not_dir = d.path().join("plain");
        std::fs::write(&not_dir, b"").unwrap();
        let err = write_atomic(&not_dir.join("f"), b"x", MODE_SHARED).unwrap_err();
        match inner(&err) {
            FsError::Io { op, path, .. } => assert_eq!((*op, path), ("create", &not_dir)),
            e => panic!("{e}"),
        }
        assert_eq!(std::fs::read(&not_dir).unwrap(), b"");
    }

    #[test]
    fn the_file_is_replaced_not_rewritten_in_place() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.json");
        write_atomic(&p, b"old contents", MODE_SHARED).unwrap();
        let mut reader = File::open(&p).unwrap();
        write_atomic(&p, b"new", MODE_SHARED).unwrap();
        // A reader that opened the old file still sees all of it: a new inode took its name.
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old contents");
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn concurrent_readers_only_ever_see_a_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ipam.json");
        let a = vec![b'a'; 256 * 1024];
        let b = vec![b'b'; 64 * 1024];
        write_atomic(&p, &a, MODE_SHARED).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (p, a, b, done) = (p.clone(), a.clone(), b.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) {
                    let got = std::fs::read(&p).unwrap();
                    assert!(got == a || got == b, "a torn read of {} bytes", got.len());
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..40 {
            write_atomic(&p, if i % 2 == 0 { &b } else { &a }, MODE_SHARED).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert!(others(d.path(), &["ipam.json"]).is_empty());
    }

    #[test]
    fn concurrent_writers_of_one_file_do_not_trip_over_each_other() {
        let d = tempfile::tempdir().unwrap();
        let p = Arc::new(d.path().join("rec.json"));
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomic(&p, &[w; 4096], MODE_PRIVATE).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let got = std::fs::read(&*p).unwrap();
        assert!(got.len() == 4096 && got.iter().all(|&x| x == got[0]));
        assert!(others(d.path(), &["rec.json"]).is_empty());
    }

    #[test]
    fn directories_are_created_private_and_tightened() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/containers/abc/container.json");
        write_atomic(&p, b"{}", MODE_PRIVATE).unwrap();
        for dir in ["state", "state/containers", "state/containers/abc"] {
            assert_eq!(mode_of(&d.path().join(dir)), 0o700, "{dir}");
        }
        let old = d.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&old).unwrap();
        assert_eq!(mode_of(&old), 0o700);
        let scratch = ScratchDir::new_in(&d.path().join("tmp"), "x-").unwrap();
        assert_eq!(mode_of(scratch.path()), 0o700);
        assert_eq!(mode_of(&d.path().join("tmp")), 0o700);
    }

    #[test]
    fn scratch_dirs_are_unique_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("tmp");
        let one = ScratchDir::new_in(&parent, "import-").unwrap();
        let two = ScratchDir::new_in(&parent, "import-").unwrap();
        assert_ne!(one.path(), two.path());
        std::fs::write(one.path().join("f"), b"x").unwrap();
        let (p1, p2) = (one.path().to_owned(), two.path().to_owned());
        drop(one);
        assert!(!p1.exists());
        assert!(p2.exists(), "dropping one must not touch the other");
        two.close().unwrap();
        assert!(!p2.exists());
    }

    #[test]
    fn block_on_fresh_runs_timers_and_io() {
        let n = block_on_fresh(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::task::spawn(async { 41 }).await.unwrap() + 1
        });
        assert_eq!(n, 42);
    }

    #[test]
    fn blocking_runs_off_the_worker_and_reraises_panics() {
        let here = std::thread::current().id();
        let (there, n) = block_on_fresh(blocking(move || (std::thread::current().id(), 6 * 7)));
        assert_ne!(
            here, there,
            "ran on the blocking pool, not the caller's thread"
        );
        assert_eq!(n, 42);
        let panicked = std::panic::catch_unwind(|| {
            block_on_fresh(blocking(|| -> u32 { panic!("boom in blocking work") }))
        })
        .unwrap_err();
        assert_eq!(
            panicked.downcast_ref::<&str>(),
            Some(&"boom in blocking work")
        );
    }
}
