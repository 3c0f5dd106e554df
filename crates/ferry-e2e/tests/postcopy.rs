//! Issue 8: post-copy (lazy) migration between lab hosts, against real runc, CRIU and Redis.
//! The same assertions as stop-and-copy: every acknowledged write, the same connections, one
//! copy; plus what post-copy adds: the memory arrives after the resume, and a source lost
//! after the resume leaves no half-working copy.

use std::time::Duration;

use ferry_e2e::lab::*;
use ferry_e2e::redis::RedisConn;
use ferry_e2e::writer::{verify_acked_keyed, Writer};

#[test]
fn redis_256mib_lazy_keeps_every_write_and_its_connections() {
    let t = lab();
    let ip = "10.77.1.60";
    start_redis(&t, "host-a", ip, 256 * 1024);
    let conn = RedisConn::connect(&t.client_ns(), ip).unwrap();
    let port = conn.local_port;
    let w = Writer::start_keyed(conn, "l:", Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(1));
    let (ok, report, err) = t.migrate_mode("host-a", "redis", "host-b", "lazy");
    assert!(ok, "migration failed: {err}\n{report}\n{}", t.logs_tail());
    assert_eq!(report["mode"], "post-copy", "{report}");
    assert_eq!(report["outcome"], "committed", "{report}");
    let at = w.acked();
    wait_for("writes continue on B", Duration::from_secs(20), || {
        w.acked() > at + 200
    });
    let mut r = w.stop();
    assert!(r.error.is_none(), "no reset or error: {:?}", r.error);
    assert_eq!(r.conn.local_port, port, "the same connection");
    verify_acked_keyed(&mut r.conn, "l:", r.acked_sets, r.acked_incrs);
    let dbsize = r.conn.int(&["DBSIZE"]).unwrap() as u64;
    assert_eq!(dbsize, 256 * 1024 + r.acked_sets + 1, "DBSIZE");
    assert_eq!(t.status("host-a", "redis"), None, "the source copy is gone");
    assert_eq!(t.status("host-b", "redis").as_deref(), Some("running"));
    // The memory came after the resume, through the tunnel, and all of it.
    let lazy = &report["lazy"];
    assert!(
        lazy["bytes"].as_u64().unwrap() > 256 << 20,
        "the dataset was pulled lazily: {report}"
    );
    let pages = lazy["pages"].as_u64().unwrap();
    assert_eq!(
        lazy["pages_on_demand"].as_u64().unwrap() + lazy["pages_pushed"].as_u64().unwrap(),
        pages,
        "{report}"
    );
    assert!(pages > (256 << 20) / 4096, "{report}");
    assert!(
        report["bytes"]["pages"].as_u64().unwrap() > 256 << 20,
        "{report}"
    );
    eprintln!(
        "redis 256 MiB lazy: downtime {} ms, longest client stall {:?}, fully copied {} ms, \
         pull {:.0} MB/s, {} pages ({} on demand), total {} ms ({})",
        report["downtime_ms"],
        r.longest_stall,
        lazy["fully_copied_ms"],
        lazy["pull_mb_s"].as_f64().unwrap_or(0.0),
        pages,
        lazy["pages_on_demand"],
        report["total_ms"],
        phase_ms(&report)
    );
    t.assert_clean("host-a", "after a lazy migration out");
}

/// The stage of the only migration record on `host`, if there is one.
fn only_stage(t: &TestLab, host: &str) -> Option<String> {
    let recs = migration_records(t, host);
    assert!(recs.len() <= 1, "{host}: {recs:#?}");
    recs.first()
        .and_then(|r| r["stage"].as_str())
        .map(str::to_owned)
}

/// The link is cut before the destination resumes: nothing ran there yet, so the source
/// resumes (verified) and keeps every write on the same connection.
#[test]
fn lazy_link_cut_before_the_resume_rolls_back_to_the_source() {
    let t = lab();
    let ip = "10.77.1.61";
    start_redis(&t, "host-a", ip, 16 * 1024);
    let conn = RedisConn::connect(&t.client_ns(), ip).unwrap();
    let port = conn.local_port;
    let w = Writer::start_keyed(conn, "f:", Duration::from_millis(3));
    let dir = t.host_root("host-a").join("inject-fault");
    std::fs::create_dir_all(&dir).unwrap();
    let pause = dir.join("pause-source-restore");
    std::fs::write(&pause, b"").unwrap();
    let mut child = migrate_command_mode(&t, "redis", "lazy")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The source about to ask for the restore.
    wait_fault_reached(&dir, "source", "restore");
    t.link("host-b", false);
    std::fs::remove_file(&pause).unwrap();
    let status = child.wait().unwrap();
    t.link("host-b", true);
    assert!(!status.success(), "the migration must fail");
    wait_for("both records final", Duration::from_secs(90), || {
        only_stage(&t, "host-a").as_deref() == Some("rolled-back")
            && only_stage(&t, "host-b").as_deref() == Some("discarded")
    });
    assert_eq!(t.status("host-a", "redis").as_deref(), Some("running"));
    assert_eq!(t.status("host-b", "redis"), None);
    let at = w.acked();
    wait_for(
        "writes go on at the source",
        Duration::from_secs(30),
        || w.acked() > at + 100,
    );
    let mut r = w.stop();
    assert!(r.error.is_none(), "no reset or error: {:?}", r.error);
    assert_eq!(r.conn.local_port, port, "the same connection");
    verify_acked_keyed(&mut r.conn, "f:", r.acked_sets, r.acked_incrs);
    t.assert_clean("host-b", "a lazy migration rolled back");
}

/// The source's ferryd dies after the destination resumed, before the last page: the
/// migration cannot complete. The destination kills its copy at once (never a half-working
/// one) and records the loss. The source's CRIU takes its closed page connection for the end of
/// the transfer and ends the source too (the post-copy risk the README states); the restarted
/// source learns the verdict from the destination, records the loss and keeps the container's
/// record in error, saying what was lost.
#[test]
fn lazy_source_killed_while_draining_leaves_nothing_half_working() {
    let mut t = lab();
    let ip = "10.77.1.62";
    start_redis(&t, "host-a", ip, 256 * 1024);
    // A slow link keeps the drain going long enough to kill the source in the middle of it.
    t.throttle("host-b", "200mbit");
    let mut child = migrate_command_mode(&t, "redis", "lazy")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the destination draining", Duration::from_secs(90), || {
        only_stage(&t, "host-b").as_deref() == Some("draining")
    });
    t.lab.kill_ferryd("host-a").unwrap();
    let _ = child.wait();
    wait_for(
        "the destination records the loss",
        Duration::from_secs(60),
        || only_stage(&t, "host-b").as_deref() == Some("lost"),
    );
    assert_eq!(t.status("host-b", "redis"), None, "the copy was killed");
    let rec = &migration_records(&t, "host-b")[0];
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("post-copy") && e.contains("killed")),
        "{rec:#}"
    );
    t.lab.start_ferryd("host-a").unwrap();
    wait_for(
        "the source records the loss",
        Duration::from_secs(60),
        || only_stage(&t, "host-a").as_deref() == Some("lost"),
    );
    assert_eq!(
        t.status("host-a", "redis").as_deref(),
        Some("error"),
        "the source's container is marked in error"
    );
    let rec = &migration_records(&t, "host-a")[0];
    assert!(
        rec["error"].as_str().is_some_and(|e| e.contains("lost")),
        "{rec:#}"
    );
    // Nothing of the container runs on either host: no half-working copy.
    t.assert_clean("host-b", "the lost copy");
    let parent = t.lab.host("host-a").unwrap().cgroup_parent.clone();
    let cgroups = std::path::Path::new("/sys/fs/cgroup/freezer").join(parent);
    let tasks: Vec<String> = std::fs::read_dir(&cgroups)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| std::fs::read_to_string(e.path().join("tasks")).ok())
                .filter(|t| !t.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    assert!(tasks.is_empty(), "host-a still runs tasks: {tasks:?}");
}
