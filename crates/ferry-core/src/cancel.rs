//! Cancelling long work whose requester went away.
//!
//! ferryd runs an import on its blocking pool; when the client's connection closes (Ctrl-C
//! of the CLI), the request's future is dropped, and its [`CancelOnDrop`] sets the shared
//! [`Cancel`] flag. The work checks the flag as it reads its input and between its steps,
//! and stops with [`Cancel::error`], cleaning up through its drop guards as on any failure.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A flag shared by the requester and the work. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err` once cancelled: for the checks between steps.
    pub fn check(&self) -> io::Result<()> {
        if self.is_cancelled() {
            return Err(Self::error());
        }
        Ok(())
    }

    /// The error a cancelled read returns.
    pub fn error() -> io::Error {
        io::Error::new(io::ErrorKind::Interrupted, CANCELLED)
    }

    /// `r`, failing at its next read once cancelled.
    pub fn reader<R: Read>(&self, r: R) -> CancelReader<R> {
        CancelReader {
            inner: r,
            cancel: self.clone(),
        }
    }

    /// A guard that cancels when dropped unless [`CancelOnDrop::disarm`]ed: held by the
    /// request's future, so the work stops when the client goes away.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

/// How often a wait on a stream looks at the cancel flag and the deadline.
const STREAM_POLL: Duration = Duration::from_millis(200);

/// Whether `path` is a FIFO: an input with no size, that an import copies in first
/// ([`spool_stream`]) so every later step reads a regular file.
pub fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Copies the FIFO `src` into the new file `dest` (mode 0600): at most `max` bytes, until
/// `deadline`, and no further once `cancel` is set. A FIFO that nobody writes to yet, or that
/// is fed slowly, is waited on without blocking: each wait is short, so a cancel or the
/// deadline is seen within [`STREAM_POLL`]. Returns the bytes copied; on error the caller
/// removes `dest` (it lies in the operation's scratch dir).
pub fn spool_stream(
    src: &Path,
    dest: &Path,
    max: u64,
    deadline: Instant,
    cancel: &Cancel,
) -> io::Result<u64> {
    // Non-blocking, or the open itself would wait for a writer, deaf to a cancel.
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(src)?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        cancel.check()?;
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the stream did not end before the import's deadline",
            ));
        }
        if !readable(&input, STREAM_POLL)? {
            continue;
        }
        match input.read(&mut buf) {
            // Readable and empty: every writer has closed (a FIFO that never had a writer is
            // not reported readable, so this is the stream's real end).
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if total > max {
                    return Err(io::Error::other(format!(
                        "the stream is larger than the {max} bytes there is room for"
                    )));
                }
                out.write_all(&buf[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.sync_all()?;
    Ok(total)
}

/// Waits up to `wait` for `f` to have data or an end.
fn readable(f: &File, wait: Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: f.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the length given; `f` outlives the call.
    let n = unsafe { libc::poll(&mut fd, 1, wait.as_millis().min(i32::MAX as u128) as i32) };
    match n {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// What a cancelled operation says.
pub const CANCELLED: &str = "cancelled: the client went away";

pub struct CancelReader<R> {
    inner: R,
    cancel: Cancel,
}

impl<R: Read> Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

pub struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    /// The work finished: dropping the guard no longer cancels anything.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_cancels_a_reader() {
        let c = Cancel::new();
        let mut r = c.reader(io::repeat(1));
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        drop(c.on_drop());
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(e.to_string().contains("client went away"));

        let c = Cancel::new();
        c.on_drop().disarm();
        assert!(c.check().is_ok());
    }

    #[test]
    fn a_stream_is_spooled_until_its_writer_closes_or_a_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(is_fifo(&fifo));
        let far = Instant::now() + Duration::from_secs(60);

        // A writer that comes late, writes twice, and closes.
        let f = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            w.write_all(b"hello ").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            w.write_all(b"world").unwrap();
        });
        let out = dir.path().join("copy");
        let n = spool_stream(&fifo, &out, 1 << 20, far, &Cancel::new()).unwrap();
        writer.join().unwrap();
        assert_eq!(n, 11);
        assert_eq!(std::fs::read(&out).unwrap(), b"hello world");

        // Nobody writes: a cancel ends the wait within a poll.
        let c = Cancel::new();
        let c2 = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c2.cancel();
        });
        let t0 = Instant::now();
        let out = dir.path().join("copy2");
        let e = spool_stream(&fifo, &out, 1 << 20, far, &c).unwrap_err();
        assert!(e.to_string().contains("client went away"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));

        // And the deadline, too.
        let out = dir.path().join("copy3");
        let soon = Instant::now() + Duration::from_millis(300);
        let e = spool_stream(&fifo, &out, 1 << 20, soon, &Cancel::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
