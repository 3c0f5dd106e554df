//! Issue 9: workloads that move (an inotify watch) and workloads refused before the freeze
//! (a stopped task), against real runc + CRIU.

use std::time::Duration;

use ferry_e2e::{events, inotify_image, ticks, Host, COUNTER};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn inotify_watches_in_the_rootfs_survive_export_and_import() {
    let h = Host::start();
    let t = tempfile::tempdir().unwrap();
    let layout = inotify_image(t.path());
    h.ferry_ok(&["image", "import", layout.to_str().unwrap()]);
    // Watches on a lower dir (copied up by the writes) and on a lower-only file.
    h.run_detached(
        "watcher",
        &[],
        "inotify",
        &["sh", "-c", ferry_e2e::INOTIFY_WATCHER],
    );
    h.wait_for("inotify events", Duration::from_secs(20), || {
        events(&h.logs("watcher")).len() >= 5
    });
    let archive = t.path().join("watcher.tar.zst");
    // Before ferry mounted its overlays with file handles this failed:
    // "fsnotify: Can't dump that handle".
    h.ferry_ok(&[
        "checkpoint",
        "watcher",
        "--export",
        archive.to_str().unwrap(),
    ]);
    let last = events(&h.logs("watcher")).last().unwrap().0;
    // A fresh upper dir from the archive, as on a migration's destination.
    h.ferry_ok(&["rm", "watcher"]);
    h.ferry_ok(&["restore", "--import", archive.to_str().unwrap()]);
    assert_eq!(h.inspect("watcher")["status"], "running");
    h.wait_for(
        "events from the restored dir watch",
        Duration::from_secs(20),
        || {
            events(&h.logs("watcher"))
                .iter()
                .any(|&(n, _)| n > last + 3)
        },
    );
    let logs = h.logs("watcher");
    assert!(
        !logs.contains("watching"),
        "the watcher was restored, not restarted: {logs}"
    );
    let after = events(&logs);
    assert_eq!(after[0].0, last + 1, "the count continues: {after:?}");
    // The file watch (wd 2) fires on a change made from outside the container.
    let id = h.inspect("watcher")["config"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conf = h
        .root()
        .join("containers")
        .join(id)
        .join("rootfs/data/conf");
    std::fs::write(&conf, "v2\n").expect("change the watched file");
    h.wait_for(
        "an event from the restored file watch",
        Duration::from_secs(10),
        || events(&h.logs("watcher")).iter().any(|&(_, wd)| wd == 2),
    );
}

/// The host pid of the container's `sleep 1000`, a child of its init.
fn sleep_child(h: &Host, name: &str) -> i32 {
    let init = h.inspect(name)["pid"].as_i64().expect("running pid") as i32;
    let children =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.ends_with(b"sleep\x001000\x00"))
        })
        .unwrap_or_else(|| panic!("no `sleep 1000` among {init}'s children {children:?}"))
}

#[test]
fn checkpoint_refuses_a_stopped_task_before_freezing() {
    let h = Host::start();
    h.import("busybox");
    let script = format!("sleep 1000 & {COUNTER}");
    h.run_detached("halted", &[], "busybox", &["sh", "-c", &script]);
    h.wait_for("ticks", Duration::from_secs(20), || {
        ticks(&h.logs("halted")).len() >= 3
    });
    let pid = sleep_child(&h, "halted");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
    h.wait_for("the task to stop", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| s.contains("State:\tT"))
    });
    let err = h.ferry_err(&["checkpoint", "halted"]);
    assert!(
        err.contains(&format!(
            "process {pid} (sleep, `sleep 1000`) is stopped (state T)"
        )),
        "the refusal names the process and the cause: {err}"
    );
    // Refused before the freeze: the container keeps running.
    assert_eq!(h.inspect("halted")["status"], "running");
    let before = ticks(&h.logs("halted")).len();
    h.wait_for("ticks after the refusal", Duration::from_secs(10), || {
        ticks(&h.logs("halted")).len() >= before + 5
    });
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
    h.ferry_ok(&["checkpoint", "halted"]);
    assert_eq!(h.inspect("halted")["status"], "checkpointed");
}
