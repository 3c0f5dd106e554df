//! ferryd's side: start a shim fully detached and wait for its start report.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use super::{running_shim_pid, ShimArgs, ShimError, ShimMode, StartStatus};
use crate::tool::Tool;

/// How long [`spawn_shim`] waits for runc run/restore to return (a restore of a large image can
/// take seconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Environment variable telling the shim which inherited fd to send its start report on.
pub(crate) const READY_FD_ENV: &str = "FERRY_SHIM_READY_FD";

/// A started container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimStarted {
    pub shim_pid: u32,
    /// Host pid of the container's init.
    pub init_pid: u32,
}

/// Starts `exe shim '<args json>'` detached (own session, not ferryd's child, stdio on
/// /dev/null) and waits until it reports that runc run/restore returned. A runc failure comes
/// back as [`ShimError::Start`] with runc's (and CRIU's) error text.
pub fn spawn_shim(exe: &Path, args: &ShimArgs) -> Result<ShimStarted, ShimError> {
    let cmd = Tool::new(exe).arg("shim").arg(args.to_json()).command();
    spawn_with(cmd, exe, args, START_TIMEOUT)
}

/// [`spawn_shim`] with the shim's command line given (tests run the shim from the test binary).
pub(crate) fn spawn_with(
    mut cmd: Command,
    exe: &Path,
    args: &ShimArgs,
    timeout: Duration,
) -> Result<ShimStarted, ShimError> {
    args.validate()?;
    let files = args.files();
    std::fs::create_dir_all(&args.ctrdir).map_err(|source| ShimError::Io {
        what: "create the container dir",
        path: args.ctrdir.clone(),
        source,
    })?;
    if let Some(pid) = running_shim_pid(&args.ctrdir) {
        return Err(ShimError::AlreadyRunning {
            pid,
            ctrdir: args.ctrdir.clone(),
        });
    }
    match std::fs::remove_file(files.start_status()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ShimError::Io {
                what: "remove the old start status",
                path: files.start_status(),
                source: e,
            })
        }
        _ => {}
    }

    let (ready_read, ready_write) = ready_pipe()?;
    let ready_fd = ready_write.as_raw_fd();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .env(READY_FD_ENV, ready_fd.to_string());
    // SAFETY: the closure only makes raw syscalls (fcntl, setsid, clone, _exit), which are safe
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || detach(ready_fd));
    }
    let mut intermediate = cmd.spawn().map_err(|source| ShimError::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    drop(ready_write);
    // The first child exits right after forking the shim; reap it.
    let _ = intermediate.wait();

    let report = read_report(ready_read, timeout).map_err(|e| match e {
        ReportError::Timeout => ShimError::StartTimeout {
            id: args.id.clone(),
            waited: timeout,
            shim_log: files.shim_log(),
        },
        ReportError::Io(source) => ShimError::Io {
            what: "read the shim's start report from",
            path: files.start_status(),
            source,
        },
    })?;
    if report.is_empty() {
        return Err(ShimError::ShimDied {
            id: args.id.clone(),
            shim_log: files.shim_log(),
        });
    }
    let status: StartStatus =
        serde_json::from_slice(&report).map_err(|source| ShimError::Json {
            path: files.start_status(),
            source,
        })?;
    match (status.ok, status.pid) {
        (true, Some(init_pid)) => Ok(ShimStarted {
            shim_pid: status.shim_pid,
            init_pid,
        }),
        _ => Err(ShimError::Start {
            id: args.id.clone(),
            verb: verb(&args.mode),
            message: status
                .error
                .unwrap_or_else(|| "the shim reported no error text".to_owned()),
        }),
    }
}

pub(crate) fn verb(mode: &ShimMode) -> &'static str {
    match mode {
        ShimMode::Run => "run",
        ShimMode::Restore(_) => "restore",
    }
}

/// A close-on-exec pipe whose write end is not one of fds 0-2 (those become /dev/null in the
/// child before our pre-exec hook runs).
fn ready_pipe() -> Result<(OwnedFd, OwnedFd), ShimError> {
    let sys = |source| ShimError::Sys {
        what: "create the shim's start pipe",
        source,
    };
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys)?;
    if w.as_raw_fd() > 2 {
        return Ok((r, w));
    }
    let high =
        nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(sys)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    let high = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) };
    Ok((r, high))
}

/// Runs in the forked child before exec: keep the start pipe across exec, leave ferryd's session,
/// and fork once more so the shim is reparented away from ferryd (which then never has to reap
/// it, and whose death does not touch it).
fn detach(ready_fd: RawFd) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain syscalls on our own descriptor and process. The second fork is a raw clone
    // rather than glibc's fork(): in a child of a multithreaded process, fork()'s atfork
    // handlers could wait on locks held by threads that no longer exist.
    unsafe {
        let flags = libc::fcntl(ready_fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(ready_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(err());
        }
        if libc::setsid() < 0 {
            return Err(err());
        }
        let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
        if pid < 0 {
            return Err(err());
        }
        if pid > 0 {
            libc::_exit(0);
        }
    }
    Ok(())
}

enum ReportError {
    Timeout,
    Io(std::io::Error),
}

/// Reads the start pipe to end of file (the shim closes it after reporting, or dies).
fn read_report(pipe: OwnedFd, timeout: Duration) -> Result<Vec<u8>, ReportError> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(pipe);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReportError::Timeout);
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReportError::Io(e));
        }
        if n == 0 {
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReportError::Io(e)),
        }
    }
}
