//! Shim tests against real runc and CRIU. The shim runs as a separate, detached process: the test
//! binary re-executes itself with only [`shim_entrypoint`] selected.

// Test workloads (sleepers, shells, the test binary as a shim) are processes to act on, not
// tools whose failures ferry reports: they are spawned directly, not through Tool.
#![allow(clippy::disallowed_methods)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::spawn::spawn_with;
use super::*;
use crate::criu::testutil::{absent, Need};
use crate::runtime::runc::{CheckpointOpts, RuncStatus};
use crate::runtime::testutil::TestContainer;

const TEST_SHIM_ENV: &str = "FERRY_TEST_SHIM_ARGS";

/// Not a test: the body of the shim process the other tests start. Passes trivially when run as
/// part of the suite.
#[test]
fn shim_entrypoint() {
    if let Ok(json) = std::env::var(TEST_SHIM_ENV) {
        let args = ShimArgs::from_json(&json).expect("shim args");
        std::process::exit(main(&args));
    }
}

fn spawn_test_shim(args: &ShimArgs) -> Result<ShimStarted, ShimError> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args([
        "runtime::shim::tests::shim_entrypoint",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(TEST_SHIM_ENV, args.to_json());
    spawn_with(cmd, &exe, args, Duration::from_secs(60))
}

fn shim_args(c: &TestContainer, mode: ShimMode) -> ShimArgs {
    ShimArgs::new(&c.id, &c.runc, &c.bundle, &c.ctrdir, mode)
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(ctrdir: &Path) -> ContainerExit {
    wait_for("exit.json", Duration::from_secs(20), || {
        read_exit(ctrdir).unwrap()
    })
}

fn entries(ctrdir: &Path) -> Vec<LogEntry> {
    match read_log(&ShimFiles::new(ctrdir).log(), false) {
        Ok(r) => r.map(|e| e.unwrap()).collect(),
        Err(_) => Vec::new(),
    }
}

fn texts(entries: &[LogEntry], stream: LogStream) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.text.clone())
        .collect()
}

#[test]
fn args_round_trip_and_validate() {
    let args = ShimArgs {
        id: "c1".into(),
        runc: "runc".into(),
        runc_root: "/run/r".into(),
        bundle: "/b".into(),
        ctrdir: "/c".into(),
        mode: ShimMode::Restore(RestoreOpts {
            image_path: "/img".into(),
            work_path: "/work".into(),
            bundle: "/b".into(),
            tcp_established: true,
            ..Default::default()
        }),
        env: vec![("PATH".into(), "/usr/local/sbin:/usr/sbin".into())],
        io: Default::default(),
    };
    assert_eq!(ShimArgs::from_json(&args.to_json()).unwrap(), args);
    args.validate().unwrap();

    let mut other_bundle = args.clone();
    if let ShimMode::Restore(o) = &mut other_bundle.mode {
        o.bundle = "/elsewhere".into();
    }
    assert!(other_bundle
        .validate()
        .unwrap_err()
        .to_string()
        .contains("/elsewhere"));
    let relative = ShimArgs {
        ctrdir: "ctr".into(),
        ..args
    };
    assert!(relative
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ctrdir"));
}

#[test]
fn output_and_exit_code_are_recorded() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    let c = TestContainer::new("echo out1; echo err1 >&2; echo out2; printf partial; exit 3");
    let started = spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    assert!(started.init_pid > 0 && started.shim_pid > 0);

    // Following the log from the start sees every entry and ends with the container.
    let followed: Vec<String> = read_log(&ShimFiles::new(&c.ctrdir).log(), true)
        .unwrap()
        .map(|e| e.unwrap().text)
        .collect();
    assert!(read_exit(&c.ctrdir).unwrap().is_some());
    assert_eq!(followed.len(), 4, "{followed:?}");

    let exit = wait_exit(&c.ctrdir);
    assert_eq!((exit.code, exit.signal), (Some(3), None));
    assert_eq!(exit.status_code(), 3);

    let log = entries(&c.ctrdir);
    assert_eq!(texts(&log, LogStream::Stdout), ["out1", "out2", "partial"]);
    assert_eq!(texts(&log, LogStream::Stderr), ["err1"]);
    let last = log.iter().rfind(|e| e.stream == LogStream::Stdout).unwrap();
    assert!(
        !last.complete,
        "a last line without newline is a partial entry"
    );

    let start = read_start_status(&c.ctrdir).unwrap().unwrap();
    assert!(start.ok);
    assert_eq!(start.pid, Some(started.init_pid));
    // The shim is gone once it recorded the exit.
    wait_for("shim exit", Duration::from_secs(5), || {
        running_shim_pid(&c.ctrdir).is_none().then_some(())
    });
    assert!(!ShimFiles::new(&c.ctrdir).shim_pid().exists());
    assert_eq!(
        c.runc.state(&c.id).unwrap().unwrap().status,
        RuncStatus::Stopped
    );
}

#[test]
fn spec_is_accepted_by_runc() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("file"), "from the host").unwrap();
    let script = "ulimit -Sn; ulimit -Hn; id -u; id -g; echo $FOO; cat /data/file; echo; \
                  touch /data/new 2>/dev/null && echo writable || echo readonly; \
                  ls -l /proc/self/ns/net; cat /proc/self/cgroup | grep memory";
    let c = TestContainer::with(script, |input| {
        input.env.push("FOO=bar baz".into());
        input.user = (1000, 1000);
        input.memory_limit = Some(64 << 20);
        input.mounts.push(crate::runtime::spec::BindMount {
            source: host_dir.path().to_owned(),
            destination: "/data".into(),
            readonly: true,
        });
    });
    spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    let exit = wait_exit(&c.ctrdir);
    let log = entries(&c.ctrdir);
    assert_eq!(exit.code, Some(0), "{log:#?}");
    let out = texts(&log, LogStream::Stdout);

    let hard = crate::runtime::spec::current_hard_limits()
        .into_iter()
        .find(|(n, _)| n == "RLIMIT_NOFILE")
        .unwrap()
        .1
        .min(crate::runtime::spec::WANTED_NOFILE);
    assert_eq!(out[0], hard.to_string(), "{out:?}");
    assert_eq!(out[1], hard.to_string(), "{out:?}");
    assert_eq!(&out[2..5], ["1000", "1000", "bar baz"]);
    assert_eq!(out[5], "from the host");
    assert_eq!(out[6], "readonly");
    let netns_ino = std::fs::metadata(c.netns.path()).unwrap().ino();
    assert!(
        out[7].ends_with(&format!("net:[{netns_ino}]")),
        "container must join the given netns: {}",
        out[7]
    );
    assert!(out[8].ends_with(&c.input.cgroups_path), "{}", out[8]);
}

#[test]
fn memory_limit_lands_in_the_cgroup() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    let c = TestContainer::with("sleep 100", |input| input.memory_limit = Some(96 << 20));
    spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    let limit = std::fs::read_to_string(c.cgroup_dir("memory").join("memory.limit_in_bytes"))
        .expect("memory cgroup of the container");
    assert_eq!(limit.trim(), (96u64 << 20).to_string());
}

#[test]
fn kill_pause_resume_through_runc() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    let c = TestContainer::new("sleep 1000");
    let started = spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();

    let state = c
        .runc
        .state(&c.id)
        .unwrap()
        .expect("runc knows the container");
    assert_eq!(state.status, RuncStatus::Running);
    assert_eq!(state.pid, started.init_pid);
    assert_eq!(state.bundle, c.bundle);
    assert_eq!(c.runc.list().unwrap(), vec![state]);

    c.runc.pause(&c.id).unwrap();
    assert_eq!(
        c.runc.state(&c.id).unwrap().unwrap().status,
        RuncStatus::Paused
    );
    assert!(matches!(
        c.runc.pause(&c.id),
        Err(crate::runtime::runc::RuncError::BadState { .. })
    ));
    c.runc.resume(&c.id).unwrap();
    assert_eq!(
        c.runc.state(&c.id).unwrap().unwrap().status,
        RuncStatus::Running
    );

    c.runc.kill(&c.id, "KILL", false).unwrap();
    let exit = wait_exit(&c.ctrdir);
    assert_eq!((exit.code, exit.signal), (None, Some(9)));
    assert_eq!(exit.status_code(), 137);

    c.runc.delete(&c.id, false).unwrap();
    assert_eq!(c.runc.state(&c.id).unwrap(), None);
    c.runc.delete(&c.id, false).unwrap();
}

#[test]
fn shim_is_detached_from_its_spawner() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    let c = TestContainer::new("sleep 1; echo after-spawner-returned");
    let started = spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();

    let stat = std::fs::read_to_string(format!("/proc/{}/stat", started.shim_pid)).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (u32, u32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid, std::process::id(), "the shim must not be our child");
    let our_sid = nix::unistd::getsid(None).unwrap().as_raw() as u32;
    assert_ne!(sid, our_sid, "the shim must have its own session");
    assert_eq!(running_shim_pid(&c.ctrdir), Some(started.shim_pid));

    // The process that spawned it (the intermediate child) is long gone; the shim still
    // collects output and the exit.
    let exit = wait_exit(&c.ctrdir);
    assert_eq!(exit.code, Some(0));
    assert_eq!(
        texts(&entries(&c.ctrdir), LogStream::Stdout),
        ["after-spawner-returned"]
    );
}

#[test]
fn runc_errors_come_back_from_spawn() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    let c = TestContainer::with("unused", |input| {
        input.args = vec!["/no-such-binary".into()];
    });
    let err = spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ShimError::Start { verb: "run", .. }), "{msg}");
    assert!(msg.contains("/no-such-binary"), "{msg}");
    assert!(msg.contains("no such file"), "{msg}");

    let start = read_start_status(&c.ctrdir).unwrap().unwrap();
    assert!(!start.ok);
    assert!(!ShimFiles::new(&c.ctrdir).shim_pid().exists());
}

#[test]
fn restore_errors_carry_criu_errors() {
    if absent(&[Need::Root, Need::Runc, Need::Criu]) {
        return;
    }
    let c = TestContainer::new("sleep 1000");
    spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    let images = c.dir.path().join("images");
    let checkpoint = CheckpointOpts {
        image_path: images.clone(),
        work_path: c.dir.path().join("work-dump"),
        ..Default::default()
    };
    c.runc.checkpoint(&c.id, &checkpoint).unwrap();
    wait_exit(&c.ctrdir);
    assert_eq!(
        running_shim_pid(&c.ctrdir),
        None,
        "exit.json implies no live shim"
    );
    // A damaged image set: CRIU itself must fail, and say why.
    for f in std::fs::read_dir(&images).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().starts_with("core-") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let work = c.dir.path().join("work-restore");
    let restore = RestoreOpts {
        image_path: images,
        work_path: work.clone(),
        bundle: c.bundle.clone(),
        ..Default::default()
    };
    let err = spawn_test_shim(&shim_args(&c, ShimMode::Restore(restore)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("runc restore"), "{err}");
    // CRIU's log is quoted once per error, by the engine (`ContainerError::Criu`), with
    // `explain_log`; the shim's own error says what runc said.
    assert!(!err.contains("CRIU log"), "{err}");
    let log = work.join("restore.log");
    let excerpt = crate::criu::explain_log(&log).to_string();
    assert!(
        excerpt.contains(&format!("see {}: ", log.display())),
        "{excerpt}"
    );
    let errors = crate::criu::error_lines(&log, 20);
    assert!(
        errors.iter().any(|l| l.contains("Restoring FAILED")),
        "CRIU's own error lines: {errors:?}"
    );
    assert!(
        !excerpt.contains("RLIMIT_NOFILE"),
        "the harmless rlimit error is left out: {excerpt}"
    );
}

#[test]
fn checkpoint_and_restore_keep_counting_into_the_log() {
    if absent(&[Need::Root, Need::Runc, Need::Criu]) {
        return;
    }
    let c = TestContainer::new("i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done");
    spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    let count = |c: &TestContainer| texts(&entries(&c.ctrdir), LogStream::Stdout).len();
    wait_for("first lines", Duration::from_secs(10), || {
        (count(&c) >= 5).then_some(())
    });

    let images = c.dir.path().join("images");
    let checkpoint = CheckpointOpts {
        image_path: images.clone(),
        work_path: c.dir.path().join("work-dump"),
        ..Default::default()
    };
    c.runc.checkpoint(&c.id, &checkpoint).unwrap();
    // The dump kills the container; its shim records that and exits.
    let exit = wait_exit(&c.ctrdir);
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert_eq!(
        running_shim_pid(&c.ctrdir),
        None,
        "exit.json implies no live shim"
    );
    assert_eq!(
        c.runc.state(&c.id).unwrap(),
        None,
        "runc forgets a dumped container"
    );
    let before = count(&c);

    let restore = RestoreOpts {
        image_path: images,
        work_path: c.dir.path().join("work-restore"),
        bundle: c.bundle.clone(),
        ..Default::default()
    };
    let started = spawn_test_shim(&shim_args(&c, ShimMode::Restore(restore))).unwrap();
    assert_eq!(
        read_exit(&c.ctrdir).unwrap(),
        None,
        "a new run clears exit.json"
    );
    assert_eq!(c.runc.state(&c.id).unwrap().unwrap().pid, started.init_pid);
    wait_for("lines after restore", Duration::from_secs(10), || {
        (count(&c) >= before + 5).then_some(())
    });
    c.runc.kill(&c.id, "KILL", false).unwrap();
    let exit = wait_exit(&c.ctrdir);
    assert_eq!(exit.signal, Some(9));

    let numbers: Vec<u64> = texts(&entries(&c.ctrdir), LogStream::Stdout)
        .iter()
        .map(|t| t.parse().unwrap_or_else(|_| panic!("not a number: {t:?}")))
        .collect();
    let expected: Vec<u64> = (0..numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "the counter continues without reset or gap"
    );
    assert!(numbers.len() >= before + 5);
}

#[test]
fn checkpoint_leave_running_keeps_the_container() {
    if absent(&[Need::Root, Need::Runc, Need::Criu]) {
        return;
    }
    let c = TestContainer::new("sleep 1000");
    let started = spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    let opts = CheckpointOpts {
        image_path: c.dir.path().join("images"),
        work_path: c.dir.path().join("work"),
        leave_running: true,
        ..Default::default()
    };
    c.runc.checkpoint(&c.id, &opts).unwrap();
    assert!(opts.image_path.join("inventory.img").exists());
    assert!(opts.criu_log_path().exists());
    let state = c.runc.state(&c.id).unwrap().unwrap();
    assert_eq!(
        (state.status, state.pid),
        (RuncStatus::Running, started.init_pid)
    );
    assert_eq!(read_exit(&c.ctrdir).unwrap(), None);

    // runc's own refusal comes back with its message.
    let bad = CheckpointOpts {
        parent_path: Some("/absolute-parent".into()),
        work_path: c.dir.path().join("work-bad"),
        ..opts
    };
    let err = c.runc.checkpoint(&c.id, &bad).unwrap_err();
    assert!(
        matches!(err, crate::runtime::runc::RuncError::Tool(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("--parent-path must be relative"),
        "{err}"
    );
}

#[test]
fn checkpoint_failures_name_criu_errors() {
    if absent(&[Need::Root, Need::Runc, Need::Criu]) {
        return;
    }
    // An established TCP connection inside the container, dumped without --tcp-established.
    let c = TestContainer::new(
        "sleep 1000 | nc -l -p 9000 & sleep 0.3; sleep 1000 | nc 127.0.0.1 9000",
    );
    // The container has no CAP_NET_ADMIN; bring its loopback up from outside.
    crate::tool::Tool::new("ip")
        .args(["-n", &c.netns.name, "link", "set", "lo", "up"])
        .run()
        .unwrap();
    spawn_test_shim(&shim_args(&c, ShimMode::Run)).unwrap();
    wait_for("the TCP connection", Duration::from_secs(10), || {
        let ss = crate::tool::Tool::new("ip")
            .args([
                "netns",
                "exec",
                &c.netns.name,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .run_text()
            .unwrap();
        (ss.lines().count() == 2).then_some(())
    });
    let opts = CheckpointOpts {
        image_path: c.dir.path().join("images"),
        work_path: c.dir.path().join("work"),
        ..Default::default()
    };
    let err = c.runc.checkpoint(&c.id, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, crate::runtime::runc::RuncError::Criu { .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&opts.criu_log_path().display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("tcp-established"), "CRIU's reason: {msg}");
    // A failed dump leaves the container running.
    assert_eq!(
        c.runc.state(&c.id).unwrap().unwrap().status,
        RuncStatus::Running
    );
    assert_eq!(read_exit(&c.ctrdir).unwrap(), None);
}

/// Frames from an attach connection until the exit frame: (stdout, exit code).
fn attach_until_exit(conn: &mut std::os::unix::net::UnixStream) -> (String, i32) {
    let mut out = Vec::new();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    loop {
        match crate::exec::read_frame_sync(conn).unwrap() {
            Some(crate::exec::Frame::Stdout(b)) => out.extend(b),
            Some(crate::exec::Frame::Exit(code)) => {
                return (String::from_utf8_lossy(&out).into_owned(), code)
            }
            Some(_) => {}
            None => panic!("attach stream ended without an exit frame: {out:?}"),
        }
    }
}

fn send(conn: &mut std::os::unix::net::UnixStream, f: &crate::exec::Frame) {
    use std::io::Write;
    conn.write_all(&f.encode()).unwrap();
}

#[test]
fn attach_drives_a_pty_held_by_the_shim() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    use crate::exec::{Frame, WinSize};
    let c = TestContainer::new("read line; stty size; echo got-$line; exit 5");
    let mut args = shim_args(&c, ShimMode::Run);
    args.io = ShimIo {
        tty: true,
        stdin: true,
    };
    spawn_test_shim(&args).unwrap();
    let mut conn =
        std::os::unix::net::UnixStream::connect(ShimFiles::new(&c.ctrdir).attach_socket()).unwrap();
    send(&mut conn, &Frame::Resize(WinSize { rows: 33, cols: 77 }));
    send(&mut conn, &Frame::Stdin(b"abc\n".to_vec()));
    let (out, code) = attach_until_exit(&mut conn);
    // The pty echoes the typed line and turns \n into \r\n.
    assert!(out.contains("abc\r\n"), "{out:?}");
    assert!(out.contains("33 77") && out.contains("got-abc"), "{out:?}");
    assert_eq!(code, 5);
    assert_eq!(wait_exit(&c.ctrdir).status_code(), 5);
    let log = texts(&entries(&c.ctrdir), LogStream::Stdout).join("\n");
    assert!(log.contains("got-abc"), "the pty's output is logged: {log}");
}

#[test]
fn attach_feeds_an_open_stdin_pipe() {
    if absent(&[Need::Root, Need::Runc]) {
        return;
    }
    use crate::exec::Frame;
    let c = TestContainer::new("read line; echo got-$line; read more || exit 6");
    let mut args = shim_args(&c, ShimMode::Run);
    args.io = ShimIo {
        tty: false,
        stdin: true,
    };
    spawn_test_shim(&args).unwrap();
    let mut conn =
        std::os::unix::net::UnixStream::connect(ShimFiles::new(&c.ctrdir).attach_socket()).unwrap();
    send(&mut conn, &Frame::Stdin(b"xyz\n".to_vec()));
    // An empty stdin frame closes the pipe: the second read sees end of file.
    send(&mut conn, &Frame::Stdin(Vec::new()));
    let (out, code) = attach_until_exit(&mut conn);
    assert_eq!((out.as_str(), code), ("got-xyz\n", 6));
}
