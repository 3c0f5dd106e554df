//! Issue 3: checkpoint and restore on one host, against real runc + CRIU + Redis.

use std::time::{Duration, Instant};

use ferry_e2e::redis::RedisConn;
use ferry_e2e::writer::{verify_acked, Writer};
use ferry_e2e::{ticks, Host, REDIS_SERVER};

fn netns_path(h: &Host) -> String {
    format!("/run/netns/{}", h.netns)
}

fn start_redis(h: &Host, name: &str, ip: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--ip", ip];
    args.extend_from_slice(extra);
    args.push("redis");
    args.extend_from_slice(&REDIS_SERVER);
    h.ferry_ok(&args);
    h.wait_for("redis PONG", Duration::from_secs(20), || {
        h.redis_cli(ip, &["PING"]) == "PONG"
    });
}

#[test]
fn counter_continues_after_checkpoint_and_restore() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("counter", &[], 10);
    let out = h.ferry_ok(&["checkpoint", "counter", "--print-stats"]);
    assert!(out.contains("frozen time"), "{out}");
    assert_eq!(h.inspect("counter")["status"], "checkpointed");
    let before = ticks(&h.logs("counter"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ticks(&h.logs("counter")),
        before,
        "no ticks while checkpointed"
    );
    h.ferry_ok(&["restore", "counter"]);
    assert_eq!(h.inspect("counter")["status"], "running");
    h.wait_for("ticks after restore", Duration::from_secs(20), || {
        ticks(&h.logs("counter")).len() >= before.len() + 10
    });
    let after = ticks(&h.logs("counter"));
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "counter continues without reset or jump: {:?}",
        &after[before.len().saturating_sub(3)..(before.len() + 3).min(after.len())]
    );
}

#[test]
fn redis_keeps_acknowledged_writes_and_the_same_connection() {
    let h = Host::start();
    h.import("redis");
    start_redis(&h, "redis", "10.78.1.20", &[]);
    let ns = netns_path(&h);
    let mut setup = RedisConn::connect(&ns, "10.78.1.20").expect("connect");
    // Some bulk so the dump is not trivial.
    assert_eq!(
        setup
            .cmd(&["DEBUG", "POPULATE", "20000", "bulk", "1000"])
            .expect("populate"),
        ferry_e2e::redis::Reply::Status("OK".into())
    );
    let conn = RedisConn::connect(&ns, "10.78.1.20").expect("connect");
    let port = conn.local_port;
    let w = Writer::start(conn, Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let cp = h.ferry_ok(&["checkpoint", "redis", "--json"]);
    let cp: serde_json::Value = serde_json::from_str(&cp).unwrap();
    assert_eq!(cp["established_tcp"], true, "{cp}");
    assert!(
        cp["stats"]["pages_written"].as_u64().unwrap() > 1000,
        "{cp}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let rs = h.ferry_ok(&["restore", "redis", "--json"]);
    let downtime = t.elapsed();
    let acked_at_restore = w.acked();
    h.wait_for("writes continue", Duration::from_secs(20), || {
        w.acked() > acked_at_restore + 100
    });
    let mut rep = w.stop();
    assert!(rep.error.is_none(), "writer error: {:?}", rep.error);
    assert_eq!(rep.conn.local_port, port);
    verify_acked(&mut rep.conn, rep.acked_sets, rep.acked_incrs);
    let dbsize = rep.conn.int(&["DBSIZE"]).unwrap();
    assert_eq!(
        dbsize as u64,
        20000 + rep.acked_sets + 1,
        "DBSIZE = bulk + acked SETs + counter"
    );
    eprintln!(
        "redis checkpoint/restore: downtime {:?}, longest client stall {:?}, checkpoint {} ms, restore {}",
        downtime, rep.longest_stall, cp["checkpoint_ms"], rs
    );
}

#[test]
fn leave_running_snapshots_restore_the_older_one() {
    let h = Host::start();
    h.import("redis");
    start_redis(&h, "snap", "10.78.1.21", &[]);
    let ns = netns_path(&h);
    let conn = RedisConn::connect(&ns, "10.78.1.21").unwrap();
    let w = Writer::start(conn, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));
    let before_s1 = w.acked();
    h.ferry_ok(&["checkpoint", "snap", "--leave-running", "--name", "s1"]);
    let after_s1 = w.acked();
    std::thread::sleep(Duration::from_millis(500));
    let t = tempfile::tempdir().unwrap();
    let s2_archive = t.path().join("s2.tar.zst");
    h.ferry_ok(&[
        "checkpoint",
        "snap",
        "--leave-running",
        "--name",
        "s2",
        "--export",
        s2_archive.to_str().unwrap(),
    ]);
    assert_eq!(h.inspect("snap")["status"], "running");
    std::thread::sleep(Duration::from_millis(300));
    let rep = w.stop();
    assert!(
        rep.error.is_none(),
        "writes keep flowing during --leave-running: {:?}",
        rep.error
    );
    assert!(rep.acked_sets > after_s1 + 10);
    let ls = h.ferry_ok(&["checkpoint", "ls", "snap"]);
    assert!(ls.contains("s1") && ls.contains("s2"), "{ls}");

    // Restoring while the container runs is refused, and changes nothing.
    let e = h.ferry_err(&["restore", "snap", "--from", "s1"]);
    assert!(e.contains("running"), "{e}");
    h.ferry_ok(&["stop", "-t", "1", "snap"]);
    // Established connections pin the checkpoint to its name and address.
    let archive = s2_archive.to_str().unwrap();
    let e = h.ferry_err(&["restore", "--import", archive, "--name", "renamed"]);
    assert!(e.contains("established TCP"), "{e}");
    let e = h.ferry_err(&["restore", "--import", archive, "--ip", "10.78.1.99"]);
    assert!(e.contains("established TCP"), "{e}");
    h.ferry_ok(&["restore", "snap", "--from", "s1"]);
    let mut c = RedisConn::connect(&ns, "10.78.1.21").unwrap();
    for i in [0, before_s1.saturating_sub(1)] {
        assert_eq!(
            c.cmd(&["GET", &format!("w:{i}")]).unwrap(),
            ferry_e2e::redis::Reply::Bulk(Some(i.to_string())),
            "write acknowledged before s1 is in s1"
        );
    }
    for i in [after_s1 + 5, rep.acked_sets - 1] {
        assert_eq!(
            c.cmd(&["GET", &format!("w:{i}")]).unwrap(),
            ferry_e2e::redis::Reply::Bulk(None),
            "write acknowledged after s1 is not in s1"
        );
    }
}

#[test]
fn archive_roundtrip_with_rootfs_changes_and_volumes() {
    let h = Host::start();
    h.import("busybox");
    h.run_detached(
        "arch",
        &["-v", "vdata:/data"],
        "busybox",
        &[
            "sh",
            "-c",
            "echo created > /made-inside; rm /etc/passwd; echo volume-data > /data/v; \
         i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        ],
    );
    h.wait_for("ticks", Duration::from_secs(20), || {
        ticks(&h.logs("arch")).len() >= 5
    });
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("arch.tar.zst");
    h.ferry_ok(&["checkpoint", "arch", "--export", archive.to_str().unwrap()]);
    assert!(archive.metadata().unwrap().len() > 0);
    let last = *ticks(&h.logs("arch")).last().unwrap();
    h.ferry_ok(&["rm", "arch"]);
    // The archive must carry the volume: remove the host's copy.
    std::fs::remove_dir_all(h.root().join("volumes/vdata")).unwrap();
    h.ferry_ok(&["restore", "--import", archive.to_str().unwrap()]);
    let rec = h.inspect("arch");
    assert_eq!(rec["status"], "running");
    h.wait_for("ticks after import", Duration::from_secs(20), || {
        ticks(&h.logs("arch")).iter().any(|&n| n > last + 3)
    });
    let after = ticks(&h.logs("arch"));
    assert_eq!(
        after[0],
        last + 1,
        "the imported copy continues the count: {after:?}"
    );
    let merged = h
        .root()
        .join("containers")
        .join(rec["config"]["id"].as_str().unwrap())
        .join("rootfs");
    assert_eq!(
        std::fs::read_to_string(merged.join("made-inside")).unwrap(),
        "created\n"
    );
    assert!(
        !merged.join("etc/passwd").exists(),
        "a file deleted before the checkpoint stays deleted"
    );
    assert_eq!(
        std::fs::read_to_string(h.root().join("volumes/vdata/_data/v")).unwrap(),
        "volume-data\n"
    );
}

#[test]
fn imports_refuse_duplicates_and_corrupt_archives() {
    let h = Host::start();
    h.import("busybox");
    h.run_counter("orig", &["--ip", "10.78.1.30"], 3);
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good.tar");
    h.ferry_ok(&[
        "checkpoint",
        "orig",
        "--leave-running",
        "--export",
        good.to_str().unwrap(),
        "--compress",
        "none",
    ]);
    let before = h.ferry_ok(&["ps", "-a", "--json"]);

    // The original still runs: same name, then same IP, are refused.
    let e = h.ferry_err(&["restore", "--import", good.to_str().unwrap()]);
    assert!(e.contains("already exists"), "{e}");
    let e = h.ferry_err(&[
        "restore",
        "--import",
        good.to_str().unwrap(),
        "--name",
        "copy",
    ]);
    assert!(e.contains("10.78.1.30"), "{e}");

    let bytes = std::fs::read(&good).unwrap();
    let flipped = t.path().join("flipped.tar");
    let mut f = bytes.clone();
    let mid = f.len() / 2;
    f[mid] ^= 0x40;
    std::fs::write(&flipped, f).unwrap();
    let truncated = t.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let traversal = t.path().join("traversal.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&traversal).unwrap());
        let mut hd = tar::Header::new_gnu();
        hd.set_size(3);
        hd.set_mode(0o644);
        hd.set_path("placeholder").unwrap();
        let name = b"../evil";
        hd.as_old_mut().name[..name.len()].copy_from_slice(name);
        hd.as_old_mut().name[name.len()..]
            .iter_mut()
            .for_each(|c| *c = 0);
        hd.set_cksum();
        b.append(&hd, &b"bad"[..]).unwrap();
        b.finish().unwrap();
    }
    for (what, file) in [
        ("flipped byte", &flipped),
        ("truncated", &truncated),
        ("../ entry", &traversal),
    ] {
        let e = h.ferry_err(&[
            "restore",
            "--import",
            file.to_str().unwrap(),
            "--name",
            "bad",
        ]);
        assert!(!e.trim().is_empty(), "{what}: no error text");
        eprintln!("{what}: {e}");
    }
    assert_eq!(
        h.ferry_ok(&["ps", "-a", "--json"]),
        before,
        "nothing changed"
    );
    assert!(!std::path::Path::new("/evil").exists());
    let leftovers: Vec<_> = std::fs::read_dir(h.root().join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "no partial import left behind: {leftovers:?}"
    );
}
