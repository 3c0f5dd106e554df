//! A workload check to run before freezing a container for a checkpoint or a migration: it
//! refuses, naming the process and the cause, the task states CRIU cannot dump here. Found late,
//! each of these fails the dump after the freeze (or, for a stopped task, hangs it).
//!
//! Each check was seen to fail with CRIU 4.2.1 on this machine (kernel 6.18, cgroup v1):
//! - a stopped task: CRIU seizing it inside the frozen cgroup-v1 freezer hangs in D state;
//! - a traced task: "Unable to interrupt task … Operation not permitted";
//! - a task whose uids or gids differ from CRIU's, when CRIU lacks CAP_SYS_RESOURCE:
//!   "Can't get rlimit 0: Operation not permitted" (prlimit(2) on another process needs
//!   matching real/effective/saved uid and gid, or that capability);
//! - an fd on an anonymous inode CRIU has no dumper for ([io_uring], [userfaultfd],
//!   [perf_event], bpf-map without libbpf, …): "Can't dump file N of that type".

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup-v1 hierarchies whose `tasks` file lists a container's threads, freezer first
/// (the one CRIU freezes).
const HIERARCHIES: [&str; 3] = ["freezer", "pids", "memory"];

/// CAP_SYS_RESOURCE's bit in `CapEff`.
const CAP_SYS_RESOURCE: u32 = 24;

/// The anonymous-inode files CRIU 4.2.1 can dump (`criu/files.c`: eventfd, epoll, inotify,
/// fanotify, signalfd, timerfd, pidfd before pidfs). bpf-map is left out: it needs a CRIU built
/// with libbpf, and ferry's is not.
const DUMPABLE_ANON: [&str; 7] = [
    "[eventfd]",
    "[eventpoll]",
    "inotify",
    "[fanotify]",
    "[signalfd]",
    "[timerfd]",
    "[pidfd]",
];

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The workload's fault: it holds state CRIU cannot dump.
    #[error("CRIU cannot dump this workload: {}", join(.0))]
    Refused(Vec<Refusal>),
    /// This host's fault: the container's cgroup could not be read.
    #[error(
        "could not list the container's tasks from cgroup {cgroup:?} (tried {tried}): {source}"
    )]
    Cgroup {
        cgroup: String,
        tried: String,
        #[source]
        source: io::Error,
    },
    /// This host's fault: /proc could not be read for a task that exists.
    #[error("could not read {path}: {source}")]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn join(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why CRIU cannot dump one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// State `T` (stopped by a signal) or `t` (stopped by a tracer).
    Stopped { state: char },
    /// Another process ptraces it.
    Traced { tracer: i32 },
    /// Real/effective/saved ids that are not CRIU's, and CRIU lacks CAP_SYS_RESOURCE.
    ForeignIds {
        uids: [u32; 3],
        gids: [u32; 3],
        criu_uid: u32,
        criu_gid: u32,
    },
    /// An open fd on an anonymous inode CRIU has no dumper for.
    UnsupportedFd { fd: i32, target: String },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Stopped { state } => write!(
                f,
                "is stopped (state {state}); CRIU hangs seizing a stopped task in a frozen \
                 cgroup, so resume it (SIGCONT) or detach its debugger first"
            ),
            Cause::Traced { tracer } => write!(
                f,
                "is traced by pid {tracer}; CRIU must ptrace every task itself, so detach the \
                 tracer first"
            ),
            Cause::ForeignIds {
                uids,
                gids,
                criu_uid,
                criu_gid,
            } => write!(
                f,
                "runs as uid {}/{}/{} gid {}/{}/{} (real/effective/saved) while CRIU runs as \
                 uid {criu_uid} gid {criu_gid} without CAP_SYS_RESOURCE, so CRIU cannot read \
                 its rlimits (\"Can't get rlimit: Operation not permitted\"); run the process \
                 as uid {criu_uid} gid {criu_gid}, or give ferryd CAP_SYS_RESOURCE",
                uids[0], uids[1], uids[2], gids[0], gids[1], gids[2]
            ),
            Cause::UnsupportedFd { fd, target } => write!(
                f,
                "holds fd {fd} on {target}, a kind of file CRIU cannot dump"
            ),
        }
    }
}

/// One process CRIU cannot dump, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The process (thread group) id.
    pub pid: i32,
    pub comm: String,
    /// Its command line, NULs as spaces (shortened).
    pub cmdline: String,
    pub cause: Cause,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} ({}, `{}`) {}",
            self.pid, self.comm, self.cmdline, self.cause
        )
    }
}

/// Every thread of a container, from its cgroup-v1 `tasks` file. `cgroup` is the path below a
/// hierarchy's root, e.g. `ferry/<id>` (the engine's `cgroup_parent/<id>`).
pub fn cgroup_tasks(cgroup: &str) -> Result<Vec<i32>, PreflightError> {
    let cgroup = cgroup.trim_matches('/');
    let mut first_err = None;
    for h in HIERARCHIES {
        let path = Path::new("/sys/fs/cgroup")
            .join(h)
            .join(cgroup)
            .join("tasks");
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(PreflightError::Cgroup {
        cgroup: cgroup.to_owned(),
        tried: HIERARCHIES
            .map(|h| format!("/sys/fs/cgroup/{h}"))
            .join(", "),
        source: first_err.expect("at least one hierarchy tried"),
    })
}

/// Checks every task of `pids` (each pid's whole thread group) for state CRIU cannot dump, and
/// refuses with every offending process named. Tasks that exit meanwhile are skipped.
pub fn check_workload(pids: &[i32]) -> Result<(), PreflightError> {
    let criu = CriuIdentity::current()?;
    let mut refusals: Vec<Refusal> = Vec::new();
    let mut fds_checked = BTreeSet::new();
    for tid in all_threads(pids)? {
        let Some(task) = read_task(tid)? else {
            continue;
        };
        let mut causes = task_causes(&task, &criu);
        if fds_checked.insert(task.tgid) {
            causes.extend(unsupported_fds(task.tgid)?);
        }
        for cause in causes {
            // Threads share most causes (SIGSTOP stops them all): name each process once.
            if !refusals
                .iter()
                .any(|r| r.pid == task.tgid && r.cause == cause)
            {
                refusals.push(Refusal {
                    pid: task.tgid,
                    comm: task.comm.clone(),
                    cmdline: cmdline(task.tgid),
                    cause,
                });
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Refused(refusals))
    }
}

/// Who CRIU runs as: this process's ids and capabilities (runc runs CRIU as ferryd's child).
struct CriuIdentity {
    uid: u32,
    gid: u32,
    sys_resource: bool,
}

impl CriuIdentity {
    fn current() -> Result<CriuIdentity, PreflightError> {
        let path = Path::new("/proc/self/status");
        let status = std::fs::read_to_string(path).map_err(|source| PreflightError::Proc {
            path: path.to_owned(),
            source,
        })?;
        let cap_eff = field(&status, "CapEff")
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        Ok(CriuIdentity {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            sys_resource: cap_eff & (1 << CAP_SYS_RESOURCE) != 0,
        })
    }
}

/// What /proc/TID/status says about one thread.
struct Task {
    tgid: i32,
    comm: String,
    state: char,
    tracer: i32,
    uids: [u32; 3],
    gids: [u32; 3],
}

fn task_causes(task: &Task, criu: &CriuIdentity) -> Vec<Cause> {
    let mut causes = Vec::new();
    if matches!(task.state, 'T' | 't') {
        causes.push(Cause::Stopped { state: task.state });
    }
    if task.tracer != 0 {
        causes.push(Cause::Traced {
            tracer: task.tracer,
        });
    }
    let foreign =
        task.uids.iter().any(|&u| u != criu.uid) || task.gids.iter().any(|&g| g != criu.gid);
    if foreign && !criu.sys_resource {
        causes.push(Cause::ForeignIds {
            uids: task.uids,
            gids: task.gids,
            criu_uid: criu.uid,
            criu_gid: criu.gid,
        });
    }
    causes
}

/// The threads of every pid's thread group, deduplicated and sorted.
fn all_threads(pids: &[i32]) -> Result<BTreeSet<i32>, PreflightError> {
    let mut tids = BTreeSet::new();
    for &pid in pids {
        let dir = PathBuf::from(format!("/proc/{pid}/task"));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if gone(&e) => continue,
            Err(source) => return Err(PreflightError::Proc { path: dir, source }),
        };
        tids.insert(pid);
        tids.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())),
        );
    }
    Ok(tids)
}

/// `None` when the thread has exited.
fn read_task(tid: i32) -> Result<Option<Task>, PreflightError> {
    let path = PathBuf::from(format!("/proc/{tid}/status"));
    let status = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if gone(&e) => return Ok(None),
        Err(source) => return Err(PreflightError::Proc { path, source }),
    };
    let ids = |name| -> [u32; 3] {
        let v: Vec<u32> = field(&status, name)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        [0, 1, 2].map(|i| v.get(i).copied().unwrap_or(0))
    };
    let num = |name| field(&status, name).and_then(|v| v.trim().parse().ok());
    Ok(Some(Task {
        tgid: num("Tgid").unwrap_or(tid),
        comm: field(&status, "Name").unwrap_or("?").trim().to_owned(),
        state: field(&status, "State")
            .and_then(|v| v.trim().chars().next())
            .unwrap_or('?'),
        tracer: num("TracerPid").unwrap_or(0),
        uids: ids("Uid"),
        gids: ids("Gid"),
    }))
}

/// The process's fds on anonymous inodes CRIU cannot dump.
fn unsupported_fds(pid: i32) -> Result<Vec<Cause>, PreflightError> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if gone(&e) => return Ok(Vec::new()),
        Err(source) => return Err(PreflightError::Proc { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        // An fd closed since the listing has no link any more: nothing to dump.
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let Some(kind) = target.strip_prefix("anon_inode:") else {
            continue;
        };
        if !DUMPABLE_ANON.contains(&kind) {
            let fd = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1);
            out.push(Cause::UnsupportedFd { fd, target });
        }
    }
    out.sort_by_key(|c| match c {
        Cause::UnsupportedFd { fd, .. } => *fd,
        _ => 0,
    });
    Ok(out)
}

/// The command line, NULs as spaces, at most 200 bytes (a kernel thread has none).
fn cmdline(pid: i32) -> String {
    const MAX: usize = 200;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut s = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .replace('\0', " ");
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
}

/// The task exited between listing and reading (ENOENT, or ESRCH for a dying one).
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
mod tests;
