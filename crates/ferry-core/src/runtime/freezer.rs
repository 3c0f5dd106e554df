//! One container's cgroup-v1 freezer: read its state, freeze or thaw it, and list its tasks
//! with their scheduler state.
//!
//! CRIU freezes a container through this cgroup before a dump and thaws it when a dump fails.
//! When CRIU itself is killed or hangs, nothing thaws it: a rollback must do it here and check
//! that it took (see `migration::resume`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the v1 freezer hierarchy is mounted (hybrid cgroup layout).
pub const FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer";

const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

impl std::fmt::Display for FreezerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FreezerState::Thawed => "THAWED",
            FreezerState::Freezing => "FREEZING",
            FreezerState::Frozen => "FROZEN",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FreezerError {
    #[error("freezer cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("freezer cgroup {path} reads {text:?}, which is not a freezer state")]
    Unknown { path: PathBuf, text: String },
    #[error("freezer cgroup {path} still reads {state} {waited:?} after writing {wanted}{cause}")]
    Stuck {
        path: PathBuf,
        state: FreezerState,
        wanted: FreezerState,
        waited: Duration,
        /// Why, when the kernel says (a frozen parent cgroup keeps its children frozen).
        cause: String,
    },
}

/// A task (thread) of the cgroup and its state letter from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Task {
    pub tid: i32,
    pub state: char,
    pub comm: String,
}

impl Task {
    /// Stopped by job control (SIGSTOP/SIGTSTP...): `T`.
    pub fn job_stopped(&self) -> bool {
        self.state == 'T'
    }

    /// Stopped for a tracer (CRIU seizes tasks with ptrace): `t`.
    pub fn trace_stopped(&self) -> bool {
        self.state == 't'
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, state {})", self.tid, self.comm, self.state)
    }
}

/// The freezer cgroup of one container.
#[derive(Debug, Clone)]
pub struct Freezer {
    dir: PathBuf,
}

impl Freezer {
    /// The cgroup runc creates for a ferry container: `<cgroup_parent>/<id>` (see the spec's
    /// `cgroupsPath`).
    pub fn for_container(cgroup_parent: &str, id: &str) -> Self {
        let parent = cgroup_parent.trim_matches('/');
        Freezer::at(Path::new(FREEZER_ROOT).join(parent).join(id))
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Freezer { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn exists(&self) -> bool {
        self.dir.join("freezer.state").exists()
    }

    fn io(&self, op: &'static str, file: &str) -> impl FnOnce(std::io::Error) -> FreezerError {
        let path = self.dir.join(file);
        move |source| FreezerError::Io { path, op, source }
    }

    pub fn state(&self) -> Result<FreezerState, FreezerError> {
        let text = std::fs::read_to_string(self.dir.join("freezer.state"))
            .map_err(self.io("read", "freezer.state"))?;
        match text.trim() {
            "THAWED" => Ok(FreezerState::Thawed),
            "FREEZING" => Ok(FreezerState::Freezing),
            "FROZEN" => Ok(FreezerState::Frozen),
            other => Err(FreezerError::Unknown {
                path: self.dir.join("freezer.state"),
                text: other.to_owned(),
            }),
        }
    }

    fn write_state(&self, state: FreezerState) -> Result<(), FreezerError> {
        std::fs::write(self.dir.join("freezer.state"), state.to_string())
            .map_err(self.io("write", "freezer.state"))
    }

    /// Thaws the cgroup and waits until it reads THAWED (at most `timeout`).
    pub fn thaw(&self, timeout: Duration) -> Result<(), FreezerError> {
        self.set_and_wait(FreezerState::Thawed, timeout)
    }

    /// Freezes the cgroup and waits until it reads FROZEN (at most `timeout`).
    pub fn freeze(&self, timeout: Duration) -> Result<(), FreezerError> {
        self.set_and_wait(FreezerState::Frozen, timeout)
    }

    fn set_and_wait(&self, wanted: FreezerState, timeout: Duration) -> Result<(), FreezerError> {
        let start = Instant::now();
        // A freeze usually settles within a few milliseconds: look again soon, then back off.
        let mut pause = Duration::from_millis(1);
        loop {
            // Written again on every round: a FREEZING cgroup retries the tasks it missed.
            self.write_state(wanted)?;
            let state = self.state()?;
            if state == wanted {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(FreezerError::Stuck {
                    path: self.dir.clone(),
                    state,
                    wanted,
                    waited: timeout,
                    cause: self.stuck_cause(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(POLL);
        }
    }

    /// The kernel's explanation for a cgroup that will not thaw, as text for an error.
    fn stuck_cause(&self) -> String {
        let read = |f: &str| {
            std::fs::read_to_string(self.dir.join(f))
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
        };
        if read("freezer.parent_freezing") {
            ": a parent cgroup is frozen".into()
        } else if read("freezer.self_freezing") {
            ": the cgroup itself is still set to freeze".into()
        } else {
            String::new()
        }
    }

    /// Every thread in the cgroup with its current state. Threads that exit while being read
    /// are left out.
    pub fn tasks(&self) -> Result<Vec<Task>, FreezerError> {
        let text =
            std::fs::read_to_string(self.dir.join("tasks")).map_err(self.io("read", "tasks"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(read_task)
            .collect())
    }
}

/// State and name of thread `tid` (any thread id works under /proc).
fn read_task(tid: i32) -> Option<Task> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let state = tail.trim_start().chars().next()?;
    Some(Task { tid, state, comm })
}

#[cfg(test)]
// Test workloads (sleep, sh) are processes to act on, not tools: spawned directly, not via Tool.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn container_path_ignores_slashes_around_the_parent() {
        let f = Freezer::for_container("/ferry/", "abc");
        assert_eq!(f.dir(), Path::new("/sys/fs/cgroup/freezer/ferry/abc"));
    }

    #[test]
    fn own_task_is_read() {
        let me = std::process::id() as i32;
        let t = read_task(me).expect("own stat");
        assert!(matches!(t.state, 'R' | 'S'), "{t}");
        assert!(!t.comm.is_empty());
    }

    /// A real freezer cgroup holding a real process: freeze, thaw, task states.
    #[test]
    fn freeze_and_thaw_a_real_cgroup() {
        if !Path::new(FREEZER_ROOT).exists() {
            eprintln!("SKIPPED: no cgroup-v1 freezer mounted at {FREEZER_ROOT}");
            return;
        }
        let name = format!("ferry-freezer-test-{}", std::process::id());
        let dir = Path::new(FREEZER_ROOT).join(&name);
        std::fs::create_dir(&dir).expect("create freezer cgroup");
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let f = Freezer::at(&dir);
        let result = std::panic::catch_unwind(|| {
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move");
            assert_eq!(f.state().unwrap(), FreezerState::Thawed);
            f.freeze(Duration::from_secs(5)).unwrap();
            assert_eq!(f.state().unwrap(), FreezerState::Frozen);
            f.thaw(Duration::from_secs(5)).unwrap();
            assert_eq!(f.state().unwrap(), FreezerState::Thawed);
            let tasks = f.tasks().unwrap();
            assert_eq!(tasks.len(), 1, "{tasks:?}");
            assert_eq!(tasks[0].comm, "sleep");
            assert!(!tasks[0].job_stopped() && !tasks[0].trace_stopped());
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !f.tasks().unwrap()[0].job_stopped() {
                assert!(Instant::now() < deadline, "sleep never showed as stopped");
                std::thread::sleep(POLL);
            }
        });
        // A frozen task cannot die: thaw first, whatever the test left.
        std::fs::write(dir.join("freezer.state"), "THAWED").expect("thaw for cleanup");
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        std::fs::remove_dir(&dir).expect("remove freezer cgroup");
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
