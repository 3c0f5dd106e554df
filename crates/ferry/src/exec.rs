//! `ferry exec [-i] [-t] [-e K=V|K] [-w DIR] [-u USER] CTR CMD [ARGS...]`: runs a command in a
//! running container, like `docker exec`.
//!
//! The request upgrades the HTTP connection to ferryd into a framed stream (see
//! [`ferry_core::exec`]): stdout and stderr arrive separately, stdin is streamed with `-i`, and
//! the CLI exits with the command's exit code. With `-t` the command gets a pty; the local
//! terminal is put in raw mode (restored on exit) and window size changes are forwarded.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};
use ferry_core::api::ExecRequest;
use ferry_core::exec::{self as wire, Frame, WinSize};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::error::CliError;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Stream this terminal's stdin to the command (EOF closes it).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set a variable: NAME=VALUE, or NAME to pass this shell's value (skipped when unset).
    #[arg(short, long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Working directory inside the container (default: the container's).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid (default: the container's).
    #[arg(short, long)]
    pub user: Option<String>,
    /// The container (name, ID or unique ID prefix); it must be running.
    pub container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// `-e NAME` takes the caller's value, as Docker does; an unset NAME is left out.
fn resolve_env(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// Runs the session and returns the command's exit code.
pub async fn run(socket: &Path, a: ExecArgs) -> Result<i32> {
    let tty_in = std::io::stdin().is_terminal();
    let req = ExecRequest {
        cmd: a.cmd,
        env: resolve_env(&a.env),
        workdir: a.workdir,
        user: a.user,
        tty: a.tty,
        stdin: a.interactive,
        size: if a.tty { terminal_size() } else { None },
    };
    let path = format!("/v1/containers/{}/exec", crate::enc(&a.container));
    let (io, _) = upgrade(
        socket,
        &path,
        wire::UPGRADE_PROTOCOL,
        serde_json::to_vec(&req)?,
    )
    .await?;
    // Raw mode only when the keyboard is the command's: keys go to the pty untouched.
    let _raw = if a.tty && a.interactive && tty_in {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (mut rd, wr) = tokio::io::split(io);
    let tx = frame_writer(wr);
    if a.interactive {
        forward_stdin(tx.clone(), None);
    }
    if a.tty {
        forward_resizes(tx.clone())?;
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let frame = wire::read_frame(&mut rd)
            .await
            .map_err(|e| CliError::new("failed", format!("exec session with ferryd: {e}")))?;
        match frame {
            // A closed local stdout is the reader's business; the exit code still counts.
            Some(Frame::Stdout(b)) => {
                let _ = stdout.write_all(&b).and_then(|_| stdout.flush());
            }
            Some(Frame::Stderr(b)) => {
                let _ = stderr.write_all(&b).and_then(|_| stderr.flush());
            }
            Some(Frame::Exit(code)) => return Ok(code),
            Some(Frame::Error(m)) => {
                return Err(
                    CliError::new("internal", format!("exec in {}: {m}", a.container)).into(),
                )
            }
            Some(_) => {}
            None => {
                return Err(CliError::new(
                    "failed",
                    format!(
                        "ferryd ended the exec session in {} without an exit code",
                        a.container
                    ),
                )
                .into())
            }
        }
    }
}

/// Sends the request (a POST of `body` to `path`) and upgrades the connection to `protocol`;
/// an error answer becomes the command's error. Returns the stream and the answer's headers.
pub(crate) async fn upgrade(
    socket: &Path,
    path: &str,
    protocol: &str,
    body: Vec<u8>,
) -> Result<(TokioIo<hyper::upgrade::Upgraded>, hyper::HeaderMap)> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        CliError::new(
            "unreachable",
            format!(
                "cannot reach ferryd at {}: {e}. Is ferryd running? (set --socket or FERRY_SOCKET)",
                socket.display()
            ),
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with ferryd")?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let body = Bytes::from(body);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://ferryd{path}"))
        .header(header::HOST, "ferryd")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(Full::new(body))?;
    let resp = sender.send_request(request).await?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let bytes = resp.into_body().collect().await?.to_bytes();
        return Err(crate::client::api_error(&bytes, status));
    }
    let headers = resp.headers().clone();
    let upgraded = hyper::upgrade::on(resp)
        .await
        .with_context(|| format!("upgrading the connection to ferryd ({protocol})"))?;
    Ok((TokioIo::new(upgraded), headers))
}

/// stdin on a thread of its own: a blocking read cannot be cancelled, and the process exits
/// when the command does, whatever the thread is doing. With `detach`, Docker's detach keys
/// (Ctrl-P Ctrl-Q) are not sent but reported there.
/// Sends the frames given to the returned channel on `wr`, in order, from a task of its own.
/// The write half stays open after the last frame: closing it would tell ferryd the client
/// went away, which ends the session.
pub(crate) fn frame_writer<W>(mut wr: W) -> mpsc::Sender<Frame>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wire::write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    tx
}

pub(crate) fn forward_stdin(tx: mpsc::Sender<Frame>, detach: Option<mpsc::Sender<()>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        let mut keys = DetachKeys::default();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Frame::Stdin(Vec::new()));
                    break;
                }
                Ok(n) => {
                    let (data, detached) = match &detach {
                        Some(_) => keys.scan(&buf[..n]),
                        None => (buf[..n].to_vec(), false),
                    };
                    if !data.is_empty() && tx.blocking_send(Frame::Stdin(data)).is_err() {
                        break;
                    }
                    if let (true, Some(d)) = (detached, &detach) {
                        let _ = d.blocking_send(());
                        break;
                    }
                }
            }
        }
    });
}

/// Finds Ctrl-P Ctrl-Q in the typed bytes. A Ctrl-P is held back until the next key shows
/// whether it starts the sequence; if not, it is sent after all.
#[derive(Debug, Default)]
pub(crate) struct DetachKeys {
    held: bool,
}

const CTRL_P: u8 = 0x10;
const CTRL_Q: u8 = 0x11;

impl DetachKeys {
    /// The bytes to send, and whether the sequence was typed (the bytes after it are dropped).
    pub(crate) fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.held {
                self.held = false;
                if b == CTRL_Q {
                    return (out, true);
                }
                out.push(CTRL_P);
            }
            if b == CTRL_P {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// SIGWINCH → a resize frame with the terminal's new size.
pub(crate) fn forward_resizes(tx: mpsc::Sender<Frame>) -> Result<()> {
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("watching terminal size changes")?;
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(size) = terminal_size() {
                if tx.send(Frame::Resize(size)).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(())
}

/// The size of the terminal on stdin (or stdout), when there is one.
pub(crate) fn terminal_size() -> Option<WinSize> {
    let fds = [std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd()];
    fds.into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into a valid, owned struct.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0).then_some(WinSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    })
}

/// The local terminal in raw mode until dropped, so keys (^C, ^D) reach the container's pty.
pub(crate) struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub(crate) fn enter() -> Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("putting the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        if let Err(e) = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved) {
            eprintln!("ferry: warning: could not restore the terminal (run `reset`): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_are_found_across_reads() {
        let mut k = DetachKeys::default();
        assert_eq!(k.scan(b"ab\x10c"), (b"ab\x10c".to_vec(), false));
        assert_eq!(k.scan(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(k.scan(b"\x11rest"), (Vec::new(), true));
        let mut k = DetachKeys::default();
        assert_eq!(k.scan(b"\x10\x10\x11"), (b"\x10".to_vec(), true));
    }

    #[test]
    fn env_names_take_the_callers_value() {
        std::env::set_var("FERRY_EXEC_TEST_VAR", "from-shell");
        let got = resolve_env(&[
            "A=1".into(),
            "FERRY_EXEC_TEST_VAR".into(),
            "FERRY_EXEC_TEST_UNSET".into(),
        ]);
        assert_eq!(got, vec!["A=1", "FERRY_EXEC_TEST_VAR=from-shell"]);
    }
}
