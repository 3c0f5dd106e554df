//! Real processes to checkpoint in tests: a `sleep` in its own session (so CRIU can dump it
//! without --shell-job), dumped and restored with the installed CRIU.

// Test workloads (sleepers, shells, the test binary as a shim) are processes to act on, not
// tools whose failures ferry reports: they are spawned directly, not through Tool.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::{criu_tool, explain_log};

use std::sync::atomic::{AtomicU32, Ordering};

/// Something a unit test needs from the host that a plain `cargo test` may not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Effective uid 0 (namespaces, cgroups, CRIU dumps).
    Root,
    /// The CRIU binary ferry would run (`criu::criu_path`), answering `--version`.
    Criu,
    /// The runc binary ferry would run (`$FERRY_RUNC` or `runc`), answering `--version`.
    Runc,
}

/// Set (to anything but empty or `0`) where every capability must be present, as in CI
/// (`scripts/test.sh`): a test that would skip fails instead, so CI never passes by skipping.
pub(crate) const NO_SKIP_ENV: &str = "FERRY_TEST_NO_SKIP";

fn answers_version(tool: crate::tool::Tool) -> bool {
    tool.arg("--version").run().is_ok()
}

fn present(need: Need) -> bool {
    static CRIU: OnceLock<bool> = OnceLock::new();
    static RUNC: OnceLock<bool> = OnceLock::new();
    match need {
        Need::Root => nix::unistd::geteuid().is_root(),
        Need::Criu => *CRIU.get_or_init(|| answers_version(super::criu_tool())),
        Need::Runc => *RUNC.get_or_init(|| {
            answers_version(crate::tool::Tool::new(
                crate::runtime::runc::Runc::new("/run/ferry-unused").binary,
            ))
        }),
    }
}

/// True when the host lacks something in `needs`: the caller returns at once (the test is
/// skipped), and this says loudly on stderr which test skipped and what is absent. Under
/// [`NO_SKIP_ENV`] it panics instead.
///
/// ```ignore
/// if absent(&[Need::Root, Need::Criu]) { return; }
/// ```
pub(crate) fn absent(needs: &[Need]) -> bool {
    let missing: Vec<Need> = needs.iter().copied().filter(|n| !present(*n)).collect();
    if missing.is_empty() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let what = missing
        .iter()
        .map(|n| match n {
            Need::Root => "root (euid 0)".to_owned(),
            Need::Criu => format!("CRIU ({} --version fails)", super::criu_path().display()),
            Need::Runc => "runc (runc --version fails; set FERRY_RUNC)".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let forbid = std::env::var(NO_SKIP_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !forbid,
        "{test}: needs {what}, and {NO_SKIP_ENV} forbids skipping"
    );
    // Straight to stderr, not eprintln!: libtest hides eprintln! of a passing test, and a
    // skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {what} (scripts/setup.sh installs CRIU and runc; run as root)"
    );
    true
}

static NEXT_SLEEPER: AtomicU32 = AtomicU32::new(0);

/// A sleep duration unique to one test sleeper: it finds the restored copy (whose pid may differ)
/// and makes sure cleanup never signals an unrelated process.
fn unique_sleep_arg() -> String {
    let n = NEXT_SLEEPER.fetch_add(1, Ordering::Relaxed);
    format!("{}{:03}", 100_000 + std::process::id() % 100_000, n % 1000)
}

/// CRIU tests that dump and restore host processes take turns: a restore claims specific pids,
/// and two at once on a two-core machine were seen to step on each other.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Sleeper {
    /// The sleeper itself, or the `unshare` that forked it into a new pid namespace.
    child: Child,
    pid: u32,
    arg: String,
}

impl Sleeper {
    pub(crate) fn spawn() -> Sleeper {
        let arg = unique_sleep_arg();
        let child = Command::new("setsid")
            .args(["/bin/busybox", "sleep", &arg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn setsid busybox sleep");
        // setsid(1) execs in place when the caller is not a group leader, so the pid is the
        // sleeper's own; wait until the exec happened.
        let pid = child.id();
        wait_until_sleeping(pid, &arg);
        Sleeper { child, pid, arg }
    }

    /// A sleeper that is pid 1 of its own pid namespace, so CRIU restores it into a new one and
    /// its pid cannot clash with the still-frozen original (post-copy keeps the source frozen
    /// until every page has been pulled).
    pub(crate) fn spawn_in_pid_namespace() -> Sleeper {
        let arg = unique_sleep_arg();
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "setsid", "/bin/busybox", "sleep", &arg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unshare setsid busybox sleep");
        let children = format!("/proc/{0}/task/{0}/children", child.id());
        for _ in 0..200 {
            let pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
            if let Some(pid) = pid {
                wait_until_sleeping(pid, &arg);
                return Sleeper { child, pid, arg };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("unshare {} did not fork the sleeper", child.id());
    }

    /// The pid to dump.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// What identifies this sleeper and its restored copies.
    pub(crate) fn tag(&self) -> String {
        self.arg.clone()
    }

    /// After a successful dump CRIU killed it; reap it so the pid is free for restore.
    pub(crate) fn reap(mut self) {
        let status = self.child.wait().expect("wait for dumped sleeper");
        assert!(
            !status.success(),
            "the dumped sleeper should have been killed: {status}"
        );
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_until_sleeping(pid: u32, arg: &str) {
    for _ in 0..200 {
        if is_our_sleeper(pid, arg) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("sleeper {pid} did not start");
}

fn is_our_sleeper(pid: u32, arg: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"busybox")) && args.contains(&arg.as_bytes())
        })
        .unwrap_or(false)
}

/// Spawns a sleeper and dumps it into `images_dir` (log `dump.log` there), with `extra` CRIU
/// options; returns its tag.
pub(crate) fn dump_sleeper(images_dir: &Path, extra: &[&str]) -> String {
    let sleeper = Sleeper::spawn();
    let tag = sleeper.tag();
    let pid = sleeper.pid();
    let result = criu_tool()
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(images_dir)
        .args(["-o", "dump.log", "-v4"])
        .args(extra)
        .run();
    if let Err(e) = result {
        panic!(
            "criu dump: {e}; {}",
            explain_log(&images_dir.join("dump.log"))
        );
    }
    sleeper.reap();
    tag
}

/// A restored process, killed when dropped.
pub(crate) struct RestoredProcess {
    pid: u32,
    tag: String,
}

impl RestoredProcess {
    pub(crate) fn is_alive(&self) -> bool {
        is_our_sleeper(self.pid, &self.tag)
    }
}

impl Drop for RestoredProcess {
    fn drop(&mut self) {
        if self.is_alive() {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `criu restore -d` from `images_dir` (log `restore.log` there); the copy's pid comes from
/// CRIU's `--pidfile`. Looking for the copy by its argv instead raced with post-copy: a lazily
/// restored process's `/proc/PID/cmdline` lives in memory that may not have arrived yet, so the
/// search found only the frozen original, which the dump then killed (issue 8's flaky test).
pub(crate) fn restore_detached(images_dir: &Path, tag: &str, extra: &[&str]) -> RestoredProcess {
    let pidfile = images_dir.join("restored.pid");
    let result = criu_tool()
        .args(["restore", "-d", "-D"])
        .arg(images_dir)
        .args(["-o", "restore.log", "-v4", "--pidfile"])
        .arg(&pidfile)
        .args(extra)
        .run();
    if let Err(e) = result {
        panic!(
            "criu restore: {e}; {}",
            explain_log(&images_dir.join("restore.log"))
        );
    }
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("criu restore wrote no pid to {}", pidfile.display()));
    RestoredProcess {
        pid,
        tag: tag.to_owned(),
    }
}

/// Copies the regular files of `from` into `to`, except logs and files `to` already has.
pub(crate) fn copy_images(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let target = to.join(&name);
        if e.file_type().unwrap().is_file()
            && !name.to_string_lossy().ends_with(".log")
            && !target.exists()
        {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
