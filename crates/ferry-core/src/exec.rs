//! `ferry exec`: a command run inside a running container with `runc exec`.
//!
//! # Wire protocol
//!
//! The CLI sends `POST /v1/containers/{name}/exec` with an [`ExecRequest`] as JSON body and the
//! headers `Connection: Upgrade`, `Upgrade: ferry-exec`. Errors found before the command starts
//! (no such container, not running, bad user) come back as an ordinary JSON error. Otherwise
//! ferryd answers `101 Switching Protocols` and the connection becomes a raw byte stream of
//! frames, in both directions:
//!
//! ```text
//! +---------+----------------+-----------------+
//! | kind u8 | length u32 BE  | payload (length)|
//! +---------+----------------+-----------------+
//! ```
//!
//! | kind | name   | direction    | payload                                        |
//! |------|--------|--------------|------------------------------------------------|
//! | 0    | stdin  | CLI → ferryd | bytes for the command's stdin; empty means EOF |
//! | 1    | stdout | ferryd → CLI | the command's stdout (the pty's output with -t) |
//! | 2    | stderr | ferryd → CLI | the command's stderr (and runc's own errors)   |
//! | 3    | exit   | ferryd → CLI | i32 BE: the exit code; the last frame sent     |
//! | 4    | resize | CLI → ferryd | u16 BE rows, u16 BE cols (only with a pty)      |
//! | 5    | error  | ferryd → CLI | UTF-8: why the session broke (ferryd's side)   |
//!
//! When the CLI goes away, ferryd kills the exec'd process: a session never outlives its client.
//!
//! `ferry attach` (and `run -i`/`-t`) uses the same frames over `POST
//! /v1/containers/{name}/attach` with `Upgrade: ferry-attach` ([`ATTACH_PROTOCOL`]); ferryd
//! relays them to the container's shim (see `runtime::shim::attach`). The 101 answer's
//! [`TTY_HEADER`] and [`STDIN_HEADER`] say whether the container has a pty and an open stdin.
//!
//! # Sessions and migration
//!
//! An exec'd process is a child of `runc exec` on the host, outside the container's process
//! tree, so CRIU cannot dump it. [`sessions`] counts the live sessions per container, and
//! `Engine::check_movable` refuses a checkpoint or migration before the freeze while any run.
//! It also refuses a container whose pty or stdin pipe the shim holds (`run -t`/`-i`, recorded
//! with [`Sessions::set_stdio`]): CRIU cannot carry those either.
//!
//! There is no window between that check and the freeze in which a session could start:
//! [`prepare`] records the session under the container's lock and only for a `running`
//! container. A checkpoint holds that lock from the check through the dump, and a migration
//! marks the container `migrating` under it ([`Engine::begin_migration`]) before its checks,
//! so an exec that comes later is refused, and one that came earlier is seen by the check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::container::engine::lock;
use crate::container::{ContainerError, Engine, RootfsDirs, Status};
use crate::runtime::runc::Runc;
use crate::runtime::shim::ShimIo;
use crate::runtime::spec::{self, SpecError};
use crate::tool::Tool;

/// The `Upgrade` header's protocol name.
pub const UPGRADE_PROTOCOL: &str = "ferry-exec";

/// The `Upgrade` protocol of `ferry attach`.
pub const ATTACH_PROTOCOL: &str = "ferry-attach";
/// In the attach answer: `true` when the container's stdio is a pty.
pub const TTY_HEADER: &str = "ferry-tty";
/// In the attach answer: `true` when the container's stdin is open for clients.
pub const STDIN_HEADER: &str = "ferry-stdin";

/// What the CLI sends to attach: its terminal's size, applied to a container's pty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    #[serde(default)]
    pub size: Option<WinSize>,
}

/// Largest payload accepted in one frame; larger reads are split by the sender.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The caller's request is wrong (empty command, bad `-e`).
    #[error("{0}")]
    Invalid(String),
    #[error("exec -u: {0}")]
    User(#[source] SpecError),
    /// The peer sent something that is not a frame (a client or daemon bug).
    #[error("exec stream: {0}")]
    Protocol(String),
    /// Setting the session up failed on this host (temp dir, spawning runc).
    #[error("exec: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the CLI asks for: `ferry exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] CTR CMD...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// `K=V` entries added to the container's environment (the CLI resolves `-e K`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container; the container's own when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// `uid`, `uid:gid`, `name` or `name:group`, resolved in the container's /etc/passwd.
    #[serde(default)]
    pub user: Option<String>,
    /// Allocate a pty (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// The CLI streams stdin (`-i`); without it the command's stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's size at start, with `tty`.
    #[serde(default)]
    pub size: Option<WinSize>,
}

impl ExecRequest {
    /// Refuses requests runc would fail on less clearly.
    pub fn validate(&self) -> Result<(), ExecError> {
        if self.cmd.is_empty() || self.cmd[0].is_empty() {
            return Err(ExecError::Invalid("exec needs a command to run".into()));
        }
        if let Some(bad) = self
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(ExecError::Invalid(format!(
                "exec environment entry {bad:?} is not NAME=VALUE"
            )));
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(ExecError::Invalid(format!(
                    "exec working directory {w:?} must be absolute"
                )));
            }
        }
        Ok(())
    }

    /// The command as shown in messages (`sh -c ...` becomes `sh`).
    pub fn short_name(&self) -> String {
        let first = self.cmd.first().map(String::as_str).unwrap_or("");
        first.rsplit('/').next().unwrap_or(first).to_owned()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// One frame of the exec stream (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Empty: stdin is closed.
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    Resize(WinSize),
    Error(String),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Stdin(b) => (0, b.clone()),
            Frame::Stdout(b) => (1, b.clone()),
            Frame::Stderr(b) => (2, b.clone()),
            Frame::Exit(c) => (3, c.to_be_bytes().to_vec()),
            Frame::Resize(s) => {
                let mut p = s.rows.to_be_bytes().to_vec();
                p.extend_from_slice(&s.cols.to_be_bytes());
                (4, p)
            }
            Frame::Error(m) => (5, m.as_bytes().to_vec()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    fn decode(kind: u8, payload: Vec<u8>) -> Result<Frame, ExecError> {
        let fixed = |n: usize| -> Result<(), ExecError> {
            if payload.len() == n {
                Ok(())
            } else {
                Err(ExecError::Protocol(format!(
                    "frame kind {kind} has {} bytes, expected {n}",
                    payload.len()
                )))
            }
        };
        Ok(match kind {
            0 => Frame::Stdin(payload),
            1 => Frame::Stdout(payload),
            2 => Frame::Stderr(payload),
            3 => {
                fixed(4)?;
                Frame::Exit(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            4 => {
                fixed(4)?;
                Frame::Resize(WinSize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                })
            }
            5 => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
            other => return Err(ExecError::Protocol(format!("unknown frame kind {other}"))),
        })
    }
}

/// Writes one frame (and flushes: frames are interactive).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    w.write_all(&f.encode()).await?;
    w.flush().await
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ExecError> {
    let io = |source| ExecError::Io {
        what: "reading the exec stream".into(),
        source,
    };
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await.map_err(io)?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(ExecError::Protocol("stream ended inside a frame".into()));
        }
        got += n;
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(ExecError::Protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME} limit"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(io)?;
    Frame::decode(head[0], payload).map(Some)
}

/// [`read_frame`] for blocking readers (the shim is not async).
pub fn read_frame_sync<R: std::io::Read>(r: &mut R) -> Result<Option<Frame>, ExecError> {
    let io = |source| ExecError::Io {
        what: "reading the attach stream".into(),
        source,
    };
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ExecError::Protocol("stream ended inside a frame".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(ExecError::Protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME} limit"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(io)?;
    Frame::decode(head[0], payload).map(Some)
}

/// Live exec sessions per container id, for refusing checkpoints and migrations.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, Vec<(u64, String)>>>,
    /// Containers whose stdio the shim holds (`run -t`/`-i`), with why CRIU cannot move them.
    stdio: Mutex<HashMap<String, &'static str>>,
}

/// This process's session table (ferryd has one engine per process).
pub fn sessions() -> &'static Sessions {
    static S: OnceLock<Sessions> = OnceLock::new();
    S.get_or_init(Sessions::default)
}

impl Sessions {
    /// Records a session of `command` in container `id` until the guard drops.
    pub fn begin(&'static self, id: &str, command: &str) -> SessionGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.live)
            .entry(id.to_owned())
            .or_default()
            .push((key, command.to_owned()));
        SessionGuard {
            table: self,
            id: id.to_owned(),
            key,
        }
    }

    /// The commands of the sessions running in container `id`.
    pub fn running(&self, id: &str) -> Vec<String> {
        lock(&self.live)
            .get(id)
            .map(|v| v.iter().map(|(_, c)| c.clone()).collect())
            .unwrap_or_default()
    }

    /// Records the stdio of container `id` as its shim sets it up (the engine calls this on
    /// every start and when it loads its records).
    pub fn set_stdio(&self, id: &str, io: ShimIo) {
        let mut map = lock(&self.stdio);
        match io.unmovable_reason() {
            Some(why) => map.insert(id.to_owned(), why),
            None => map.remove(id),
        };
    }

    /// Refuses moving container `id` (named `name`) while exec sessions run in it, or when its
    /// shim holds its pty or stdin.
    pub fn refuse_if_busy(&self, id: &str, name: &str) -> Result<(), ContainerError> {
        if let Some(why) = lock(&self.stdio).get(id) {
            return Err(ContainerError::WrongState {
                name: name.to_owned(),
                status: Status::Running,
                why: format!(
                    "{why}. Checkpoint and migration are refused for it; run it without -t/-i \
                     to make it movable"
                ),
            });
        }
        let cmds = self.running(id);
        if cmds.is_empty() {
            return Ok(());
        }
        let n = cmds.len();
        Err(ContainerError::WrongState {
            name: name.to_owned(),
            status: Status::Running,
            why: format!(
                "it has {n} exec session{} running ({}): end {} first; CRIU cannot carry \
                 processes started by `ferry exec`",
                if n == 1 { "" } else { "s" },
                cmds.join(", "),
                if n == 1 { "it" } else { "them" },
            ),
        })
    }
}

/// Ends a session's entry in [`sessions`] when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    table: &'static Sessions,
    id: String,
    key: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut live = lock(&self.table.live);
        if let Some(v) = live.get_mut(&self.id) {
            v.retain(|(k, _)| *k != self.key);
            if v.is_empty() {
                live.remove(&self.id);
            }
        }
    }
}

/// Everything needed to start `runc exec` for one session, decided under the container's lock.
#[derive(Debug)]
pub struct Prepared {
    /// The `runc exec` command line (stdio is the caller's to wire).
    pub tool: Tool,
    /// Holds the pid file and runc's log; removed on drop.
    pub dir: tempfile::TempDir,
    pub session: SessionGuard,
    pub container: String,
}

impl Prepared {
    /// runc writes the exec'd process's host pid here once it runs.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    /// runc's own log (JSON lines): tells a failed start apart from the command's exit.
    pub fn runc_log(&self) -> PathBuf {
        self.dir.path().join("runc.log")
    }

    /// The exit code to report: runc's, except that a command runc could not start becomes
    /// 127 (not found) or 126 (not executable), as with Docker.
    pub fn exit_code(&self, runc_code: i32) -> i32 {
        if runc_code != 255 {
            return runc_code;
        }
        let log = std::fs::read_to_string(self.runc_log()).unwrap_or_default();
        start_failure_code(&log).unwrap_or(runc_code)
    }
}

/// 127 or 126 when runc's log says the process could not be started.
fn start_failure_code(log: &str) -> Option<i32> {
    let line = log.lines().find(|l| l.contains("exec failed"))?;
    if line.contains("not found") || line.contains("no such file or directory") {
        Some(127)
    } else {
        Some(126)
    }
}

/// Checks that container `name` runs, resolves the user, and builds the `runc exec` command.
/// The session is recorded under the container's lock, so a checkpoint that starts after this
/// returns sees it, and one that holds the lock now finishes first (then the container is not
/// running any more and this refuses).
pub fn prepare(engine: &Engine, name: &str, req: &ExecRequest) -> Result<Prepared, ExecError> {
    req.validate()?;
    let slot = engine.slot(name)?;
    let mut rec = lock(&slot);
    engine.refresh(&mut rec);
    if rec.status != Status::Running {
        return Err(ContainerError::WrongState {
            name: rec.config.name.clone(),
            status: rec.status,
            why: "exec needs a running container (start it first)".into(),
        }
        .into());
    }
    let rootfs = RootfsDirs::new(&engine.container_dir(&rec.config.id)).merged;
    let user = match &req.user {
        Some(u) => Some(spec::resolve_user(&rootfs, u).map_err(ExecError::User)?),
        None => None,
    };
    let dir = tempfile::Builder::new()
        .prefix("ferry-exec-")
        .tempdir()
        .map_err(|source| ExecError::Io {
            what: "creating the session's temp dir".into(),
            source,
        })?;
    let args = ExecArgs {
        id: Engine::runc_id(&rec.config),
        req,
        user,
        pid_file: &dir.path().join("pid"),
    };
    let tool = runc_exec(engine.runc(), &dir.path().join("runc.log"), &args);
    let session = sessions().begin(&rec.config.id, &req.short_name());
    Ok(Prepared {
        tool,
        dir,
        session,
        container: rec.config.name.clone(),
    })
}

struct ExecArgs<'a> {
    id: String,
    req: &'a ExecRequest,
    user: Option<(u32, u32)>,
    pid_file: &'a Path,
}

/// `runc exec` with the request's options. runc takes the rest of the process (env, user,
/// cwd, capabilities) from the container's config.json, as Docker's exec does.
///
/// With `tty`, runc allocates the command's pty itself and copies between it and its own
/// stdio, which the caller makes a second pty: runc only hands a pty over a console socket
/// when it detaches, and a detached exec's exit code is lost. runc takes the size from its
/// stdin at start and again on each SIGWINCH.
fn runc_exec(runc: &Runc, log: &Path, a: &ExecArgs) -> Tool {
    let mut t = Tool::new(&runc.binary)
        .arg("--root")
        .arg(&runc.root)
        .arg("--log")
        .arg(log)
        .args(["--log-format", "json", "exec", "--pid-file"])
        .arg(a.pid_file);
    for e in &a.req.env {
        t = t.arg("--env").arg(e);
    }
    if let Some(w) = &a.req.workdir {
        t = t.arg("--cwd").arg(w);
    }
    if let Some((uid, gid)) = a.user {
        t = t.arg("--user").arg(format!("{uid}:{gid}"));
    }
    if a.req.tty {
        t = t.arg("--tty");
    }
    t.arg(&a.id).args(&a.req.cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::Stdin(b"hello\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::Stdout(vec![0, 1, 2]),
            Frame::Stderr(b"err".to_vec()),
            Frame::Exit(-3),
            Frame::Resize(WinSize { rows: 24, cols: 80 }),
            Frame::Error("boom".into()),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        let mut r = buf.as_slice();
        for f in &frames {
            assert_eq!(read_frame(&mut r).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
        let mut cut = &buf[..3];
        assert!(matches!(
            read_frame(&mut cut).await,
            Err(ExecError::Protocol(_))
        ));
        let mut bad: &[u8] = &[9, 0, 0, 0, 0];
        assert!(read_frame(&mut bad).await.is_err());
    }

    #[test]
    fn runc_command_line() {
        let runc = Runc {
            binary: "runc".into(),
            root: "/r".into(),
            log: None,
        };
        let req = ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), "id -u".into()],
            env: vec!["A=b".into()],
            workdir: Some("/tmp".into()),
            tty: true,
            ..Default::default()
        };
        let args = ExecArgs {
            id: "c1".into(),
            req: &req,
            user: Some((65534, 65534)),
            pid_file: Path::new("/d/pid"),
        };
        assert_eq!(
            runc_exec(&runc, Path::new("/d/runc.log"), &args).display_args(),
            "--root /r --log /d/runc.log --log-format json exec --pid-file /d/pid --env A=b \
             --cwd /tmp --user 65534:65534 --tty c1 sh -c id -u"
        );
    }

    #[test]
    fn validation_and_exit_codes() {
        let ok = ExecRequest {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        ok.validate().unwrap();
        assert_eq!(ok.short_name(), "sh");
        for bad in [
            ExecRequest::default(),
            ExecRequest {
                env: vec!["NOEQUALS".into()],
                ..ok.clone()
            },
            ExecRequest {
                workdir: Some("rel".into()),
                ..ok
            },
        ] {
            assert!(matches!(bad.validate(), Err(ExecError::Invalid(_))));
        }
        let not_found = r#"{"level":"error","msg":"exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"}"#;
        assert_eq!(start_failure_code(not_found), Some(127));
        let denied = r#"{"level":"error","msg":"exec failed: unable to start container process: exec: \"/etc/passwd\": permission denied"}"#;
        assert_eq!(start_failure_code(denied), Some(126));
        assert_eq!(start_failure_code(""), None);
    }

    #[test]
    fn sessions_are_counted_and_refused() {
        let (id, name) = ("exec-test-sessions", "web");
        sessions().refuse_if_busy(id, name).unwrap();
        let a = sessions().begin(id, "sh");
        let err = sessions().refuse_if_busy(id, name).unwrap_err().to_string();
        assert!(
            err.contains("web") && err.contains("1 exec session running (sh)"),
            "{err}"
        );
        let b = sessions().begin(id, "sleep");
        let err = sessions().refuse_if_busy(id, name).unwrap_err().to_string();
        assert!(err.contains("2 exec sessions running (sh, sleep)"), "{err}");
        drop(a);
        drop(b);
        sessions().refuse_if_busy(id, name).unwrap();
    }
}
