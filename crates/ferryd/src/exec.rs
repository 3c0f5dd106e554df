//! `POST /v1/containers/{name}/exec`: starts `runc exec` and relays its stdio over the
//! upgraded connection, framed as described in [`ferry_core::exec`].
//!
//! Errors before the command starts are ordinary JSON errors; after the upgrade the stream ends
//! with an exit frame (or an error frame when ferryd itself failed). When the client goes away
//! the exec'd process is killed, so a session never outlives its client and the container is
//! movable again.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use ferry_core::api::ExecRequest;
use ferry_core::error_chain as chain;
use ferry_core::exec::{self as wire, ExecError, Frame, Prepared, WinSize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::api::{ApiResult, S};
use crate::error::ApiError;
use crate::upgrade::{self, Protocol};

/// How long output may keep coming after the command exited (a background child holding the
/// pipes or the pty open must not hold the session forever).
const DRAIN: Duration = Duration::from_secs(1);

/// A started `runc exec`, not yet relayed.
struct Started {
    prepared: Prepared,
    child: Child,
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
}

impl Drop for Started {
    /// A session dropped before runc was reaped (ferryd shutting down, a panicked relay): the
    /// exec'd process must not outlive it, or the container could never move again.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Some(pid) = exec_pid(&self.prepared) {
                if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
                    tracing::warn!(%pid, error = %e, "exec: could not kill an abandoned session's process");
                }
            }
        }
    }
}

/// The exec'd process's host pid, once runc wrote it.
fn exec_pid(p: &Prepared) -> Option<nix::unistd::Pid> {
    std::fs::read_to_string(p.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(nix::unistd::Pid::from_raw)
}

static EXEC: Protocol = Protocol {
    what: "exec",
    name: wire::UPGRADE_PROTOCOL,
    body_limit: 1 << 20,
    empty_is_default: false,
};

pub async fn exec(State(s): S, Path(name): Path<String>, req: Request) -> ApiResult<Response> {
    let (request, pending) = upgrade::accept::<ExecRequest>(&EXEC, req).await?;
    let engine = s.engine.clone();
    let started = tokio::task::spawn_blocking(move || start(&engine, &name, &request)).await??;
    // A client that does not upgrade ends the session (its process is killed).
    pending.switch(&[], started, relay::<upgrade::Client>, end)
}

/// Prepares and spawns `runc exec`. With a tty, runc's stdio is a pty of ours (see
/// [`ferry_core::exec`]'s `runc_exec`): runc sets it raw and copies it to the command's own pty.
fn start(
    engine: &ferry_core::container::Engine,
    name: &str,
    req: &ExecRequest,
) -> ApiResult<Started> {
    let prepared = wire::prepare(engine, name, req).map_err(api_error)?;
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::internal(format!("exec in {}: {what}: {e}", prepared.container))
    };
    let mut cmd = tokio::process::Command::from(prepared.tool.command());
    let pty = if req.tty {
        let size = req.size.map(|s| libc::winsize {
            ws_row: s.rows,
            ws_col: s.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pair =
            nix::pty::openpty(size.as_ref(), None).map_err(|e| internal("allocating a pty", &e))?;
        // openpty(3) leaves both ends inheritable: a shim or CRIU spawned meanwhile must not
        // keep them (a held slave would keep the session's output open after runc ends).
        for fd in [&pair.master, &pair.slave] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| internal("pty", &e))?;
        }
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .map_err(|e| internal("duplicating the pty", &e))
        };
        cmd.stdin(dup(&pair.slave)?)
            .stdout(dup(&pair.slave)?)
            .stderr(dup(&pair.slave)?);
        nix::fcntl::fcntl(
            pair.master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| internal("pty", &e))?;
        // SAFETY: the AsyncFd owns the descriptor; nothing else closes or replaces it.
        let registered = unsafe { AsyncFd::register(pair.master) };
        Some(Arc::new(registered.map_err(|e| internal("pty", &e))?))
        // `pair.slave` closes here: only runc holds it, so the master reads EIO when runc ends.
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        None
    };
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| ApiError::internal(prepared.tool.spawn_error(e).to_string()))?;
    drop(cmd);
    tracing::info!(container = %prepared.container, cmd = %req.short_name(), tty = req.tty, "exec session started");
    Ok(Started {
        prepared,
        child,
        pty,
    })
}

fn api_error(e: ExecError) -> ApiError {
    match e {
        ExecError::Container(c) => c.into(),
        ExecError::Invalid(_) | ExecError::User(_) => ApiError::invalid(chain(&e)),
        ExecError::Protocol(_) | ExecError::Io { .. } => ApiError::internal(chain(&e)),
    }
}

fn set_size(fd: &impl AsRawFd, size: WinSize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; a failure only leaves the size.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "exec: TIOCSWINSZ");
    }
}

/// Where stdin frames go.
enum Input {
    None,
    Pipe(ChildStdin),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

async fn relay<T: AsyncRead + AsyncWrite + Send + 'static>(io: T, mut st: Started) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wire::write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut pumps = Vec::new();
    if let Some(out) = st.child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, tx.clone(), Frame::Stdout)));
    }
    if let Some(err) = st.child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, tx.clone(), Frame::Stderr)));
    }
    if let Some(pty) = &st.pty {
        pumps.push(tokio::spawn(pump_pty(pty.clone(), tx.clone())));
    }
    let mut input = match (st.child.stdin.take(), &st.pty) {
        (Some(stdin), _) => Input::Pipe(stdin),
        (None, Some(pty)) => Input::Pty(pty.clone()),
        (None, None) => Input::None,
    };
    // The client's frames: stdin and resizes. Ends when the client goes away.
    let runc_pid = st.child.id();
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let inbound = tokio::spawn(async move {
        loop {
            match wire::read_frame(&mut rd).await {
                Ok(Some(Frame::Stdin(data))) => input = feed(input, &data).await,
                Ok(Some(Frame::Resize(size))) => {
                    if let Input::Pty(p) = &input {
                        set_size(p.get_ref(), size);
                        // runc copies its stdin's new size to the command's pty on SIGWINCH.
                        if let Some(pid) = runc_pid {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGWINCH,
                            );
                        }
                    }
                }
                Ok(Some(other)) => tracing::debug!(?other, "exec: unexpected frame from client"),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = gone_tx.send(());
    });
    let status = tokio::select! {
        s = st.child.wait() => s,
        _ = &mut gone_rx => {
            tracing::info!(container = %st.prepared.container, "exec client went away; killing the exec'd process");
            kill_process(&st).await;
            st.child.wait().await
        }
    };
    inbound.abort();
    let code = match status {
        Ok(s) => st.prepared.exit_code(exit_code(s)),
        Err(e) => {
            let _ = tx
                .send(Frame::Error(format!("waiting for runc exec: {e}")))
                .await;
            255
        }
    };
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(DRAIN, p).await.is_err() {
            abort.abort();
        }
    }
    let _ = tx.send(Frame::Exit(code)).await;
    drop(tx);
    let _ = writer.await;
    tracing::info!(container = %st.prepared.container, code, "exec session ended");
    // Dropping `st` ends the session's entry and removes its temp dir.
}

/// Writes stdin data to the command; empty data closes its stdin (not a pty's: EOF there is
/// the user's ^D).
async fn feed(input: Input, data: &[u8]) -> Input {
    match input {
        Input::Pipe(mut stdin) if !data.is_empty() => {
            if stdin.write_all(data).await.is_err() {
                return Input::None;
            }
            let _ = stdin.flush().await;
            Input::Pipe(stdin)
        }
        Input::Pipe(_) => Input::None,
        Input::Pty(p) => {
            let mut rest = data;
            while !rest.is_empty() {
                let Ok(mut guard) = p.writable().await else {
                    break;
                };
                match guard.try_io(|fd| {
                    nix::unistd::write(fd.get_ref(), rest).map_err(std::io::Error::from)
                }) {
                    Ok(Ok(n)) => rest = &rest[n..],
                    Ok(Err(_)) => break,
                    Err(_would_block) => continue,
                }
            }
            Input::Pty(p)
        }
        Input::None => Input::None,
    }
}

async fn pump<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<Frame>, make: fn(Vec<u8>) -> Frame) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(make(buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The pty's output; EIO means every slave end is closed (the command is gone).
async fn pump_pty(p: Arc<AsyncFd<OwnedFd>>, tx: mpsc::Sender<Frame>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = p.readable().await else {
            break;
        };
        match guard.try_io(|fd| {
            nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if tx.send(Frame::Stdout(buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
            Err(_would_block) => continue,
        }
    }
}

/// SIGKILL to the exec'd process (its pid from runc's pid file), then to runc itself.
async fn kill_process(st: &Started) {
    if let Some(pid) = exec_pid(&st.prepared) {
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            tracing::debug!(%pid, error = %e, "exec: killing the exec'd process");
        }
    }
    if let Some(pid) = st.child.id() {
        // runc exits once its process is gone; this only matters if it had not started it yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A session whose client never upgraded: kill it and reap runc.
async fn end(mut st: Started) {
    kill_process(&st).await;
    let _ = st.child.wait().await;
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .or_else(|| s.signal().map(|n| 128 + n))
        .unwrap_or(255)
}
