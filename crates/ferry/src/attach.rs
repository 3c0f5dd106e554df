//! `ferry attach CTR`, and the terminal of `ferry run -it`: the container's pty (or output and
//! open stdin) through ferryd, which relays to the container's shim. The shim holds the pty,
//! so the session can end (Ctrl-P Ctrl-Q, a closed terminal, a ferryd restart) while the
//! container keeps running, and `ferry attach` finds the same terminal again.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Result;
use ferry_core::api::AttachRequest;
use ferry_core::exec::{self as wire, Frame};
use tokio::sync::mpsc;

use crate::error::CliError;
use crate::exec::{forward_resizes, forward_stdin, frame_writer, terminal_size, upgrade, RawMode};

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// Do not send this terminal's input to the container.
    #[arg(long)]
    pub no_stdin: bool,
    /// The container (name, ID or unique ID prefix); it must be running.
    pub container: String,
}

/// How an attached session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The container exited with this code.
    Exited(i32),
    /// Ctrl-P Ctrl-Q: the container keeps running.
    Detached,
}

/// `ferry attach`: the exit code is the container's, or 0 after a detach.
pub async fn run(socket: &Path, a: AttachArgs) -> Result<i32> {
    Ok(match session(socket, &a.container, !a.no_stdin).await? {
        Ended::Exited(code) => code,
        Ended::Detached => 0,
    })
}

/// Attaches this terminal to `container` until it exits or the user detaches. With a pty the
/// terminal is raw (restored on return) and its size follows; `send_stdin` forwards what is
/// typed when the container's stdin is open.
pub async fn session(socket: &Path, container: &str, send_stdin: bool) -> Result<Ended> {
    let path = format!("/v1/containers/{}/attach", crate::enc(container));
    let req = AttachRequest {
        size: terminal_size(),
    };
    let (io, headers) = upgrade(
        socket,
        &path,
        wire::ATTACH_PROTOCOL,
        serde_json::to_vec(&req)?,
    )
    .await?;
    let flag = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true")
    };
    let (tty, stdin_open) = (flag(wire::TTY_HEADER), flag(wire::STDIN_HEADER));
    let send_stdin = send_stdin && stdin_open;
    let raw = if tty && send_stdin && std::io::stdin().is_terminal() {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (mut rd, wr) = tokio::io::split(io);
    let tx = frame_writer(wr);
    let (detach_tx, mut detach_rx) = mpsc::channel::<()>(1);
    if send_stdin {
        forward_stdin(tx.clone(), tty.then_some(detach_tx));
    }
    if tty {
        forward_resizes(tx.clone())?;
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let ended = loop {
        let frame = tokio::select! {
            f = wire::read_frame(&mut rd) => f,
            // Without a pty there are no detach keys: the sender is gone, the branch is off.
            Some(()) = detach_rx.recv() => break Ended::Detached,
        };
        let frame = frame
            .map_err(|e| CliError::new("failed", format!("attach session with ferryd: {e}")))?;
        match frame {
            Some(Frame::Stdout(b)) => {
                let _ = stdout.write_all(&b).and_then(|_| stdout.flush());
            }
            Some(Frame::Stderr(b)) => {
                let _ = stderr.write_all(&b).and_then(|_| stderr.flush());
            }
            Some(Frame::Exit(code)) => break Ended::Exited(code),
            Some(_) => {}
            None => {
                drop(raw);
                return Err(CliError::new(
                    "failed",
                    format!(
                        "the connection to ferryd closed before {container} exited (was ferryd \
                         restarted?); the container keeps running: `ferry attach {container}` \
                         to return"
                    ),
                )
                .into());
            }
        }
    };
    drop(raw);
    if ended == Ended::Detached {
        eprintln!(
            "\nferry: detached from {container}; it keeps running (`ferry attach {container}` to \
             return)"
        );
    }
    Ok(ended)
}

/// `run -i` without a pty: the container's output comes from its log (stdout and stderr
/// apart, from the first line); this only streams this process's stdin into it, closing the
/// container's stdin at end of file.
pub async fn feed_stdin(socket: &Path, container: &str) -> Result<()> {
    let path = format!("/v1/containers/{}/attach", crate::enc(container));
    let body = serde_json::to_vec(&AttachRequest::default())?;
    let (io, _) = upgrade(socket, &path, wire::ATTACH_PROTOCOL, body).await?;
    let (mut rd, wr) = tokio::io::split(io);
    forward_stdin(frame_writer(wr), None);
    // The output frames repeat the log; drain them so the shim never waits on this client.
    tokio::spawn(async move { while let Ok(Some(_)) = wire::read_frame(&mut rd).await {} });
    Ok(())
}
