//! Issue 11: `ferry run -it`, `run -i` and `ferry attach` against real runc. The container's
//! pty is held by its shim, so it survives a ferryd restart; detach is Ctrl-P Ctrl-Q; a
//! container with a terminal or open stdin is refused for checkpoints, before any freeze. Also:
//! an exec cannot slip in between a move's last "no exec session" check and its freeze.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
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

/// A pty playing the user's terminal: ferry runs on its slave end, the test types into and
/// reads from its master.
struct Terminal {
    child: Child,
    keys: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn spawn(h: &Host, args: &[&str]) -> Terminal {
        let size = nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let stdio = |fd: &OwnedFd| Stdio::from(fd.as_fd().try_clone_to_owned().expect("dup"));
        let child = ferry_cmd(h)
            .args(args)
            .stdin(stdio(&pty.slave))
            .stdout(stdio(&pty.slave))
            .stderr(stdio(&pty.slave))
            .spawn()
            .expect("spawn ferry on the pty");
        drop(pty.slave);
        let keys = std::fs::File::from(pty.master.try_clone().expect("dup master"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let buf = out.clone();
        let mut master = std::fs::File::from(pty.master);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // EIO once ferry (the only holder of the slave) is gone.
            while let Ok(n) = master.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Terminal { child, keys, out }
    }

    fn output(&self) -> String {
        text(&self.out.lock().unwrap())
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(&self.output()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; terminal: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).expect("type into the pty");
    }

    /// The exit code of ferry itself.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait ferry") {
                // Let the reader take the last output.
                std::thread::sleep(Duration::from_millis(200));
                return (st.code(), self.output());
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not exit; terminal: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn run_it_detach_attach_across_a_ferryd_restart() {
    let mut h = Host::start();
    h.import("busybox");

    let mut t = Terminal::spawn(&h, &["run", "-it", "--name", "t1", "busybox", "sh"]);
    // The prompt was printed before the CLI attached: the shim replays it.
    t.wait_for("the shell's prompt", |s| s.contains("# "));
    t.type_keys(b"echo $((6*7)); tty; stty size\n");
    t.wait_for("the answers", |s| {
        s.contains("42") && s.contains("/dev/pts/") && s.contains("30 100")
    });
    // Ctrl-P Ctrl-Q: the CLI leaves, the container keeps running.
    t.type_keys(b"\x10\x11");
    let (code, out) = t.wait();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("detached from t1"), "{out}");
    assert_eq!(h.inspect("t1")["status"], "running");

    // A terminal cannot be checkpointed: refused before the freeze, saying why.
    let err = h.ferry_err(&["checkpoint", "t1"]);
    assert!(
        err.contains("t1") && err.contains("terminal") && err.contains("CRIU cannot carry"),
        "{err}"
    );
    assert_eq!(h.inspect("t1")["status"], "running", "nothing was frozen");
    // The pty's output also goes to the log.
    assert!(h.logs("t1").contains("42"), "{}", h.logs("t1"));

    // Output written while nobody is attached is shown on the next attach (the replay).
    h.ferry_ok(&[
        "exec",
        "t1",
        "sh",
        "-c",
        "echo while-detached > /proc/1/fd/1",
    ]);
    let mut t = Terminal::spawn(&h, &["attach", "t1"]);
    t.wait_for("the output from while detached", |s| {
        s.contains("while-detached")
    });
    t.type_keys(b"echo second-$((1+1))\n");
    t.wait_for("the second answer", |s| s.contains("second-2"));

    // ferryd dies under an attached client: the client is told, the terminal lives on.
    h.restart_ferryd();
    let (code, out) = t.wait();
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("ferry attach t1"), "{out}");
    assert_eq!(h.inspect("t1")["status"], "running");

    let mut t = Terminal::spawn(&h, &["attach", "t1"]);
    t.type_keys(b"echo third-$((2+1))\n");
    t.wait_for("an answer after the restart", |s| s.contains("third-3"));
    // The container's exit code is the attached CLI's.
    t.type_keys(b"exit 3\n");
    let (code, out) = t.wait();
    assert_eq!(code, Some(3), "{out}");
    h.wait_for("t1 to stop", Duration::from_secs(20), || {
        h.inspect("t1")["status"] == "stopped"
    });
    assert_eq!(h.inspect("t1")["exit"]["code"], 3);
    let err = h.ferry_err(&["attach", "t1"]);
    assert!(err.contains("attach needs a running container"), "{err}");
}

#[test]
fn run_i_streams_stdin_and_attach_feeds_an_open_stdin() {
    let h = Host::start();
    h.import("busybox");

    // run -i without a pty: stdin piped in, EOF closes it; stdout and stderr stay apart.
    let mut child = ferry_cmd(&h)
        .args([
            "run",
            "-i",
            "--name",
            "i1",
            "busybox",
            "sh",
            "-c",
            "cat; echo done >&2; exit 4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry run -i");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\nworld\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("ferry run -i");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    assert_eq!(text(&out.stderr), "done\n");

    // A detached container with open stdin: refused for checkpoints, fed by `ferry attach`.
    h.ferry_ok(&["run", "-d", "-i", "--name", "i2", "busybox", "cat"]);
    let err = h.ferry_err(&["checkpoint", "i2"]);
    assert!(
        err.contains("i2") && err.contains("stdin is kept open"),
        "{err}"
    );
    let mut child = ferry_cmd(&h)
        .args(["attach", "i2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry attach");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through attach\n")
        .expect("write stdin");
    // EOF closes the container's stdin: cat ends, and attach returns its exit code.
    let out = child.wait_with_output().expect("ferry attach");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "through attach\n",
        "stderr: {}; log: {}",
        text(&out.stderr),
        h.logs("i2")
    );

    // A plain container stays movable.
    h.run_counter("plain", &[], 1);
    h.ferry_ok(&["checkpoint", "-R", "plain"]);
}

/// `ps` shows how often `--restart` restarted a container: a RESTARTS column, the Restarts
/// field of `--format`, and `restart_count` in `--json`.
#[test]
fn ps_shows_the_restart_count() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached(
        "flaky",
        &["--restart", "on-failure:2"],
        "busybox",
        &["sh", "-c", "exit 1"],
    );
    h.wait_for("two restarts", Duration::from_secs(30), || {
        let r = h.inspect("flaky");
        r["restart_count"] == 2 && r["status"] == "stopped"
    });
    let table = h.ferry_ok(&["ps", "-a"]);
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    let col = head.find("RESTARTS").expect("a RESTARTS column");
    let row = lines.find(|l| l.contains("flaky")).expect("flaky's row");
    assert!(row[col..].starts_with('2'), "{table}");
    assert_eq!(
        h.ferry_ok(&["ps", "-a", "--format", "{{.Names}} {{.Restarts}}"]),
        "flaky 2\n"
    );
    let v: serde_json::Value =
        serde_json::from_str(&h.ferry_ok(&["ps", "-a", "--format", "json"])).expect("json line");
    assert_eq!(v["Restarts"], "2", "{v}");
    let v: serde_json::Value = serde_json::from_str(&h.ferry_ok(&["--json", "ps", "-a"])).unwrap();
    assert_eq!(v[0]["restart_count"], 2, "{v}");
}

/// The exec/freeze race, driven through the engine without sleeps: a session recorded before
/// a move is seen by the move's check, and an exec after the move claimed the container is
/// refused, so none can start between the check and the freeze.
#[test]
fn exec_cannot_slip_in_before_a_freeze() {
    let mut h = Host::start();
    h.import("busybox");
    h.run_counter("c", &[], 1);
    h.stop_ferryd();
    h.with_engine(|e| {
        use ferry_core::container::Status;
        use ferry_core::exec::{prepare, ExecRequest};
        let req = ExecRequest {
            cmd: vec!["true".into()],
            ..Default::default()
        };
        // Exec first: the session is recorded when `prepare` returns, before runc runs.
        let session = prepare(e, "c", &req).expect("prepare exec");
        let cfg = e.begin_migration("c").expect("claim").config;
        let err = e.check_movable(&cfg).expect_err("a session is in the way");
        assert!(
            err.to_string().contains("1 exec session running (true)"),
            "{err}"
        );
        drop(session);
        e.check_movable(&cfg)
            .expect("movable once the session ended");
        // The move first: an exec that comes after the claim is refused.
        let err = prepare(e, "c", &req).expect_err("exec during a migration");
        assert!(err.to_string().contains("migrating"), "{err}");
        e.try_end_migration("c", Status::Running).expect("end");
        drop(prepare(e, "c", &req).expect("exec once the container is back"));
    });
    h.start_ferryd();
    assert_eq!(h.inspect("c")["status"], "running");
}

/// Migration, like checkpoint, refuses a container with a terminal before anything moves.
#[test]
fn migration_is_refused_for_a_container_with_a_terminal() {
    let t = ferry_e2e::lab::lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &["run", "-d", "-it", "--name", "term", "busybox", "sh"],
    );
    let (ok, report, err) = t.migrate("host-a", "term", "host-b");
    assert!(!ok, "a terminal cannot move: {report}");
    assert_eq!(report["outcome"], "refused", "{report}\n{err}");
    let why = report["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("terminal") && why.contains("CRIU cannot carry"),
        "the refusal says why: {why}"
    );
    assert_eq!(t.status("host-a", "term").as_deref(), Some("running"));
    t.assert_clean("host-b", "after a migration refused for a terminal");
}
