//! `ferry attach` inside the shim: the shim holds the container's pty master (`-t`) or stdin
//! pipe (`-i`), so the terminal outlives ferryd. ferryd connects to `attach.sock` in the
//! container dir and relays the connection unchanged to the CLI.
//!
//! The connection carries the frames of [`crate::exec`]: the shim sends `stdout`/`stderr`
//! (the pty's output is `stdout`) and, once the container's init has exited, `exit`; it reads
//! `stdin` (empty: close a `-i` pipe; ignored for a pty, where EOF is the user's ^D) and
//! `resize`. Several clients may attach at once; each sees the output from its attach on.
//! With a pty, a new client first gets the last [`REPLAY`] bytes, so `run -it` shows the prompt
//! the shell printed before the CLI attached.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::log::LogStream;
use crate::exec::{read_frame_sync, Frame, WinSize};

/// Pty output kept for clients that attach later.
pub const REPLAY: usize = 4096;

/// A client that does not take output for this long is dropped, so it cannot stall the
/// container's output (and with it the container).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the clients' input goes.
pub(crate) enum Input {
    None,
    Pipe(File),
    Pty(File),
}

#[derive(Default)]
struct State {
    next: u64,
    clients: Vec<(u64, UnixStream)>,
    replay: Vec<u8>,
    /// The container's exit code, once known: later clients get it at once.
    exit: Option<i32>,
}

/// The attached clients of one container.
pub(crate) struct Hub {
    state: Mutex<State>,
    input: Mutex<Input>,
    /// The pty master, for window sizes.
    pty: Mutex<Option<OwnedFd>>,
    keep_replay: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// `tty`: the container gets a pty later ([`Hub::set_pty`]); its output is replayed.
    pub(crate) fn new(tty: bool, input: Input) -> Arc<Hub> {
        Arc::new(Hub {
            keep_replay: tty,
            state: Mutex::default(),
            input: Mutex::new(input),
            pty: Mutex::new(None),
        })
    }

    /// The container's pty master, received from runc: the clients' input and sizes go there.
    pub(crate) fn set_pty(&self, master: OwnedFd) -> Result<(), super::ShimError> {
        let writer = master.try_clone().map_err(|source| super::ShimError::Io {
            what: "duplicate",
            path: "the container's pty".into(),
            source,
        })?;
        *lock(&self.input) = Input::Pty(File::from(writer));
        *lock(&self.pty) = Some(master);
        Ok(())
    }

    /// Output of the container, to every client.
    pub(crate) fn output(&self, stream: LogStream, bytes: &[u8]) {
        let frame = match stream {
            LogStream::Stdout => Frame::Stdout(bytes.to_vec()),
            LogStream::Stderr => Frame::Stderr(bytes.to_vec()),
        }
        .encode();
        let mut st = lock(&self.state);
        if self.keep_replay {
            st.replay.extend_from_slice(bytes);
            let excess = st.replay.len().saturating_sub(REPLAY);
            st.replay.drain(..excess);
        }
        st.clients.retain_mut(|(_, c)| c.write_all(&frame).is_ok());
    }

    /// The container's init exited with `code`: tell every client (their connections close
    /// when the shim exits).
    pub(crate) fn exited(&self, code: i32) {
        let frame = Frame::Exit(code).encode();
        let mut st = lock(&self.state);
        st.exit = Some(code);
        for (_, c) in &mut st.clients {
            let _ = c.write_all(&frame);
        }
    }

    fn add(&self, conn: UnixStream) -> Option<u64> {
        let _ = conn.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        let mut st = lock(&self.state);
        let mut w = conn;
        if !st.replay.is_empty()
            && w.write_all(&Frame::Stdout(st.replay.clone()).encode())
                .is_err()
        {
            return None;
        }
        if let Some(code) = st.exit {
            let _ = w.write_all(&Frame::Exit(code).encode());
            return None;
        }
        let key = st.next;
        st.next += 1;
        st.clients.push((key, w));
        Some(key)
    }

    fn remove(&self, key: u64) {
        lock(&self.state).clients.retain(|(k, c)| {
            if *k == key {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            *k != key
        });
    }

    fn stdin(&self, data: &[u8]) {
        let mut input = lock(&self.input);
        let failed = match &mut *input {
            Input::Pipe(_) if data.is_empty() => true,
            Input::Pipe(f) | Input::Pty(f) => !data.is_empty() && f.write_all(data).is_err(),
            Input::None => false,
        };
        if failed {
            // Closing the pipe is the container's EOF; a pipe nobody reads is gone anyway.
            *input = Input::None;
        }
    }

    fn resize(&self, size: WinSize) {
        if let Some(pty) = &*lock(&self.pty) {
            set_size(pty.as_raw_fd(), size);
        }
    }

    /// Serves `attach.sock` on a thread of its own until the shim exits.
    pub(crate) fn serve(self: &Arc<Self>, socket: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        // Whoever can connect can type into the container: root (ferryd) only.
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let hub = Arc::clone(self);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || hub.client(conn));
            }
        });
        Ok(())
    }

    /// One client: its output side joins the hub, its input is read here until it goes away.
    fn client(&self, conn: UnixStream) {
        let Ok(mut reader) = conn.try_clone() else {
            return;
        };
        let Some(key) = self.add(conn) else {
            return;
        };
        loop {
            match read_frame_sync(&mut reader) {
                Ok(Some(Frame::Stdin(data))) => self.stdin(&data),
                Ok(Some(Frame::Resize(size))) => self.resize(size),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.remove(key);
    }
}

/// Sets the pty's window size; the kernel sends SIGWINCH to its foreground process group.
pub fn set_size(fd: std::os::fd::RawFd, size: WinSize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; a failure only leaves the size.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}
