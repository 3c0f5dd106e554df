//! Issue 11: `ferry exec [-i] [-t] [-e] [-w] [-u] CTR CMD...` against real runc, and what a
//! checkpoint does while an exec session runs (refused, naming the session).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_e2e::{bin, Host};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ferry_cmd(h: &Host) -> Command {
    let mut c = Command::new(bin("ferry"));
    c.arg("--socket").arg(&h.socket);
    c
}

#[test]
fn exec_streams_exit_codes_options_and_errors() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("c", &[], 1);

    // stdout and stderr apart, and the command's exit code.
    let out = h.ferry(&["exec", "c", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));

    // -e (with a value and taken from the caller), -w, -u.
    let out = ferry_cmd(&h)
        .env("FROM_CALLER", "yes")
        .args([
            "exec",
            "-e",
            "GREETING=hi there",
            "-e",
            "FROM_CALLER",
            "-e",
            "UNSET_HERE",
            "-w",
            "/tmp",
            "-u",
            "65534",
            "c",
            "sh",
            "-c",
            "echo \"$GREETING|$FROM_CALLER|${UNSET_HERE-unset}\"; pwd; id -u",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("ferry exec");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi there|yes|unset\n/tmp\n65534\n");
    // The container's own environment is kept (PATH made `sh` findable above); user by name.
    let out = h.ferry(&["exec", "-u", "nobody", "c", "id", "-un"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "nobody\n");

    // -i: stdin streamed, EOF closes it.
    let mut child = ferry_cmd(&h)
        .args(["exec", "-i", "c", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry exec -i");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("ferry exec -i");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    // Without -i the command's stdin is empty.
    let out = h.ferry(&["exec", "c", "cat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    // Not found / not executable, as Docker reports them.
    let out = h.ferry(&["exec", "c", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );
    let out = h.ferry(&["exec", "c", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));

    // A stopped container, a missing one, a bad user: clear errors, JSON with --json.
    h.run_detached("done", &[], "busybox", &["true"]);
    h.wait_for("done to exit", Duration::from_secs(20), || {
        h.inspect("done")["status"] != "running"
    });
    let err = h.ferry_err(&["exec", "done", "true"]);
    assert!(
        err.contains("done") && err.contains("exec needs a running container"),
        "{err}"
    );
    let out = h.ferry(&["--json", "exec", "done", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(v["error"]["kind"], "conflict", "{v}");
    let out = h.ferry(&["--json", "exec", "nope", "true"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    let err = h.ferry_err(&["exec", "-u", "nosuchuser", "c", "true"]);
    assert!(err.contains("nosuchuser"), "{err}");
}

#[test]
fn checkpoint_is_refused_while_an_exec_session_runs() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("c", &[], 1);

    let mut session = ferry_cmd(&h)
        .args(["exec", "c", "sh", "-c", "echo started; exec sleep 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry exec sleep");
    let mut first = String::new();
    BufReader::new(session.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the session's first line");
    assert_eq!(first, "started\n");

    let err = h.ferry_err(&["checkpoint", "c"]);
    assert!(
        err.contains("c")
            && err.contains("1 exec session running (sh)")
            && err.contains("end it first"),
        "{err}"
    );
    assert_eq!(
        h.inspect("c")["status"],
        "running",
        "the refusal froze nothing"
    );

    // The client going away ends the session and kills its process; then CRIU can dump.
    session.kill().expect("kill ferry exec");
    session.wait().expect("reap ferry exec");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = h.ferry(&["checkpoint", "c"]);
        if out.status.success() {
            break;
        }
        let err = text(&out.stderr);
        assert!(
            err.contains("exec session") && Instant::now() < deadline,
            "checkpoint after the session ended: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(h.inspect("c")["status"], "checkpointed");
    let err = h.ferry_err(&["exec", "c", "true"]);
    assert!(err.contains("checkpointed"), "{err}");
}

/// Reads a pty master into a shared buffer until the slave side is gone (EIO).
fn drain(master: OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut chunk = [0u8; 4096];
        while let Ok(n) = f.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_output(buf: &Mutex<Vec<u8>>, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = text(&buf.lock().unwrap());
        if f(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; pty output: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exec_tty_session_through_a_pty() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("c", &[], 1);

    // The test is the terminal: ferry's stdin/stdout/stderr are a pty's slave end, 30x100.
    let size = |rows, cols| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size(30, 100)), None).expect("openpty");
    let slave = pty.slave;
    let stdio = |fd: &OwnedFd| Stdio::from(fd.as_fd().try_clone_to_owned().expect("dup slave"));
    let mut child = ferry_cmd(&h)
        .args(["exec", "-it", "c", "sh"])
        .stdin(stdio(&slave))
        .stdout(stdio(&slave))
        .stderr(stdio(&slave))
        .spawn()
        .expect("ferry exec -it");
    drop(slave);
    let resize_fd = pty.master.try_clone().expect("dup master");
    let mut keys = std::fs::File::from(pty.master.try_clone().expect("dup master"));
    let out = drain(pty.master);
    wait_output(&out, "the shell's prompt", Duration::from_secs(20), |s| {
        s.contains("# ")
    });
    // The command's pty starts with the terminal's size...
    keys.write_all(b"stty size\n").expect("type");
    wait_output(&out, "the first size", Duration::from_secs(5), |s| {
        s.contains("30 100")
    });
    // ...and follows it: a new size and SIGWINCH (the kernel sends none here, ferry is not in
    // the pty's session) reach it through a resize frame.
    let ws = size(40, 120);
    assert_eq!(
        // SAFETY: TIOCSWINSZ only reads one winsize through the pointer, and `ws` is a live,
        // initialised winsize; `resize_fd` is an open pty descriptor we own.
        unsafe {
            nix::libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&resize_fd),
                nix::libc::TIOCSWINSZ,
                &ws,
            )
        },
        0
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .expect("SIGWINCH");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text(&out.lock().unwrap()).contains("40 120") {
        assert!(
            Instant::now() < deadline,
            "resize not seen: {}",
            text(&out.lock().unwrap())
        );
        keys.write_all(b"stty size\n").expect("type");
        std::thread::sleep(Duration::from_millis(200));
    }
    keys.write_all(b"echo $((6*7)); tty; exit 3\n")
        .expect("type into the pty");
    let status = child.wait().expect("ferry exec -it");
    wait_output(&out, "the answers", Duration::from_secs(5), |s| {
        s.contains("42") && s.contains("/dev/pts/")
    });
    assert_eq!(status.code(), Some(3), "{}", text(&out.lock().unwrap()));
    // The session is over: the container can be checkpointed.
    h.ferry_ok(&["checkpoint", "-R", "c"]);
}

/// Migration, like checkpoint, refuses before anything moves while a session runs.
#[test]
fn migration_is_refused_while_an_exec_session_runs() {
    let t = ferry_e2e::lab::lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &[
            "run",
            "-d",
            "--name",
            "counter",
            "busybox",
            "sh",
            "-c",
            ferry_e2e::COUNTER,
        ],
    );
    ferry_e2e::lab::wait_for("ticks", Duration::from_secs(20), || {
        !ferry_e2e::ticks(&t.logs("host-a", "counter")).is_empty()
    });
    let mut session = t
        .lab
        .host_command("host-a", "ferry")
        .expect("host-a")
        .args(["exec", "counter", "sh", "-c", "echo started; exec sleep 30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry exec on host-a");
    let mut first = String::new();
    BufReader::new(session.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the session's first line");
    assert_eq!(first, "started\n");

    let (ok, report, err) = t.migrate("host-a", "counter", "host-b");
    assert!(!ok, "an exec session cannot move: {report}");
    assert_eq!(report["outcome"], "refused", "{report}\n{err}");
    let why = report["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("1 exec session running (sh)"),
        "the refusal names the session: {why}"
    );
    assert_eq!(t.status("host-a", "counter").as_deref(), Some("running"));
    t.assert_clean("host-b", "after a migration refused for an exec session");
    session.kill().expect("kill ferry exec");
    session.wait().expect("reap ferry exec");
}
