//! Taking a lab down, including after a crashed run: every step tolerates things that are
//! already gone, and problems are collected as warnings rather than stopping the cleanup.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_core::network::delete_netns;
use ferry_core::tool::Tool;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::state::{HostHandle, LabState};

/// Tears down whatever the lab at `lab.dir` with `lab.prefix` left: ferryds, runc containers,
/// processes in lab namespaces, the namespaces, mounts under the lab dir, cgroups
/// `<prefix>-*`, sockets and the state file. Host dirs (logs, roots) are kept unless `purge`.
/// Returns warnings for what could not be cleaned.
pub fn teardown(lab: &LabState, purge: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    let hosts = lab.all_hosts();
    for h in &hosts {
        stop_ferryd(h, &mut warnings);
    }
    for h in &hosts {
        delete_runc_containers(h, &mut warnings);
    }
    let netns = lab_netns(lab);
    kill_processes_in(&netns, &mut warnings);
    for ns in &netns {
        if let Err(e) = delete_netns(ns) {
            warnings.push(format!("deleting netns {}: {e}", ns.display()));
        }
    }
    warnings.extend(unmount_under(&lab.dir));
    remove_cgroups(&lab.prefix, &mut warnings);
    for p in [lab.sock_dir(), LabState::file(&lab.dir)] {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    if purge {
        if let Err(e) = std::fs::remove_dir_all(&lab.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warnings.push(format!("removing {}: {e}", lab.dir.display()));
            }
        }
    }
    warnings
}

/// The lab's netns files: the recorded ones plus any other `/run/netns/<prefix>-*` (a run that
/// crashed before recording its host count).
fn lab_netns(lab: &LabState) -> Vec<PathBuf> {
    let mut all = lab.all_netns();
    let known: HashSet<_> = all.iter().cloned().collect();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        let mut extra: Vec<_> = entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", lab.prefix))
            })
            .map(|e| e.path())
            .filter(|p| !known.contains(p))
            .collect();
        extra.sort();
        all.splice(0..0, extra);
    }
    all
}

fn alive(pid: i32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether `pid` still is a ferryd (pids get reused). The name may be argv[1] when ferryd is
/// a script run by an interpreter (test doubles).
fn is_ferryd(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline.split(|b| *b == 0).take(2).any(|arg| {
        Path::new(std::ffi::OsStr::from_bytes(arg))
            .file_name()
            .is_some_and(|n| n == "ferryd")
    })
}

fn stop_ferryd(h: &HostHandle, warnings: &mut Vec<String>) {
    let Some(pid) = h.pid() else { return };
    if alive(pid) && is_ferryd(pid) {
        // ferryd is a session and group leader: its helpers (page servers …) go with it.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            warnings.push(format!(
                "ferryd of {} (pid {pid}) ignored SIGTERM; killed",
                h.name
            ));
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(&h.pidfile);
}

fn delete_runc_containers(h: &HostHandle, warnings: &mut Vec<String>) {
    if !h.runc_root.is_dir() {
        return;
    }
    let runc = || Tool::new("runc").arg("--root").arg(&h.runc_root);
    let ids = match runc().args(["list", "-q"]).run_text() {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!("listing runc containers of {}: {e}", h.name));
            return;
        }
    };
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Err(e) = runc().args(["delete", "--force", id]).run() {
            warnings.push(format!("deleting container {id} of {}: {e}", h.name));
        }
    }
}

/// Kills every process whose network namespace is one of `netns` (left over from `exec`,
/// crashed ferryds, page servers).
fn kill_processes_in(netns: &[PathBuf], warnings: &mut Vec<String>) {
    // A mounted netns file stats as the namespace itself: same device as our own ns files.
    let Ok(nsfs_dev) = std::fs::metadata("/proc/self/ns/net").map(|m| m.dev()) else {
        return;
    };
    let inodes: HashSet<u64> = netns
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.dev() == nsfs_dev)
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let ino = link
            .to_string_lossy()
            .strip_prefix("net:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok());
        if ino.is_some_and(|i| inodes.contains(&i)) {
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGKILL) {
                warnings.push(format!("killing pid {pid} left in a lab netns: {e}"));
            }
        }
    }
}

/// Lazily unmounts every mount at or below `dir` in our mount namespace, deepest first;
/// returns what could not be unmounted.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec!["reading /proc/self/mountinfo".into()];
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
        .into_iter()
        .filter_map(|p| {
            nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                .err()
                .filter(|e| *e != nix::Error::EINVAL && *e != nix::Error::ENOENT)
                .map(|e| format!("unmounting {}: {e}", p.display()))
        })
        .collect()
}

/// Removes cgroup directories `<prefix>-*` (and everything below, deepest first) in every
/// hierarchy; busy ones stay and are reported.
fn remove_cgroups(prefix: &str, warnings: &mut Vec<String>) {
    let base = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![base.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(base) {
        hierarchies.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let wanted = format!("{prefix}-");
    for h in hierarchies {
        let Ok(entries) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && e.file_name().to_string_lossy().starts_with(&wanted)
            {
                remove_cgroup_tree(&e.path(), warnings);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path, warnings: &mut Vec<String>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path(), warnings);
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        warnings.push(format!("removing cgroup {}: {e}", dir.display()));
    }
}
