//! Real processes in each state the preflight refuses, and CRIU itself agreeing where a dump of
//! a host process shows the failure quickly (a stopped task only hangs CRIU under the freezer).

// Test workloads (sleepers, shells, the test binary as a shim) are processes to act on, not
// tools whose failures ferry reports: they are spawned directly, not through Tool.
#![allow(clippy::disallowed_methods)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;
use crate::criu::testutil::{absent, Need};
use crate::criu::{criu_tool, testutil};

/// A busybox sleep in its own session (so CRIU dumps it without --shell-job), killed on drop.
struct Proc {
    child: Child,
}

impl Proc {
    /// `setsid [wrapper…] /bin/busybox sleep N`; `setup` runs in the child before exec.
    fn spawn(wrapper: &[&str], setup: Option<fn() -> io::Result<()>>) -> Proc {
        let arg = format!("{}", 700_000 + rand::random::<u32>() % 100_000);
        let mut cmd = Command::new("setsid");
        cmd.args(wrapper)
            .args(["/bin/busybox", "sleep", &arg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(setup) = setup {
            // SAFETY: pre_exec runs `setup` between fork and exec of a multithreaded process,
            // where only async-signal-safe code may run. Every `setup` given here
            // (make_userfaultfd, make_io_uring, make_epoll_and_inotify, ...) makes raw syscalls
            // only: no allocation, no locks.
            unsafe {
                cmd.pre_exec(setup);
            }
        }
        // Owned by a Proc at once, so a failed start below still kills and reaps it.
        let p = Proc {
            child: cmd.spawn().expect("spawn setsid busybox sleep"),
        };
        // setsid and setpriv exec in place: wait until the pid is the sleep itself.
        let path = format!("/proc/{}/cmdline", p.pid());
        for _ in 0..300 {
            let c = std::fs::read(&path).unwrap_or_default();
            if c.starts_with(b"/bin/busybox\0sleep\0") {
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("sleeper {} did not start", p.pid());
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    fn wait_for_state(&self, want: char) {
        for _ in 0..300 {
            if read_task(self.pid())
                .unwrap()
                .is_some_and(|t| t.state == want)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("process {} never reached state {want}", self.pid());
    }

    /// `criu dump --leave-running` of this process; Err carries CRIU's error lines.
    fn criu_dump(&self) -> Result<(), String> {
        let _turn = testutil::serial();
        let dir = tempfile::tempdir().unwrap();
        criu_tool()
            .args([
                "dump",
                "--leave-running",
                "-t",
                &self.pid().to_string(),
                "-D",
            ])
            .arg(dir.path())
            .args(["-o", "dump.log", "-v4"])
            .run()
            .map(|_| ())
            .map_err(|_| {
                let log = std::fs::read_to_string(dir.path().join("dump.log")).unwrap_or_default();
                log.lines()
                    .filter(|l| l.contains("Error") && !l.contains("Can't setup RLIMIT"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refusals(pids: &[i32]) -> Vec<Refusal> {
    match check_workload(pids) {
        Ok(()) => Vec::new(),
        Err(PreflightError::Refused(r)) => r,
        Err(e) => panic!("preflight could not check: {e}"),
    }
}

fn has_sys_resource() -> bool {
    CriuIdentity::current().unwrap().sys_resource
}

#[test]
fn a_plain_sleeper_passes_and_criu_dumps_it() {
    if absent(&[Need::Root, Need::Criu]) {
        return;
    }
    let p = Proc::spawn(&[], None);
    assert_eq!(refusals(&[p.pid()]), Vec::new());
    p.criu_dump()
        .expect("CRIU dumps what the preflight lets through");
}

#[test]
fn a_stopped_task_is_refused_by_pid_name_and_cause() {
    let p = Proc::spawn(&[], None);
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    p.wait_for_state('T');
    let r = refusals(&[p.pid()]);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].pid, p.pid());
    assert_eq!(r[0].comm, "busybox");
    assert!(r[0].cmdline.starts_with("/bin/busybox sleep "), "{r:?}");
    assert_eq!(r[0].cause, Cause::Stopped { state: 'T' });
    let msg = check_workload(&[p.pid()]).unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "process {} (busybox, `/bin/busybox sleep",
            p.pid()
        )) && msg.contains("is stopped (state T)")
            && msg.contains("SIGCONT"),
        "{msg}"
    );
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_for_state('S');
    assert_eq!(refusals(&[p.pid()]), Vec::new(), "passes once continued");
}

#[test]
fn a_traced_task_is_refused_and_criu_agrees() {
    if absent(&[Need::Root, Need::Criu]) {
        return;
    }
    let p = Proc::spawn(&[], None);
    // PTRACE_SEIZE attaches without stopping the tracee; the tracer is this test's thread.
    // SAFETY: PTRACE_SEIZE takes no memory from us (addr and data are null); the pid is our
    // own child, alive until `p` drops.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            p.pid(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    assert_eq!(rc, 0, "PTRACE_SEIZE: {}", io::Error::last_os_error());
    let r = refusals(&[p.pid()]);
    let me = nix::unistd::gettid().as_raw();
    assert_eq!(
        r.iter().map(|r| &r.cause).collect::<Vec<_>>(),
        vec![&Cause::Traced { tracer: me }]
    );
    let err = p.criu_dump().expect_err("CRIU cannot seize a traced task");
    assert!(err.contains("Dumping FAILED"), "{err}");
}

#[test]
fn another_uid_or_gid_is_refused_without_cap_sys_resource_and_criu_agrees() {
    if absent(&[Need::Root, Need::Criu]) {
        return;
    }
    for (wrapper, uids, gids) in [
        (
            &[
                "setpriv",
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
            ][..],
            [1000; 3],
            [1000; 3],
        ),
        (
            &["setpriv", "--regid", "1000", "--clear-groups"][..],
            [0; 3],
            [1000; 3],
        ),
    ] {
        let p = Proc::spawn(wrapper, None);
        let r = refusals(&[p.pid()]);
        let dumped = p.criu_dump();
        if has_sys_resource() {
            eprintln!("NOTE: this process has CAP_SYS_RESOURCE: foreign ids must pass");
            assert_eq!(r, Vec::new());
            dumped.expect("CRIU with CAP_SYS_RESOURCE dumps another uid");
            continue;
        }
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            r[0].cause,
            Cause::ForeignIds {
                uids,
                gids,
                criu_uid: 0,
                criu_gid: 0
            }
        );
        assert!(r[0].to_string().contains("Can't get rlimit"), "{}", r[0]);
        let err = dumped.expect_err("CRIU without CAP_SYS_RESOURCE cannot dump another uid");
        assert!(err.contains("Can't get rlimit"), "{err}");
    }
}

fn make_userfaultfd() -> io::Result<()> {
    // SAFETY: userfaultfd(2) takes only a flags integer; the fd it makes is left open on
    // purpose (the sleeper inherits it).
    if unsafe { libc::syscall(libc::SYS_userfaultfd, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn make_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: the kernel writes the ring's parameters into `params`, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    // The ring is always close-on-exec: clear that so the sleeper inherits it.
    // SAFETY: fcntl(F_SETFD) on the fd io_uring_setup just returned (checked non-negative by
    // short-circuit); it passes no pointers.
    if fd < 0 || unsafe { libc::fcntl(fd as i32, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn fds_criu_cannot_dump_are_refused_and_criu_agrees() {
    if absent(&[Need::Root, Need::Criu]) {
        return;
    }
    for (setup, name) in [
        (
            make_userfaultfd as fn() -> io::Result<()>,
            "anon_inode:[userfaultfd]",
        ),
        (make_io_uring, "anon_inode:[io_uring]"),
    ] {
        let p = Proc::spawn(&[], Some(setup));
        let r = refusals(&[p.pid()]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            matches!(&r[0].cause, Cause::UnsupportedFd { target, .. } if target == name),
            "{r:?}"
        );
        assert!(r[0].to_string().contains(name), "{}", r[0]);
        p.criu_dump().expect_err("CRIU cannot dump this fd");
    }
}

#[test]
fn dumpable_anon_fds_pass() {
    if absent(&[Need::Root, Need::Criu]) {
        return;
    }
    // An epoll fd and an inotify fd: CRIU dumps both.
    fn make_epoll_and_inotify() -> io::Result<()> {
        // SAFETY: epoll_create1 and inotify_init1 take only flag integers and return new fds
        // (left open on purpose for the sleeper to inherit).
        unsafe {
            if libc::epoll_create1(0) < 0 || libc::inotify_init1(0) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
    let p = Proc::spawn(&[], Some(make_epoll_and_inotify));
    assert_eq!(refusals(&[p.pid()]), Vec::new());
}

#[test]
fn every_thread_of_a_process_is_checked_and_exited_pids_are_skipped() {
    // This test process has several threads; all of them are listed.
    let me = std::process::id() as i32;
    let threads = all_threads(&[me]).unwrap();
    assert!(threads.contains(&me) && threads.contains(&nix::unistd::gettid().as_raw()));
    let p = Proc::spawn(&[], None);
    let gone_pid = p.pid();
    drop(p);
    assert!(all_threads(&[gone_pid]).unwrap().is_empty());
    check_workload(&[gone_pid]).expect("an exited task is no reason to refuse");
}

#[test]
fn cgroup_tasks_lists_every_thread_of_a_cgroup() {
    let name = format!("ferry-preflight-test-{}", std::process::id());
    let dir = Path::new("/sys/fs/cgroup/pids").join(&name);
    if std::fs::create_dir(&dir).is_err() {
        eprintln!(
            "SKIPPED: cannot create a cgroup-v1 pids cgroup at {}",
            dir.display()
        );
        return;
    }
    struct Rmdir(PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            if let Err(e) = std::fs::remove_dir(&self.0) {
                eprintln!("could not remove test cgroup {}: {e}", self.0.display());
            }
        }
    }
    let _rm = Rmdir(dir.clone());
    let p = Proc::spawn(&[], None);
    std::fs::write(dir.join("cgroup.procs"), p.pid().to_string()).unwrap();
    assert_eq!(cgroup_tasks(&format!("/{name}/")).unwrap(), vec![p.pid()]);
    drop(p);
    let missing = cgroup_tasks("ferry-no-such-cgroup")
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("ferry-no-such-cgroup") && missing.contains("freezer"),
        "{missing}"
    );
}
