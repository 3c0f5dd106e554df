//! Checkpoints that cross between ferry and the real Podman (Debian's 4.3.1): a container
//! checkpointed by one is restored by the other and carries on where it stopped.

use std::time::Duration;

use ferry_e2e::podman::{Podman, ULIMITS};
use ferry_e2e::{ticks, Host, REDIS_SERVER};

const WAIT: Duration = Duration::from_secs(30);

/// The ticks printed so far, waiting for at least `n`.
fn wait_ticks(h: &Host, what: &str, n: usize, logs: impl Fn() -> String) -> Vec<u64> {
    let mut seen = Vec::new();
    h.wait_for(what, WAIT, || {
        seen = ticks(&logs());
        seen.len() >= n
    });
    seen
}

/// Ticks must run on without a gap or a repeat.
fn assert_contiguous(what: &str, t: &[u64]) {
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: ticks not contiguous: {t:?}"
    );
}

#[test]
fn a_counter_goes_from_ferry_to_podman_and_back_and_keeps_counting() {
    let h = Host::start();
    let Some(podman) = Podman::beside(&h) else {
        return;
    };
    h.import("busybox");
    podman.load_fixture("busybox");
    h.run_counter("cnt", &[], 5);

    // ferry -> Podman.
    let archive = podman.dir().join("from-ferry.tar.zst");
    h.ferry_ok(&["checkpoint", "cnt", "--export", archive.to_str().unwrap()]);
    let before = ticks(&h.logs("cnt"));
    let last = *before.last().unwrap();
    assert_eq!(h.inspect("cnt")["status"], "checkpointed");
    // ferry's address is not on Podman's network; the counter holds no connection.
    podman.ok(&[
        "container",
        "restore",
        "--import",
        archive.to_str().unwrap(),
        "--ignore-static-ip",
        "--ignore-static-mac",
    ]);
    assert_eq!(podman.running(), ["cnt"]);
    let after = wait_ticks(&h, "ticks under Podman", 5, || podman.logs("cnt"));
    assert_eq!(
        after[0],
        last + 1,
        "Podman's copy did not continue where ferry's stopped"
    );
    assert_contiguous("under Podman", &after);

    // Podman -> ferry, as a new container on this host's network.
    let back = podman.dir().join("from-podman.tar.zst");
    podman.ok(&[
        "container",
        "checkpoint",
        "--export",
        back.to_str().unwrap(),
        "cnt",
    ]);
    assert!(podman.running().is_empty(), "Podman's copy still runs");
    let last = *ticks(&podman.logs("cnt")).last().unwrap();
    h.ferry_ok(&["rm", "cnt"]);
    let err = h.ferry_err(&["restore", "--import", back.to_str().unwrap()]);
    assert!(
        err.contains("10.88.") && err.contains("--ip"),
        "an address outside this host's network must be named, with the way out: {err}"
    );
    assert!(
        h.ferry_ok(&["ps", "-a"]).lines().count() == 1,
        "a refused import left a container behind"
    );
    h.ferry_ok(&[
        "restore",
        "--import",
        back.to_str().unwrap(),
        "--ip",
        "10.78.1.60",
    ]);
    let again = wait_ticks(&h, "ticks back under ferry", 5, || h.logs("cnt"));
    assert_eq!(
        again[0],
        last + 1,
        "ferry's copy did not continue where Podman's stopped"
    );
    assert_contiguous("back under ferry", &again);
    assert_eq!(h.inspect("cnt")["status"], "running");
}

#[test]
fn redis_keys_survive_both_directions() {
    let h = Host::start();
    let Some(podman) = Podman::beside(&h) else {
        return;
    };
    h.import("redis");
    podman.load_fixture("redis");

    // Podman -> ferry.
    let mut run = vec!["run", "-d", "--name", "pr"];
    run.extend_from_slice(&ULIMITS);
    run.push("redis:latest");
    run.extend_from_slice(&REDIS_SERVER);
    podman.ok(&run);
    let pip = podman.ip("pr");
    h.wait_for("Podman's redis", WAIT, || {
        h.redis_cli(&pip, &["PING"]) == "PONG"
    });
    for i in 0..100 {
        assert_eq!(
            h.redis_cli(&pip, &["SET", &format!("k{i}"), &format!("v{i}")]),
            "OK"
        );
    }
    let archive = podman.dir().join("redis-from-podman.tar.zst");
    podman.ok(&[
        "container",
        "checkpoint",
        "--export",
        archive.to_str().unwrap(),
        "pr",
    ]);
    h.ferry_ok(&[
        "restore",
        "--import",
        archive.to_str().unwrap(),
        "--ip",
        "10.78.1.61",
    ]);
    let fip = "10.78.1.61";
    h.wait_for("redis restored by ferry", WAIT, || {
        h.redis_cli(fip, &["PING"]) == "PONG"
    });
    for i in 0..100 {
        assert_eq!(
            h.redis_cli(fip, &["GET", &format!("k{i}")]),
            format!("v{i}")
        );
    }
    assert_eq!(h.redis_cli(fip, &["SET", "added-by-ferry", "yes"]), "OK");

    // ferry -> Podman.
    let back = podman.dir().join("redis-from-ferry.tar.zst");
    podman.ok(&["rm", "-f", "pr"]);
    h.ferry_ok(&["checkpoint", "pr", "--export", back.to_str().unwrap()]);
    podman.ok(&[
        "container",
        "restore",
        "--import",
        back.to_str().unwrap(),
        "--ignore-static-ip",
        "--ignore-static-mac",
    ]);
    let pip = podman.ip("pr");
    h.wait_for("redis restored by Podman", WAIT, || {
        h.redis_cli(&pip, &["PING"]) == "PONG"
    });
    for i in 0..100 {
        assert_eq!(
            h.redis_cli(&pip, &["GET", &format!("k{i}")]),
            format!("v{i}")
        );
    }
    assert_eq!(h.redis_cli(&pip, &["GET", "added-by-ferry"]), "yes");
}

#[test]
fn checkpoint_images_cross_both_ways() {
    let h = Host::start();
    let Some(podman) = Podman::beside(&h) else {
        return;
    };
    h.import("busybox");
    podman.load_fixture("busybox");

    // ferry makes a checkpoint image; ferry restores from it; Podman restores from it.
    h.run_counter("fc", &[], 5);
    let out = h.ferry_ok(&["checkpoint", "fc", "--create-image", "ckpt/fc:1", "--json"]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        rep["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{rep}"
    );
    let last = *ticks(&h.logs("fc")).last().unwrap();
    h.ferry_ok(&["rm", "fc"]);
    h.ferry_ok(&["restore", "ckpt/fc:1"]);
    let t = wait_ticks(&h, "ticks after restoring ferry's image", 3, || {
        h.logs("fc")
    });
    assert_eq!(t[0], last + 1);
    assert_contiguous("from ferry's image", &t);
    h.ferry_ok(&["rm", "-f", "fc"]);

    let saved = podman.dir().join("fc-image.tar");
    h.ferry_ok(&["image", "save", "ckpt/fc:1", "-o", saved.to_str().unwrap()]);
    podman.ok(&["load", "-i", saved.to_str().unwrap()]);
    podman.ok(&[
        "container",
        "restore",
        "--ignore-static-ip",
        "--ignore-static-mac",
        "localhost/ckpt/fc:1",
    ]);
    let t = wait_ticks(&h, "ticks after Podman restored ferry's image", 3, || {
        podman.logs("fc")
    });
    assert_eq!(
        t[0],
        last + 1,
        "Podman's copy did not continue at the image"
    );
    assert_contiguous("Podman from ferry's image", &t);
    podman.ok(&["rm", "-f", "fc"]);

    // Podman makes one; ferry restores from it.
    let mut run = vec!["run", "-d", "--name", "pc"];
    run.extend_from_slice(&ULIMITS);
    run.extend_from_slice(&["busybox:latest", "sh", "-c", ferry_e2e::COUNTER]);
    podman.ok(&run);
    wait_ticks(&h, "Podman's counter", 5, || podman.logs("pc"));
    podman.ok(&["container", "checkpoint", "--create-image", "pck:1", "pc"]);
    let last = *ticks(&podman.logs("pc")).last().unwrap();
    let archive = podman.dir().join("pck.tar");
    podman.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        "pck:1",
    ]);
    h.ferry_ok(&["image", "import", archive.to_str().unwrap()]);
    h.ferry_ok(&["restore", "localhost/pck:1", "--ip", "10.78.1.62"]);
    let t = wait_ticks(&h, "ticks after restoring Podman's image", 3, || {
        h.logs("pc")
    });
    assert_eq!(
        t[0],
        last + 1,
        "ferry's copy did not continue at Podman's image"
    );
    assert_contiguous("from Podman's image", &t);
}

#[test]
fn a_podman_containers_volume_and_dev_shm_come_along() {
    let h = Host::start();
    let Some(podman) = Podman::beside(&h) else {
        return;
    };
    h.import("busybox");
    podman.load_fixture("busybox");
    let script = format!(
        "echo in-shm > /dev/shm/x; echo in-volume > /data/v; {}",
        ferry_e2e::COUNTER
    );
    let mut run = vec!["run", "-d", "--name", "pv", "-v", "pdata:/data"];
    run.extend_from_slice(&ULIMITS);
    run.extend_from_slice(&["busybox:latest", "sh", "-c", &script]);
    podman.ok(&run);
    wait_ticks(&h, "Podman's counter", 5, || podman.logs("pv"));
    let archive = podman.dir().join("pv.tar.zst");
    podman.ok(&[
        "container",
        "checkpoint",
        "--export",
        archive.to_str().unwrap(),
        "pv",
    ]);
    let last = *ticks(&podman.logs("pv")).last().unwrap();
    h.ferry_ok(&[
        "restore",
        "--import",
        archive.to_str().unwrap(),
        "--ip",
        "10.78.1.63",
    ]);
    let t = wait_ticks(&h, "ticks under ferry", 3, || h.logs("pv"));
    assert_eq!(t[0], last + 1);
    let pid = h.inspect("pv")["pid"].as_u64().expect("running pid");
    let inside = |path: &str| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "cat", path])
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(inside("/dev/shm/x"), "in-shm", "/dev/shm was not carried");
    assert_eq!(
        inside("/data/v"),
        "in-volume",
        "the named volume was not carried"
    );
    assert_eq!(
        std::fs::read_to_string(h.root().join("volumes/pdata/_data/v")).unwrap(),
        "in-volume\n",
        "the volume is not a ferry named volume"
    );
}
