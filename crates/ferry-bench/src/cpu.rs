//! CPU seconds per side of a move.
//!
//! A side's work is spread over processes that come and go: ferryd (or the podman CLI), the
//! runc and CRIU it runs, and the container's own tasks, where CRIU's parasite (dump) and
//! restorer (restore) do the page work. So a side is counted as:
//! - a long-lived daemon's own time plus that of its reaped children (`/proc/<pid>/stat`);
//! - this process's reaped children (`getrusage(RUSAGE_CHILDREN)`): the CLI commands the
//!   suite ran, and what they reaped;
//! - a cgroup's `cpuacct.usage` (cgroup v1), which counts the tasks of every container below
//!   it, also of containers removed since (the kernel charges every ancestor).

use std::path::{Path, PathBuf};

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime + cutime + cstime of `pid`, in seconds (0 if it is gone).
pub fn process_tree_s(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces): state is field 3, utime field 14.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t: f64 = (11..=14)
        .filter_map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    t / ticks_per_s()
}

/// CPU seconds of this process's reaped children.
pub fn children_s() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    u.map_or(0.0, |u| {
        let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        tv(u.user_time()) + tv(u.system_time())
    })
}

/// CPU seconds of the calling thread (the suite's own copy loops).
pub fn thread_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc == 0 {
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    } else {
        0.0
    }
}

/// A cgroup-v1 cpuacct group, by its path below the hierarchy (`ferrysuite-host-a`).
#[derive(Debug, Clone)]
pub struct Cgroup(PathBuf);

impl Cgroup {
    pub fn new(relative: &str) -> Cgroup {
        Cgroup(Path::new("/sys/fs/cgroup/cpuacct").join(relative.trim_start_matches('/')))
    }

    /// Seconds charged so far (0 if the group does not exist yet).
    pub fn usage_s(&self) -> f64 {
        std::fs::read_to_string(self.0.join("cpuacct.usage"))
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .map_or(0.0, |ns| ns / 1e9)
    }

    /// Creates the group if missing, so a counter read before the first container exists
    /// and keeps counting after the last one is gone.
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)
    }

    /// Removes the group in every hierarchy (Podman creates it in all of them, with a
    /// `conmon` group below), deepest first; the groups that could not go.
    pub fn remove_everywhere(&self) -> Vec<String> {
        let Some(rel) = self.0.strip_prefix("/sys/fs/cgroup/cpuacct").ok() else {
            return Vec::new();
        };
        let mut dirs = Vec::new();
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return vec!["reading /sys/fs/cgroup".into()];
        };
        for h in hierarchies.flatten() {
            collect_dirs(&h.path().join(rel), &mut dirs);
        }
        dirs.sort_by_key(|d: &PathBuf| std::cmp::Reverse(d.components().count()));
        dirs.into_iter()
            .filter_map(|d| {
                std::fs::remove_dir(&d)
                    .err()
                    .map(|e| format!("removing cgroup {}: {e}", d.display()))
            })
            .collect()
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    // A symlinked hierarchy (cpu -> cpu,cpuacct) is the same directory: count it once.
    let Ok(real) = std::fs::canonicalize(dir) else {
        return;
    };
    if out.contains(&real) {
        return;
    }
    out.push(real.clone());
    if let Ok(entries) = std::fs::read_dir(&real) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}
