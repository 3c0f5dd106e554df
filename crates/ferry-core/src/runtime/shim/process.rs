//! The shim process itself: start or restore the container through runc, copy its output into
//! the log, reap its init, record how it ended.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::attach::{Hub, Input};
use super::log::{append, LineSplitter, LogStream};
use super::spawn::{verb, READY_FD_ENV};
use super::{
    write_json_atomic, ContainerExit, ShimArgs, ShimError, ShimFiles, ShimMode, StartStatus,
};
use crate::runtime::runc::RestoreOpts;
use crate::tool::Tool;

/// How long to wait for the output pipes to drain once runc failed or the init exited. Only a
/// process that escaped the container's pid namespace could hold them open longer.
const DRAIN_AFTER_FAILURE: Duration = Duration::from_secs(2);
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Entry point of `ferryd shim '<json>'`. Returns the process exit code: 0 after recording the
/// container's exit, 1 if the container could not be started.
pub fn main(args: &ShimArgs) -> i32 {
    // Reporting to a ferryd that died must give EPIPE, not kill the shim (Rust binaries ignore
    // SIGPIPE already; this makes it independent of the host binary). runc gets the default back
    // from std's spawn.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let files = args.files();
    let _ = std::fs::create_dir_all(files.dir());
    let mut diag = Diag::open(&files.shim_log());
    let mut ready = take_ready_fd();
    diag.note(&format!(
        "shim {} for {}: {}",
        std::process::id(),
        args.id,
        verb(&args.mode)
    ));

    let running = match start(args, &files, &mut diag) {
        Ok(running) => running,
        Err(e) => {
            let message = match e {
                ShimError::Start { message, .. } => message,
                other => other.to_string(),
            };
            diag.note(&format!("start failed: {message}"));
            // Gone before the report, so ferryd can start another shim right away.
            let _ = std::fs::remove_file(files.shim_pid());
            report(&files, ready.take(), &failed(message), &mut diag);
            return 1;
        }
    };
    diag.note(&format!("container init pid {}", running.init_pid));
    let status = StartStatus {
        ok: true,
        shim_pid: std::process::id(),
        pid: Some(running.init_pid),
        error: None,
    };
    report(&files, ready.take(), &status, &mut diag);

    let hub = Arc::clone(&running.hub);
    let exit = running.wait(&mut diag);
    diag.note(&format!(
        "container init exited: code {:?} signal {:?}",
        exit.code, exit.signal
    ));
    // shim.pid goes first: once exit.json exists, ferryd may start the next shim (a restore).
    let _ = std::fs::remove_file(files.shim_pid());
    if let Err(e) = write_json_atomic(&files.exit(), &exit) {
        diag.note(&e.to_string());
    }
    // Attached clients learn the exit code; their connections close as the shim exits.
    hub.exited(exit.status_code());
    let _ = std::fs::remove_file(files.attach_socket());
    0
}

fn failed(message: String) -> StartStatus {
    StartStatus {
        ok: false,
        shim_pid: std::process::id(),
        pid: None,
        error: Some(message),
    }
}

/// Writes the start status to its file and to ferryd's start pipe, then closes the pipe.
fn report(files: &ShimFiles, ready: Option<File>, status: &StartStatus, diag: &mut Diag) {
    if let Err(e) = write_json_atomic(&files.start_status(), status) {
        diag.note(&e.to_string());
    }
    if let Some(mut pipe) = ready {
        let bytes = serde_json::to_vec(status).unwrap_or_default();
        // ferryd may be gone; the file above is the durable copy.
        let _ = pipe.write_all(&bytes);
    }
}

/// The start pipe inherited from [`super::spawn_shim`], made close-on-exec so runc and the
/// container do not hold it open.
fn take_ready_fd() -> Option<File> {
    let fd: RawFd = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: fcntl on an fd number only inspects/changes its flags; failure means it is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the fd was opened for us by our spawner and nothing else in this process owns it.
    Some(unsafe { File::from_raw_fd(fd) })
}

/// A container whose runc run/restore succeeded.
struct Running {
    init_pid: u32,
    pumps: Pumps,
    hub: Arc<Hub>,
}

fn start(args: &ShimArgs, files: &ShimFiles, diag: &mut Diag) -> Result<Running, ShimError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| ShimError::Io { what, path, source }
    };
    for stale in [files.exit(), files.init_pid()] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove the stale", &stale)(e))
            }
            _ => {}
        }
    }
    std::fs::write(files.shim_pid(), std::process::id().to_string())
        .map_err(io("write", &files.shim_pid()))?;
    // The container's init is forked by runc's helpers, which exit; as subreaper we get it.
    nix::sys::prctl::set_child_subreaper(true).map_err(|source| ShimError::Sys {
        what: "become a child subreaper",
        source,
    })?;
    // The container's output may hold secrets it prints: owner and group only.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::fsutil::MODE_LOG)
        .open(files.log())
        .map_err(io("open the container log", &files.log()))?;

    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| ShimError::Sys {
            what: "create the container's output pipes",
            source,
        })
    };
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // `-i` without a pty: the container's stdin is a pipe whose write end the clients feed.
    let (stdin, stdin_write) = if args.io.stdin && !args.io.tty {
        let (r, w) = pipe()?;
        (Stdio::from(r), Some(File::from(w)))
    } else {
        (Stdio::null(), None)
    };
    let console = if args.io.tty {
        Some(Console::listen(&args.bundle)?)
    } else {
        None
    };

    let runc = args.runc();
    let tool = match &args.mode {
        ShimMode::Run => match &console {
            Some(c) => run_with_console(args, files, &c.socket),
            None => runc.run_command(&args.id, &args.bundle, &files.init_pid()),
        },
        ShimMode::Restore(opts) => {
            std::fs::create_dir_all(&opts.work_path)
                .map_err(io("create the CRIU work dir", &opts.work_path))?;
            let opts = RestoreOpts {
                pid_file: Some(files.init_pid()),
                ..opts.clone()
            };
            runc.restore_command(&args.id, &opts)
        }
    };
    let runc_log_offset = std::fs::metadata(files.runc_log()).map_or(0, |m| m.len());

    let mut cmd = tool.command();
    // runc's stdout/stderr become the container's (and, on restore, replace the dumped pipes).
    cmd.stdin(stdin)
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::from(err_write))
        .current_dir(&args.bundle)
        .env_remove(READY_FD_ENV);
    for (k, v) in &args.env {
        cmd.env(k, v);
    }
    diag.note(&format!("{} {}", tool.name(), tool.display_args()));
    let spawned = cmd.spawn();
    // Our copies of the write ends must go, or the pipes never reach end of file.
    drop(cmd);
    let mut child = spawned.map_err(|e| ShimError::Start {
        id: args.id.clone(),
        verb: verb(&args.mode),
        message: tool.spawn_error(e).to_string(),
    })?;

    let accepted = console.map(Console::accept);
    let log = Arc::new(Mutex::new(log));
    let hub = Hub::new(args.io.tty, stdin_write.map_or(Input::None, Input::Pipe));
    let mut pumps = Pumps::new(&log, &hub);
    pumps.add(out_read, LogStream::Stdout);
    pumps.add(err_read, LogStream::Stderr);
    let status = child.wait().map_err(|source| ShimError::Io {
        what: "wait for",
        path: args.runc.clone(),
        source,
    })?;
    if !status.success() {
        pumps.drain(DRAIN_AFTER_FAILURE);
        // A failed restore's CRIU log is quoted once, by the caller (`ContainerError::Criu`).
        let message = runc_errors(&files.runc_log(), runc_log_offset)
            .unwrap_or_else(|| format!("{} exited with {status}", tool.name()));
        return Err(ShimError::Start {
            id: args.id.clone(),
            verb: verb(&args.mode),
            message,
        });
    }
    // runc sent the pty's master over the console socket before it returned.
    if let Some(rx) = accepted {
        let master = rx
            .recv_timeout(CONSOLE_TIMEOUT)
            .map_err(|_| ShimError::Start {
                id: args.id.clone(),
                verb: verb(&args.mode),
                message: "runc did not send the container's pty over the console socket".into(),
            })?
            .map_err(|source| ShimError::Sys {
                what: "receive the container's pty from runc",
                source,
            })?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(io("duplicate the pty", files.dir()));
        pumps.add(dup(&master)?, LogStream::Stdout);
        hub.set_pty(master)?;
    }
    if let Err(e) = hub.serve(&files.attach_socket()) {
        // The container runs; only `ferry attach` will not reach it.
        diag.note(&format!("serving {}: {e}", files.attach_socket().display()));
    }
    let pid_text =
        std::fs::read_to_string(files.init_pid()).map_err(io("read", &files.init_pid()))?;
    let init_pid = pid_text.trim().parse().map_err(|_| ShimError::Start {
        id: args.id.clone(),
        verb: verb(&args.mode),
        message: format!(
            "runc wrote {pid_text:?} to {}, not a pid",
            files.init_pid().display()
        ),
    })?;
    Ok(Running {
        init_pid,
        pumps,
        hub,
    })
}

/// runc's own error messages written to its JSON log after `offset`.
fn runc_errors(runc_log: &Path, offset: u64) -> Option<String> {
    let bytes = std::fs::read(runc_log).ok()?;
    let new = bytes.get(offset as usize..)?;
    let messages: Vec<String> = new
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

impl Running {
    /// Reaps children until the container's init is among them, then lets the log drain.
    fn wait(self, diag: &mut Diag) -> ContainerExit {
        let init = Pid::from_raw(self.init_pid as i32);
        let (code, signal) = loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) if pid == init => break (Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                    break (None, Some(sig as i32))
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    // The init is not our child (it should have been reparented to us): all we
                    // can do is notice that it is gone.
                    diag.note(&format!("waitpid: {e}; polling /proc/{init} instead"));
                    while Path::new(&format!("/proc/{init}")).exists() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break (None, None);
                }
            }
        };
        if !self.pumps.drain(DRAIN_AFTER_EXIT) {
            diag.note("container output pipes still open after the init exited; log may be cut");
        }
        ContainerExit {
            code,
            signal,
            finished_at: Utc::now(),
        }
    }
}

/// One thread per output pipe, appending to the shared log file.
struct Pumps {
    done: Receiver<()>,
    tx: Sender<()>,
    count: usize,
    log: Arc<Mutex<File>>,
    hub: Arc<Hub>,
}

impl Pumps {
    fn new(log: &Arc<Mutex<File>>, hub: &Arc<Hub>) -> Pumps {
        let (tx, rx) = std::sync::mpsc::channel();
        Pumps {
            done: rx,
            tx,
            count: 0,
            log: Arc::clone(log),
            hub: Arc::clone(hub),
        }
    }

    /// Copies `fd` on a thread of its own until end of file.
    fn add(&mut self, fd: OwnedFd, stream: LogStream) {
        let (log, hub, tx) = (self.log.clone(), self.hub.clone(), self.tx.clone());
        std::thread::spawn(move || {
            pump(File::from(fd), stream, &log, &hub);
            let _ = tx.send(());
        });
        self.count += 1;
    }

    /// Waits until every pipe reached end of file, at most `limit`. False on timeout.
    fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        (0..self.count).all(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            self.done.recv_timeout(left).is_ok()
        })
    }
}

/// Copies one output (a pipe, or the pty's master: EIO once the container closed it) into
/// the log and to the attached clients.
fn pump(mut pipe: File, stream: LogStream, log: &Mutex<File>, hub: &Hub) {
    let mut splitter = LineSplitter::new(stream);
    let mut buf = vec![0u8; 64 * 1024];
    let write = |bytes: &[u8]| {
        if let Ok(mut f) = log.lock() {
            // A full disk must not block the container: drop the output, keep reading.
            let _ = append(&mut f, bytes);
        }
    };
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                write(&splitter.push(&buf[..n], Utc::now()));
                hub.output(stream, &buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    write(&splitter.finish(Utc::now()));
}

/// The shim's own log (its stderr is /dev/null). Best effort.
struct Diag(Option<File>);

impl Diag {
    fn open(path: &Path) -> Diag {
        Diag(OpenOptions::new().create(true).append(true).open(path).ok())
    }

    fn note(&mut self, msg: &str) {
        if let Some(f) = &mut self.0 {
            let _ = writeln!(f, "{} {msg}", Utc::now().to_rfc3339());
        }
    }
}

/// How long runc may take to send the pty after `runc run` returned (it sends it first).
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `runc run --console-socket`: with `process.terminal`, runc creates the container's pty and
/// sends its master over this socket (only when detached, as the shim runs it).
struct Console {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl Console {
    /// Marks the bundle's process as a terminal and listens on a socket in a short temp path
    /// (a socket path must fit in 108 bytes; the container dir may not).
    fn listen(bundle: &Path) -> Result<Console, ShimError> {
        let config = bundle.join("config.json");
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| ShimError::Io { what, path, source }
        };
        let text = std::fs::read(&config).map_err(io("read", &config))?;
        let mut spec: serde_json::Value =
            serde_json::from_slice(&text).map_err(|source| ShimError::Json {
                path: config.clone(),
                source,
            })?;
        spec["process"]["terminal"] = serde_json::Value::Bool(true);
        let text = serde_json::to_vec_pretty(&spec).expect("a JSON value serializes");
        std::fs::write(&config, text).map_err(io("write", &config))?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-console-")
            .tempdir()
            .map_err(io(
                "create a temp dir for the console socket in",
                &std::env::temp_dir(),
            ))?;
        let socket = dir.path().join("s");
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).map_err(io("listen on", &socket))?;
        Ok(Console {
            _dir: dir,
            socket,
            listener,
        })
    }

    /// Receives the master on a thread (runc connects while `runc run` runs).
    fn accept(self) -> Receiver<nix::Result<OwnedFd>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = self
                .listener
                .accept()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .and_then(|(conn, _)| receive_fd(&conn));
            let _ = tx.send(got);
            drop(self);
        });
        rx
    }
}

/// The one descriptor sent with SCM_RIGHTS on `conn`.
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us; nothing owns it yet.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(Errno::EBADMSG)
}

/// `runc run --detach --console-socket` (runc refuses the socket without `--detach`).
fn run_with_console(args: &ShimArgs, files: &ShimFiles, socket: &Path) -> Tool {
    Tool::new(&args.runc)
        .arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(files.runc_log())
        .args([
            "--log-format",
            "json",
            "run",
            "--detach",
            "--console-socket",
        ])
        .arg(socket)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(files.init_pid())
        .arg(&args.id)
}
