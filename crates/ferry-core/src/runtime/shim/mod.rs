//! The per-container shim: a small detached process (`ferryd shim <json>`) that owns one
//! container's stdio and exit status, so both survive ferryd being killed or restarted.
//!
//! It becomes a child subreaper, runs `runc run -d` (or `runc restore -d`) with two fresh pipes as
//! runc's stdout/stderr (a restored container gets its dumped pipes reconnected to them), copies
//! both pipes into `ctr.log`, waits for the container's init, and writes `exit.json`.
//!
//! With `-t` ([`ShimIo::tty`]) the shim marks the bundle's process as a terminal and runs
//! `runc run -d --console-socket`: runc sends it the pty's master, which the shim keeps (and
//! copies into the log) for as long as the container lives. With `-i` the container's stdin is
//! a pipe the shim keeps open. Either way, `ferry attach` reaches them through [`attach`].
//!
//! Files in the container dir (`ctrdir`):
//!
//! | file              | written by | content |
//! |-------------------|-----------|---------|
//! | `shim.pid`        | shim      | the shim's pid, removed when it exits |
//! | `shim-start.json` | shim      | [`StartStatus`]: runc's verdict (also sent to [`spawn_shim`] over a pipe) |
//! | `init.pid`        | runc      | host pid of the container's init |
//! | `ctr.log`         | shim      | container output, see [`log`] |
//! | `runc.log`        | runc      | runc's own JSON log (its errors, apart from the container's stderr) |
//! | `shim.log`        | shim      | the shim's own diagnostics |
//! | `exit.json`       | shim      | [`ContainerExit`], written atomically after the last log line |
//! | `stdio.json`      | ferryd    | [`ShimIo`]: `-t`/`-i` of `ferry run`, kept for every start |
//! | `attach.sock`     | shim      | `ferry attach` connections, see [`attach`] |
//!
//! Once `exit.json` exists, the log is complete and `shim.pid` is gone, so ferryd may start the
//! next shim for the same dir at once (e.g. a restore after a checkpoint that stopped the
//! container: that checkpoint makes the init exit with SIGKILL, recorded like any other exit).

pub mod attach;
pub mod log;
mod process;
mod spawn;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::runc::{RestoreOpts, Runc};
use crate::fsutil::{self, MODE_PRIVATE};

pub use log::{read_log, LogEntry, LogReader, LogStream};
pub use process::main;
pub use spawn::{spawn_shim, ShimStarted, START_TIMEOUT};

pub const LOG_FILE: &str = "ctr.log";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_PID_FILE: &str = "shim.pid";
pub const START_FILE: &str = "shim-start.json";
pub const INIT_PID_FILE: &str = "init.pid";
pub const RUNC_LOG_FILE: &str = "runc.log";
pub const SHIM_LOG_FILE: &str = "shim.log";
pub const IO_FILE: &str = "stdio.json";
pub const ATTACH_SOCKET: &str = "attach.sock";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("invalid shim arguments: {0}")]
    BadArgs(String),
    #[error("could not {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("could not start the shim {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runc {verb} of container {id} failed: {message}")]
    Start {
        id: String,
        verb: &'static str,
        message: String,
    },
    #[error(
        "the shim for container {id} exited without reporting a start status (see {shim_log})"
    )]
    ShimDied { id: String, shim_log: PathBuf },
    #[error("the shim for container {id} did not report within {waited:?} (it keeps running; see {shim_log})")]
    StartTimeout {
        id: String,
        waited: std::time::Duration,
        shim_log: PathBuf,
    },
    #[error("a shim (pid {pid}) is already running for {ctrdir}")]
    AlreadyRunning { pid: u32, ctrdir: PathBuf },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} line {line}: {problem}")]
    BadLogLine {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// How the shim brings the container up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShimMode {
    /// `runc run -d`.
    Run,
    /// `runc restore -d` from a checkpoint. `opts.bundle` must equal [`ShimArgs::bundle`];
    /// `opts.pid_file` must be unset (the shim uses `ctrdir/init.pid`).
    Restore(RestoreOpts),
}

/// Everything the shim needs, passed as one JSON argument: `ferryd shim '<json>'`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimArgs {
    pub id: String,
    /// runc binary.
    pub runc: PathBuf,
    /// runc `--root` of this host.
    pub runc_root: PathBuf,
    pub bundle: PathBuf,
    /// The container's state dir; see the module docs for the files in it.
    pub ctrdir: PathBuf,
    pub mode: ShimMode,
    /// Extra environment for runc (and CRIU under it), e.g. a PATH that finds `criu`.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The container's stdio: a pty (`-t`), a stdin pipe (`-i`), or neither.
    #[serde(default)]
    pub io: ShimIo,
}

/// How `ferry run` set up the container's stdio (`stdio.json` in the container dir). Every
/// start of the container (`start`, `--restart`) keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimIo {
    /// `-t`: the container's stdio is a pty whose master the shim holds.
    #[serde(default)]
    pub tty: bool,
    /// `-i`: the container's stdin stays open for `ferry attach` (a pipe, or the pty).
    #[serde(default)]
    pub stdin: bool,
}

impl ShimIo {
    /// Neither `-t` nor `-i`: a container CRIU can checkpoint.
    pub fn is_plain(&self) -> bool {
        !self.tty && !self.stdin
    }

    /// The settings of the container in `ctrdir`; plain when none were saved.
    pub fn load(ctrdir: &Path) -> Result<ShimIo, ShimError> {
        Ok(read_json(&ctrdir.join(IO_FILE))?.unwrap_or_default())
    }

    /// Saves non-plain settings (a plain container has no file).
    pub fn save(&self, ctrdir: &Path) -> Result<(), ShimError> {
        if self.is_plain() {
            return Ok(());
        }
        write_json_atomic(&ctrdir.join(IO_FILE), self)
    }

    /// Why CRIU cannot dump a container with these settings, if it cannot.
    pub fn unmovable_reason(&self) -> Option<&'static str> {
        if self.tty {
            Some(
                "it has a terminal (`ferry run -t`): its pty's master is held by ferry's shim, \
                 outside the container, and CRIU cannot carry such an external pty",
            )
        } else if self.stdin {
            Some(
                "its stdin is kept open (`ferry run -i`): the pipe is held by ferry's shim, \
                 outside the container, and CRIU cannot carry it",
            )
        } else {
            None
        }
    }
}

impl ShimArgs {
    /// Arguments for a shim that drives `runc` (its binary and root) with no extra environment.
    pub fn new(
        id: impl Into<String>,
        runc: &Runc,
        bundle: impl Into<PathBuf>,
        ctrdir: impl Into<PathBuf>,
        mode: ShimMode,
    ) -> Self {
        ShimArgs {
            id: id.into(),
            runc: runc.binary.clone(),
            runc_root: runc.root.clone(),
            bundle: bundle.into(),
            ctrdir: ctrdir.into(),
            mode,
            env: Vec::new(),
            io: ShimIo::default(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ShimArgs always serializes")
    }

    pub fn from_json(json: &str) -> Result<Self, ShimError> {
        serde_json::from_str(json).map_err(|e| ShimError::BadArgs(e.to_string()))
    }

    pub fn files(&self) -> ShimFiles {
        ShimFiles::new(&self.ctrdir)
    }

    pub(crate) fn runc(&self) -> Runc {
        Runc {
            binary: self.runc.clone(),
            root: self.runc_root.clone(),
            log: Some(self.files().runc_log()),
        }
    }

    /// Checks what the shim relies on before it is detached, so mistakes surface in ferryd.
    pub fn validate(&self) -> Result<(), ShimError> {
        let bad = |m: String| Err(ShimError::BadArgs(m));
        if self.id.is_empty() {
            return bad("empty container id".into());
        }
        for (name, p) in [
            ("runc_root", &self.runc_root),
            ("bundle", &self.bundle),
            ("ctrdir", &self.ctrdir),
        ] {
            if !p.is_absolute() {
                return bad(format!("{name} {} is not absolute", p.display()));
            }
        }
        if let ShimMode::Restore(opts) = &self.mode {
            if let Some(why) = self.io.unmovable_reason() {
                return bad(format!(
                    "a restored container cannot have this stdio: {why}"
                ));
            }
            if opts.bundle != self.bundle {
                return bad(format!(
                    "restore bundle {} differs from the shim's bundle {}",
                    opts.bundle.display(),
                    self.bundle.display()
                ));
            }
            if opts.pid_file.is_some() {
                return bad("restore pid_file is set by the shim; leave it empty".into());
            }
            if !opts.image_path.is_absolute() || !opts.work_path.is_absolute() {
                return bad("restore image_path and work_path must be absolute".into());
            }
        }
        Ok(())
    }
}

/// Paths of the shim's files in one container dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimFiles {
    dir: PathBuf,
}

impl ShimFiles {
    pub fn new(ctrdir: impl Into<PathBuf>) -> Self {
        ShimFiles { dir: ctrdir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join(EXIT_FILE)
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join(SHIM_PID_FILE)
    }
    pub fn start_status(&self) -> PathBuf {
        self.dir.join(START_FILE)
    }
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join(INIT_PID_FILE)
    }
    pub fn runc_log(&self) -> PathBuf {
        self.dir.join(RUNC_LOG_FILE)
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join(SHIM_LOG_FILE)
    }
    pub fn attach_socket(&self) -> PathBuf {
        self.dir.join(ATTACH_SOCKET)
    }
}

/// The shim's report once runc run/restore returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartStatus {
    pub ok: bool,
    pub shim_pid: u32,
    /// Host pid of the container's init, when `ok`.
    pub pid: Option<u32>,
    /// runc's error (and CRIU's, for a restore), when not `ok`.
    pub error: Option<String>,
}

/// How the container's init ended (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerExit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if killed (SIGKILL also after a checkpoint that stopped the container).
    pub signal: Option<i32>,
    pub finished_at: DateTime<Utc>,
}

impl ContainerExit {
    /// Shell convention: the code, or 128 + signal; -1 if neither is known (the init was not
    /// the shim's child).
    pub fn status_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ShimError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ShimError::Json {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ShimError::Io {
            what: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The shim's status files, replaced atomically so ferryd never reads half of one.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), ShimError> {
    fsutil::write_json(path, value, MODE_PRIVATE).map_err(|source| ShimError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    })
}

/// The container's exit record, if its init has exited.
pub fn read_exit(ctrdir: &Path) -> Result<Option<ContainerExit>, ShimError> {
    read_json(&ShimFiles::new(ctrdir).exit())
}

/// The last start report of a shim in this dir.
pub fn read_start_status(ctrdir: &Path) -> Result<Option<StartStatus>, ShimError> {
    read_json(&ShimFiles::new(ctrdir).start_status())
}

/// The pid of a live shim for this container dir, if there is one (ferryd uses this after a
/// restart to find the shims of running containers).
pub fn running_shim_pid(ctrdir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(ShimFiles::new(ctrdir).shim_pid()).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    // Guard against pid reuse: the process must be alive, not a zombie, and a shim.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_shim = String::from_utf8_lossy(&cmdline).contains("shim");
    (state != "Z" && is_shim).then_some(pid)
}

#[cfg(test)]
mod tests;
