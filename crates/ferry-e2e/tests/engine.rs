//! Issue 2: the local engine on real runc. Each test starts its own ferryd in a private netns.

use std::time::Duration;

use ferry_e2e::{bin, ticks, Host, REDIS_SERVER};

#[test]
fn busybox_counter_logs() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("counter", &[], 10);
    let t = ticks(&h.logs("counter"));
    assert_eq!(t[0], 1, "counter starts at 1");
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "ticks contiguous: {t:?}"
    );
    let ps = h.ferry_ok(&["ps"]);
    assert!(ps.contains("counter") && ps.contains("Up "), "{ps}");
    h.ferry_ok(&["stop", "-t", "1", "counter"]);
    assert_eq!(h.inspect("counter")["status"], "stopped");
    h.ferry_ok(&["rm", "counter"]);
    assert!(!h.ferry_ok(&["ps", "-a"]).contains("counter"));
}

#[test]
fn exit_code_is_recorded() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached("quick", &[], "busybox", &["sh", "-c", "echo bye; exit 7"]);
    h.wait_for("exit", Duration::from_secs(15), || {
        h.inspect("quick")["status"] == "stopped"
    });
    let rec = h.inspect("quick");
    assert_eq!(rec["exit"]["code"], 7, "{rec}");
    assert!(h.logs("quick").contains("bye"));
}

#[test]
fn redis_set_get_over_container_ip() {
    let h = Host::start();
    h.import("redis");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        "redis",
        "--ip",
        "10.78.1.50",
        "redis",
    ];
    args.extend_from_slice(&REDIS_SERVER);
    h.ferry_ok(&args);
    h.wait_for("redis PONG", Duration::from_secs(20), || {
        h.redis_cli("10.78.1.50", &["PING"]) == "PONG"
    });
    assert_eq!(
        h.redis_cli("10.78.1.50", &["SET", "greeting", "hello"]),
        "OK"
    );
    assert_eq!(h.redis_cli("10.78.1.50", &["GET", "greeting"]), "hello");
    // The MAC is derived from the IP, so a copy on another host gets the same one.
    let rec = h.inspect("redis");
    assert_eq!(rec["config"]["mac"], "02:fe:0a:4e:01:32", "{rec}");
}

#[test]
fn ferryd_restart_keeps_containers_running_and_logging() {
    let mut h = Host::start();
    h.import("busybox");
    h.run_counter("survivor", &[], 3);
    let pid_before = h.inspect("survivor")["pid"].clone();
    h.kill_ferryd();
    std::thread::sleep(Duration::from_secs(1));
    h.start_ferryd();
    let rec = h.inspect("survivor");
    assert_eq!(rec["status"], "running", "{rec}");
    assert_eq!(rec["pid"], pid_before);
    let n = ticks(&h.logs("survivor")).len();
    h.wait_for(
        "logging continues after restart",
        Duration::from_secs(10),
        || ticks(&h.logs("survivor")).len() >= n + 5,
    );
    let t = ticks(&h.logs("survivor"));
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "no lines lost while ferryd was down: {t:?}"
    );
}

#[test]
fn volume_persists_across_stop_start() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached("vol", &["-v", "data:/data"], "busybox", &["sh", "-c", "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run $n; sleep 1000"]);
    h.wait_for("first run", Duration::from_secs(15), || {
        h.logs("vol").contains("run 1")
    });
    h.ferry_ok(&["stop", "-t", "1", "vol"]);
    h.ferry_ok(&["start", "vol"]);
    h.wait_for(
        "second run sees the volume",
        Duration::from_secs(15),
        || h.logs("vol").contains("run 2"),
    );
    let data = std::fs::read_to_string(h.root().join("volumes/data/_data/n")).expect("volume file");
    assert_eq!(data.trim(), "2");
}

#[test]
fn env_and_memory_limit_are_applied() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached("envy", &["-e", "GREETING=hi there", "--memory", "64m"], "busybox", &["sh", "-c", "echo \"g=$GREETING\"; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; sleep 1000"]);
    h.wait_for("env line", Duration::from_secs(15), || {
        h.logs("envy").contains("g=hi there")
    });
    let rec = h.inspect("envy");
    assert_eq!(rec["config"]["memory"], 64 * 1024 * 1024);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached(
        "one",
        &["--ip", "10.78.1.10"],
        "busybox",
        &["sleep", "1000"],
    );
    let before = h.ferry_ok(&["ps", "-a", "--json"]);

    let e = h.ferry_err(&["run", "-d", "--name", "x", "nosuchimage", "true"]);
    assert!(e.contains("nosuchimage"), "{e}");
    let e = h.ferry_err(&["logs", "ghost"]);
    assert!(
        e.contains("no such container") && e.contains("ghost"),
        "{e}"
    );
    let e = h.ferry_err(&["stop", "ghost"]);
    assert!(e.contains("ghost"), "{e}");
    let e = h.ferry_err(&["run", "-d", "--name", "one", "busybox", "true"]);
    assert!(e.contains("already exists"), "{e}");
    let e = h.ferry_err(&[
        "run",
        "-d",
        "--name",
        "two",
        "--ip",
        "10.78.1.10",
        "busybox",
        "true",
    ]);
    assert!(e.contains("10.78.1.10") && e.contains("in use"), "{e}");
    let e = h.ferry_err(&[
        "run",
        "-d",
        "--name",
        "three",
        "--ip",
        "192.168.5.5",
        "busybox",
        "true",
    ]);
    assert!(e.contains("192.168.5.5") && e.contains("outside"), "{e}");
    let e = h.ferry_err(&["run", "-d", "--name", "bad/name", "busybox", "true"]);
    assert!(e.contains("invalid container name"), "{e}");
    let e = h.ferry_err(&[
        "run", "-d", "--name", "v", "-v", "/etc:/x", "busybox", "true",
    ]);
    assert!(e.contains("host paths"), "{e}");
    let e = h.ferry_err(&[
        "run",
        "-d",
        "--name",
        "ip",
        "--ip",
        "not-an-ip",
        "busybox",
        "true",
    ]);
    assert!(e.contains("not-an-ip"), "{e}");

    // Corrupt and malicious import tars.
    let t = tempfile::tempdir().unwrap();
    let corrupt = t.path().join("corrupt.tar");
    std::fs::write(
        &corrupt,
        b"this is not a tar archive at all, just some bytes",
    )
    .unwrap();
    let e = h.ferry_err(&["image", "import", corrupt.to_str().unwrap()]);
    assert!(!e.is_empty());
    let evil = t.path().join("evil.tar");
    write_evil_tar(&evil, "../escape");
    let e = h.ferry_err(&["image", "import", evil.to_str().unwrap(), "--name", "evil"]);
    assert!(e.contains("escape") || e.contains(".."), "{e}");
    let evil_link = t.path().join("evil-link.tar");
    write_symlink_escape_tar(&evil_link);
    let e = h.ferry_err(&[
        "image",
        "import",
        evil_link.to_str().unwrap(),
        "--name",
        "evil2",
    ]);
    assert!(e.contains("symlink") || e.contains("link"), "{e}");
    let images = h.ferry_ok(&["image", "ls"]);
    assert!(!images.contains("evil"), "{images}");

    // Nothing changed.
    assert_eq!(h.ferry_ok(&["ps", "-a", "--json"]), before);

    // No daemon.
    let out = std::process::Command::new(bin("ferry"))
        .args(["--socket", "/nonexistent/ferry.sock", "ps"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("ferryd") && e.contains("/nonexistent/ferry.sock"),
        "{e}"
    );
}

/// A rootfs tarball with an entry whose path climbs out of the root.
fn write_evil_tar(path: &std::path::Path, name: &str) {
    let mut data = Vec::new();
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(b"00000000005");
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    data.extend_from_slice(&header);
    let mut content = [0u8; 512];
    content[..5].copy_from_slice(b"owned");
    data.extend_from_slice(&content);
    data.extend_from_slice(&[0u8; 1024]);
    std::fs::write(path, data).unwrap();
}

/// A rootfs tarball that plants a symlink to / and then writes through it.
fn write_symlink_escape_tar(path: &std::path::Path) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(f);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "link", "/").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, "link/tmp/ferry-escape", &b"owned"[..])
        .unwrap();
    b.finish().unwrap();
}
