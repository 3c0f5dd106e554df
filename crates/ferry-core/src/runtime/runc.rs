//! Typed wrapper over the runc CLI.
//!
//! Every call passes this host's `--root` (each lab host has its own runc state) and goes through
//! [`Tool`], so a failure carries runc's stderr. CRIU-backed verbs also point at CRIU's own log
//! (`dump.log` / `restore.log` in the work path), which is where the real reason usually is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::tool::{Tool, ToolError};

/// Environment variable naming the runc binary; `runc` from `PATH` when unset.
pub const RUNC_ENV: &str = "FERRY_RUNC";

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("runc knows no container {id:?}")]
    NotFound { id: String },
    #[error("container {id:?} is {actual}, but this needs it {wanted}")]
    BadState {
        id: String,
        actual: RuncStatus,
        wanted: RuncStatus,
    },
    #[error("could not parse the output of runc {verb}: {source}")]
    Json {
        verb: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// runc checkpoint/restore failed; CRIU's log says why.
    #[error("{source}; CRIU log {log}: {}", summarize_criu_errors(.criu_errors))]
    Criu {
        #[source]
        source: Box<ToolError>,
        log: PathBuf,
        criu_errors: Vec<String>,
    },
}

fn summarize_criu_errors(lines: &[String]) -> String {
    if lines.is_empty() {
        "no error lines".to_owned()
    } else {
        lines.join(" | ")
    }
}

/// Container status as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuncStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for RuncStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuncStatus::Creating => "creating",
            RuncStatus::Created => "created",
            RuncStatus::Running => "running",
            RuncStatus::Paused => "paused",
            RuncStatus::Stopped => "stopped",
        })
    }
}

/// One entry of `runc state` / `runc list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncState {
    pub id: String,
    /// Host pid of the container's init; 0 once stopped.
    pub pid: u32,
    pub status: RuncStatus,
    pub bundle: PathBuf,
    pub created: DateTime<Utc>,
}

/// Options of `runc checkpoint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOpts {
    pub image_path: PathBuf,
    /// CRIU's work dir; `dump.log` is written here. Created by [`Runc::checkpoint`].
    pub work_path: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    /// Send memory pages to a page server (CRIU's protocol) at this address.
    pub page_server: Option<SocketAddr>,
    pub lazy_pages: bool,
    /// runc writes a byte to this fd when the lazy page server is ready; the caller must make the
    /// fd inheritable in the command it builds from [`Runc::checkpoint_command`].
    pub status_fd: Option<i32>,
    /// `soft`, `full`, `strict` or `ignore`.
    pub manage_cgroups_mode: Option<String>,
    /// A previous (pre-)dump, relative to `image_path` (runc rejects absolute paths).
    pub parent_path: Option<PathBuf>,
}

impl CheckpointOpts {
    /// Where CRIU writes its dump log.
    pub fn criu_log_path(&self) -> PathBuf {
        self.work_path.join("dump.log")
    }
}

/// Options of `runc restore` (always detached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOpts {
    pub image_path: PathBuf,
    /// CRIU's work dir; `restore.log` is written here. For lazy pages it must equal the lazy-pages
    /// daemon's `--work-dir`.
    pub work_path: PathBuf,
    /// `runc restore` must be given the bundle explicitly.
    pub bundle: PathBuf,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    pub lazy_pages: bool,
    /// CRIU frees each part of the page images once it has read it (`--auto-dedup`): for
    /// scratch images only. The memory it frees is what the restored process faults in next,
    /// so the restore needs about one copy of the memory at a time instead of two, and reuses
    /// pages the host has backed already (fresh memory is slow to touch on a VM).
    #[serde(default)]
    pub auto_dedup: bool,
    pub manage_cgroups_mode: Option<String>,
    pub pid_file: Option<PathBuf>,
}

impl RestoreOpts {
    /// Where CRIU writes its restore log.
    pub fn criu_log_path(&self) -> PathBuf {
        self.work_path.join("restore.log")
    }
}

/// The last error lines of a CRIU log, for runc's error messages (one classifier for every
/// CRIU log: [`crate::criu::error_lines`]).
pub fn criu_log_errors(log: &Path) -> Vec<String> {
    crate::criu::error_lines(log, 8)
}

/// runc for one ferry host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runc {
    pub binary: PathBuf,
    /// runc's state dir (`--root`), one per host.
    pub root: PathBuf,
    /// When set, runc also logs to this file (`--log … --log-format json`); the shim uses it to
    /// tell runc's own error apart from the container's stderr.
    pub log: Option<PathBuf>,
}

impl Runc {
    /// runc from `$FERRY_RUNC` (or `runc`) with the given state dir.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let binary = std::env::var_os(RUNC_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("runc"));
        Runc {
            binary,
            root: root.into(),
            log: None,
        }
    }

    /// The same runc, logging to `log` as JSON lines.
    pub fn with_log(&self, log: impl Into<PathBuf>) -> Self {
        Runc {
            log: Some(log.into()),
            ..self.clone()
        }
    }

    fn tool(&self) -> Tool {
        let mut t = Tool::new(&self.binary).arg("--root").arg(&self.root);
        if let Some(log) = &self.log {
            t = t.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        t
    }

    /// `runc state`; `None` if runc does not know the container.
    pub fn state(&self, id: &str) -> Result<Option<RuncState>, RuncError> {
        match self.tool().args(["state", id]).run() {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|source| RuncError::Json {
                    verb: "state",
                    source,
                }),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The state of a container that must exist.
    fn existing_state(&self, id: &str) -> Result<RuncState, RuncError> {
        self.state(id)?
            .ok_or_else(|| RuncError::NotFound { id: id.to_owned() })
    }

    /// `runc list`: every container under this root.
    pub fn list(&self) -> Result<Vec<RuncState>, RuncError> {
        let out = self.tool().args(["list", "--format", "json"]).run()?;
        // runc prints `null` when there are no containers.
        let states: Option<Vec<RuncState>> =
            serde_json::from_slice(&out).map_err(|source| RuncError::Json {
                verb: "list",
                source,
            })?;
        Ok(states.unwrap_or_default())
    }

    /// `runc kill [--all] ID SIGNAL`; `signal` is a name (`TERM`, `SIGKILL`) or a number.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuncError> {
        let mut t = self.tool().arg("kill");
        if all {
            t = t.arg("--all");
        }
        t.args([id, signal])
            .run()
            .map_err(|e| not_found_or(e, id))?;
        Ok(())
    }

    /// `runc delete [--force]`. Succeeds when the container is already gone.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut t = self.tool().arg("delete");
        if force {
            t = t.arg("--force");
        }
        match t.arg(id).run() {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Freezes a running container (cgroup freezer).
    pub fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.require_status(id, RuncStatus::Running)?;
        self.tool()
            .args(["pause", id])
            .run()
            .map_err(|e| not_found_or(e, id))?;
        Ok(())
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.require_status(id, RuncStatus::Paused)?;
        self.tool()
            .args(["resume", id])
            .run()
            .map_err(|e| not_found_or(e, id))?;
        Ok(())
    }

    fn require_status(&self, id: &str, wanted: RuncStatus) -> Result<(), RuncError> {
        let state = self.existing_state(id)?;
        if state.status == wanted {
            Ok(())
        } else {
            Err(RuncError::BadState {
                id: id.to_owned(),
                actual: state.status,
                wanted,
            })
        }
    }

    /// `runc run -d --bundle B --pid-file P ID`. Used by the shim, which wires stdio itself.
    pub fn run_command(&self, id: &str, bundle: &Path, pid_file: &Path) -> Tool {
        self.tool()
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
    }

    /// The `runc checkpoint` command line, for callers that wire `--status-fd` or run it
    /// asynchronously. The image and work dirs must exist (see [`Runc::checkpoint`]).
    pub fn checkpoint_command(&self, id: &str, opts: &CheckpointOpts) -> Tool {
        let mut t = self
            .tool()
            .arg("checkpoint")
            .arg("--image-path")
            .arg(&opts.image_path)
            .arg("--work-path")
            .arg(&opts.work_path);
        for (on, flag) in [
            (opts.leave_running, "--leave-running"),
            (opts.tcp_established, "--tcp-established"),
            (opts.file_locks, "--file-locks"),
            (opts.ext_unix_sk, "--ext-unix-sk"),
            (opts.lazy_pages, "--lazy-pages"),
        ] {
            if on {
                t = t.arg(flag);
            }
        }
        if let Some(addr) = opts.page_server {
            t = t.arg("--page-server").arg(addr.to_string());
        }
        if let Some(fd) = opts.status_fd {
            t = t.arg("--status-fd").arg(fd.to_string());
        }
        if let Some(mode) = &opts.manage_cgroups_mode {
            t = t.arg("--manage-cgroups-mode").arg(mode);
        }
        if let Some(parent) = &opts.parent_path {
            t = t.arg("--parent-path").arg(parent);
        }
        t.arg(id)
    }

    /// Runs `runc checkpoint` to completion. Without `leave_running` the container's processes
    /// are killed after the dump and runc forgets the container.
    pub fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<(), RuncError> {
        create_dir(&opts.image_path)?;
        create_dir(&opts.work_path)?;
        match self.checkpoint_command(id, opts).run() {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(RuncError::NotFound { id: id.to_owned() }),
            // runc refused before CRIU ran: its stderr is the whole story.
            Err(e) if !opts.criu_log_path().exists() => Err(e.into()),
            Err(source) => Err(RuncError::Criu {
                source: Box::new(source),
                log: opts.criu_log_path(),
                criu_errors: criu_log_errors(&opts.criu_log_path()),
            }),
        }
    }

    /// The `runc restore --detach --bundle …` command line. The caller (the shim) wires stdio:
    /// runc reconnects the container's dumped stdio pipes to its own stdout/stderr.
    pub fn restore_command(&self, id: &str, opts: &RestoreOpts) -> Tool {
        let mut t = self
            .tool()
            .args(["restore", "--detach", "--bundle"])
            .arg(&opts.bundle)
            .arg("--image-path")
            .arg(&opts.image_path)
            .arg("--work-path")
            .arg(&opts.work_path);
        for (on, flag) in [
            (opts.tcp_established, "--tcp-established"),
            (opts.file_locks, "--file-locks"),
            (opts.ext_unix_sk, "--ext-unix-sk"),
            (opts.lazy_pages, "--lazy-pages"),
            (opts.auto_dedup, "--auto-dedup"),
        ] {
            if on {
                t = t.arg(flag);
            }
        }
        if let Some(mode) = &opts.manage_cgroups_mode {
            t = t.arg("--manage-cgroups-mode").arg(mode);
        }
        if let Some(pid_file) = &opts.pid_file {
            t = t.arg("--pid-file").arg(pid_file);
        }
        t.arg(id)
    }
}

fn create_dir(path: &Path) -> Result<(), RuncError> {
    std::fs::create_dir_all(path).map_err(|source| RuncError::Dir {
        path: path.to_owned(),
        source,
    })
}

/// runc says "container does not exist" (state, delete, kill, …) for an unknown id.
fn is_not_found(e: &ToolError) -> bool {
    e.stderr().is_some_and(|s| s.contains("does not exist"))
}

fn not_found_or(e: ToolError, id: &str) -> RuncError {
    if is_not_found(&e) {
        RuncError::NotFound { id: id.to_owned() }
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runc() -> Runc {
        Runc {
            binary: "runc".into(),
            root: "/run/ferry-test".into(),
            log: None,
        }
    }

    #[test]
    fn checkpoint_flags() {
        let opts = CheckpointOpts {
            image_path: "/img".into(),
            work_path: "/work".into(),
            tcp_established: true,
            page_server: Some("10.0.0.2:27000".parse().unwrap()),
            status_fd: Some(3),
            manage_cgroups_mode: Some("soft".into()),
            ..Default::default()
        };
        let args = runc().checkpoint_command("c1", &opts).display_args();
        assert_eq!(
            args,
            "--root /run/ferry-test checkpoint --image-path /img --work-path /work \
             --tcp-established --page-server 10.0.0.2:27000 --status-fd 3 \
             --manage-cgroups-mode soft c1"
        );
        assert_eq!(opts.criu_log_path(), Path::new("/work/dump.log"));
    }

    #[test]
    fn restore_is_detached_with_bundle() {
        let opts = RestoreOpts {
            image_path: "/img".into(),
            work_path: "/work".into(),
            bundle: "/b".into(),
            lazy_pages: true,
            pid_file: Some("/p".into()),
            ..Default::default()
        };
        let r = runc().with_log("/l.json");
        let args = r.restore_command("c1", &opts).display_args();
        assert_eq!(
            args,
            "--root /run/ferry-test --log /l.json --log-format json restore --detach \
             --bundle /b --image-path /img --work-path /work --lazy-pages --pid-file /p c1"
        );
        assert_eq!(opts.criu_log_path(), Path::new("/work/restore.log"));
        let consume = RestoreOpts {
            lazy_pages: false,
            auto_dedup: true,
            ..opts
        };
        assert!(r
            .restore_command("c1", &consume)
            .display_args()
            .contains("--work-path /work --auto-dedup --pid-file /p c1"));
    }

    #[test]
    fn parses_state_and_list() {
        let state = r#"{"ociVersion":"1.0.2-dev","id":"c1","pid":4242,"status":"running",
            "bundle":"/b","rootfs":"/b/rootfs","created":"2024-05-01T10:00:00.123456789Z","owner":""}"#;
        let s: RuncState = serde_json::from_str(state).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.status, RuncStatus::Running);
        let none: Option<Vec<RuncState>> = serde_json::from_str("null").unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn criu_errors_are_the_last_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        let mut text = String::from(
            "(00.001) Version: 4.2\n(00.002) Error (criu/util.c:1534): rlimit: Can't setup \
             RLIMIT_NOFILE for self: Operation not permitted\n",
        );
        for i in 0..10 {
            text.push_str(&format!("(00.0{i}) Error (criu/x.c:{i}): bad {i}\n"));
        }
        std::fs::write(&log, &text).unwrap();
        let errors = criu_log_errors(&log);
        assert_eq!(errors.len(), 8);
        assert_eq!(errors[7], "Error (criu/x.c:9): bad 9");
        let (few, _) = text.split_at(text.find("(00.02)").unwrap());
        std::fs::write(&log, few).unwrap();
        assert_eq!(criu_log_errors(&log).len(), 2, "rlimit line is left out");
        assert!(criu_log_errors(&dir.path().join("missing.log")).is_empty());
    }

    #[test]
    fn unknown_container() {
        use crate::criu::testutil::{absent, Need};
        if absent(&[Need::Root, Need::Runc]) {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let r = Runc::new(root.path());
        assert_eq!(r.state("ferry-no-such").unwrap(), None);
        assert!(r.list().unwrap().is_empty());
        r.delete("ferry-no-such", false).unwrap();
        r.delete("ferry-no-such", true).unwrap();
        assert!(matches!(
            r.kill("ferry-no-such", "KILL", false),
            Err(RuncError::NotFound { .. })
        ));
        assert!(matches!(
            r.pause("ferry-no-such"),
            Err(RuncError::NotFound { .. })
        ));
    }
}
