//! Issue 9: the fault matrix. Never on neither, never on both; nothing lost.
//!
//! Each cell migrates Redis (under one writer on one connection) from host-a to host-b, stops
//! one side at a named step (the driver's fault-injection points, see
//! `ferry_core::migration::fault`), injures it there (kill -9, SIGSTOP past the timeouts, a cut
//! link both ways or one way, a corrupt frame, a hung CRIU), lets it go on, and then asserts:
//! - exactly one running, reachable copy, and every record on both hosts final;
//! - every write the client saw acknowledged is there, on the same connection;
//! - nothing of the container left on the losing host.
//!
//! CI runs the cells below; the ones marked `full` are `#[ignore]`d to keep CI short, and
//! `cargo test -p ferry-e2e --test faults -- --include-ignored` runs the whole matrix.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use ferry_e2e::lab::*;
use ferry_e2e::redis::RedisConn;
use ferry_e2e::writer::{verify_acked_keyed, Writer};
use nix::sys::signal::Signal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillSource,
    KillDest,
    /// SIGSTOP the ferryd past the peer's timeouts, then SIGCONT.
    StopSource,
    StopDest,
    /// host-b's fabric link down, then up.
    CutBoth,
    /// Everything towards host-b dropped (a one-way partition), then healed.
    CutToDest,
    /// The paused side sends a frame with a bad checksum.
    Corrupt,
}

/// Where the container must end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Winner {
    Source,
    Destination,
    /// Timers race (a side comes back just as its peer's timeout fires): either is right,
    /// as long as it is exactly one.
    Either,
}

const IP: &str = "10.77.1.90";
/// Longer than every peer timeout (15 s of silence).
const STOPPED_FOR: Duration = Duration::from_secs(20);

/// Redis on host-a with `keys` 1 KiB values, and one client writing on one connection.
fn redis_under_writer(t: &TestLab, keys: u64) -> Writer {
    start_redis(t, "host-a", IP, keys);
    Writer::start_keyed(
        RedisConn::connect(&t.client_ns(), IP).unwrap(),
        "f:",
        Duration::from_millis(3),
    )
}

/// The client's connection goes on, and every write it saw acknowledged is there.
fn writes_intact(w: Writer, what: &str) {
    let before = w.acked();
    wait_for(
        &format!("{what}: writes go on"),
        Duration::from_secs(60),
        || w.acked() > before + 100,
    );
    let mut r = w.stop();
    assert!(r.error.is_none(), "{what}: client error {:?}", r.error);
    verify_acked_keyed(&mut r.conn, "f:", r.acked_sets, r.acked_incrs);
}

fn fault_dir(t: &TestLab, host: &str) -> PathBuf {
    let d = t.host_root(host).join("inject-fault");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn host_of(role: &str) -> &'static str {
    match role {
        "source" => "host-a",
        _ => "host-b",
    }
}

/// Every migration record on `host` (as `ferry migration ls --json` shows them).
fn records(t: &TestLab, host: &str) -> Vec<serde_json::Value> {
    let out = t.ferry(host, &["migration", "ls", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn all_final(t: &TestLab, host: &str) -> bool {
    let out = t.ferry(host, &["migration", "ls", "--json"]);
    out.status.success()
        && records(t, host).iter().all(|r| {
            matches!(
                r["stage"].as_str(),
                Some("committed" | "rolled-back" | "discarded")
            )
        })
}

/// Waits until every record on both hosts is final; on timeout, shows them.
fn wait_final(t: &TestLab, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if all_final(t, "host-a") && all_final(t, "host-b") {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "{what}: records not final after 120 s\nhost-a: {:#?}\nhost-b: {:#?}\n{}",
        records(t, "host-a"),
        records(t, "host-b"),
        t.logs_tail()
    );
}

fn wait_exit(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn cell(role: &str, step: &str, fault: Fault, winner: Winner, path: &[(&str, &str)]) {
    let mut t = lab();
    let w = redis_under_writer(&t, 16 * 1024);
    let at = host_of(role);
    let dir = fault_dir(&t, at);
    let pause = dir.join(format!("pause-{role}-{step}"));
    std::fs::write(&pause, b"").unwrap();
    let mut child = spawn_migrate(&t, "redis");
    wait_fault_reached(&dir, role, step);
    match fault {
        Fault::KillSource => t.lab.kill_ferryd("host-a").unwrap(),
        Fault::KillDest => t.lab.kill_ferryd("host-b").unwrap(),
        Fault::StopSource => t.lab.signal_ferryd("host-a", Signal::SIGSTOP).unwrap(),
        Fault::StopDest => t.lab.signal_ferryd("host-b", Signal::SIGSTOP).unwrap(),
        Fault::CutBoth => t.link("host-b", false),
        Fault::CutToDest => t.cut_toward("host-b", true),
        Fault::Corrupt => std::fs::write(dir.join(format!("corrupt-{role}-{step}")), b"").unwrap(),
    }
    std::fs::remove_file(&pause).unwrap();
    match fault {
        Fault::KillSource | Fault::KillDest => {
            std::thread::sleep(Duration::from_secs(2));
            let host = if fault == Fault::KillSource {
                "host-a"
            } else {
                "host-b"
            };
            std::fs::remove_dir_all(&dir).unwrap();
            t.lab.start_ferryd(host).unwrap();
        }
        Fault::StopSource | Fault::StopDest => {
            std::thread::sleep(STOPPED_FOR);
            let host = if fault == Fault::StopSource {
                "host-a"
            } else {
                "host-b"
            };
            t.lab.signal_ferryd(host, Signal::SIGCONT).unwrap();
        }
        Fault::CutBoth => {
            std::thread::sleep(STOPPED_FOR);
            t.link("host-b", true);
        }
        Fault::CutToDest => {
            std::thread::sleep(STOPPED_FOR);
            t.cut_toward("host-b", false);
        }
        Fault::Corrupt => {}
    }
    wait_exit(&mut child, Duration::from_secs(120));
    let what = format!("{role}:{step} × {fault:?}");
    wait_final(&t, &what);
    let on_b = t.status("host-b", "redis").as_deref() == Some("running");
    let (win, lose) = match winner {
        Winner::Source => ("host-a", "host-b"),
        Winner::Destination => ("host-b", "host-a"),
        Winner::Either if on_b => ("host-b", "host-a"),
        Winner::Either => ("host-a", "host-b"),
    };
    assert_eq!(
        t.status(win, "redis").as_deref(),
        Some("running"),
        "{what}: redis runs on {win}\n{}",
        t.logs_tail()
    );
    t.assert_clean(lose, &what);
    // The cell took the path it is about (an in-doubt wait, a verdict inquiry, ...).
    for (host, phrase) in path {
        let log = std::fs::read_to_string(&t.lab.host(host).unwrap().log).unwrap_or_default();
        assert!(
            log.contains(phrase),
            "{what}: {host}'s ferryd log says {phrase:?}\n{}",
            t.logs_tail()
        );
    }
    writes_intact(w, &what);
}

macro_rules! cells {
    ($($name:ident: $role:literal $step:literal $fault:ident => $winner:ident
       $([$($host:literal says $phrase:literal),*])? $(, $only_full:ident)?;)*) => {$(
        #[test]
        $(#[ignore = stringify!($only_full matrix: run with --include-ignored)])?
        fn $name() {
            cell($role, $step, Fault::$fault, Winner::$winner, &[$($(($host, $phrase)),*)?]);
        }
    )*};
}

cells! {
    handshake_dest_killed: "source" "handshake" KillDest => Source;
    image_corrupt_frame: "source" "image" Corrupt => Source;
    fs_pass_source_killed: "source" "fs-pass" KillSource => Source
        ["host-a" says "finishing an interrupted migration"];
    fs_pass_cut_both: "source" "fs-pass" CutBoth => Source, full;
    dump_dest_stopped: "source" "dump" StopDest => Source, full;
    images_source_killed: "source" "images" KillSource => Source
        ["host-a" says "finishing an interrupted migration"];
    images_dest_killed: "source" "images" KillDest => Source;
    images_corrupt_frame: "destination" "images" Corrupt => Source, full;
    delta_cut_both: "source" "delta" CutBoth => Source;
    delta_cut_to_dest: "source" "delta" CutToDest => Source, full;
    restore_dest_stopped: "source" "restore" StopDest => Source;
    restore_dest_killed: "destination" "restore" KillDest => Source;
    restore_source_stopped: "destination" "restore" StopSource => Either, full;
    commit_source_killed: "source" "commit" KillSource => Source
        ["host-b" says "lost the source before the verdict", "host-a" says "answered a verdict inquiry"];
    commit_dest_stopped: "source" "commit" StopDest => Destination
        ["host-a" says "no reply to Commit: in doubt"];
    commit_cut_to_dest: "source" "commit" CutToDest => Destination
        ["host-a" says "no reply to Commit: in doubt"];
    commit_source_stopped: "source" "commit" StopSource => Destination, full;
    commit_reply_dest_killed: "destination" "commit-reply" KillDest => Destination
        ["host-a" says "no reply to Commit: in doubt"];
    commit_reply_source_killed: "destination" "commit-reply" KillSource => Destination
        ["host-a" says "in-doubt migration settled after a restart"];
    commit_reply_corrupt_frame: "destination" "commit-reply" Corrupt => Destination
        ["host-a" says "no reply to Commit: in doubt"];
    commit_reply_cut_both: "destination" "commit-reply" CutBoth => Destination, full;
}

/// The destination's page scratch is a tiny tmpfs: the pages do not fit (disk full), the dump
/// fails, and the source must resume with nothing lost and nothing left on the destination.
#[test]
fn pages_dest_disk_full() {
    let t = lab();
    let w = redis_under_writer(&t, 16 * 1024);
    // A tiny tmpfs over host-b's page scratch, in its ferryd's mount namespace.
    let pages = t.host_root("host-b").join("pages");
    let ferryd = t.lab.host("host-b").unwrap().pid().unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--mount=/proc/{ferryd}/ns/mnt"))
        .args([
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=4m,mode=0700",
            "ferry-test-full",
        ])
        .arg(&pages)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, report, err) = t.migrate("host-a", "redis", "host-b");
    assert!(!ok, "the pages cannot fit: {report}");
    assert_eq!(report["outcome"], "rolled-back", "{report}\n{err}");
    assert_eq!(t.status("host-a", "redis").as_deref(), Some("running"));
    wait_final(&t, "the fault");
    t.assert_clean("host-b", "after the disk filled up");
    writes_intact(w, "page scratch full");
}

/// The CRIU processes dumping for host-a (children of its `runc checkpoint`).
fn criu_of(t: &TestLab, host: &str) -> Vec<i32> {
    let runc_root = t.lab.host(host).unwrap().runc_root.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "criu" {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .unwrap_or("0");
        let parent = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
        let parent = String::from_utf8_lossy(&parent).replace('\0', " ");
        if parent.contains("checkpoint") && parent.contains(&runc_root) {
            out.push(pid);
        }
    }
    out
}

/// CRIU hangs mid-dump (SIGSTOP): the stalled pages make the source give up, kill the stuck
/// CRIU, thaw and verify the container, which keeps every write.
#[test]
fn dump_criu_stopped() {
    let t = lab();
    let w = redis_under_writer(&t, 32 * 1024);
    t.throttle("host-b", "100mbit");
    let (ok, log) = migrate_and_interfere(migrate_command(&t, "redis"), || {
        let pids = criu_of(&t, "host-a");
        assert!(!pids.is_empty(), "a CRIU process dumps for host-a");
        for p in pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGSTOP).unwrap();
        }
    });
    assert!(!ok, "the migration must fail:\n{log}");
    assert!(
        log.contains("rolled-back") || log.contains("rolled back"),
        "a verified rollback:\n{log}"
    );
    assert!(criu_of(&t, "host-a").is_empty(), "the stuck CRIU is gone");
    assert_eq!(t.status("host-a", "redis").as_deref(), Some("running"));
    wait_final(&t, "the fault");
    t.assert_clean("host-b", "after CRIU hung on the source");
    let fresh = RedisConn::connect(&t.client_ns(), IP).and_then(|mut c| c.cmd(&["PING"]));
    assert!(
        fresh.is_ok(),
        "a new client reaches the resumed source: {fresh:?}"
    );
    writes_intact(w, "CRIU stopped");
}

/// The destination dies with its restored copy waiting and stays down: the source, in doubt,
/// stays frozen (never resumes on a guess) until the operator decides. `--resume-source` brings
/// it back, verified; the destination, once up again, learns the verdict and discards its copy.
#[test]
fn in_doubt_until_the_operator_resolves() {
    let mut t = lab();
    let w = redis_under_writer(&t, 16 * 1024);
    let dir = fault_dir(&t, "host-a");
    let pause = dir.join("pause-source-commit");
    std::fs::write(&pause, b"").unwrap();
    let mut child = spawn_migrate(&t, "redis");
    wait_fault_reached(&dir, "source", "commit");
    t.lab.kill_ferryd("host-b").unwrap();
    std::fs::remove_file(&pause).unwrap();
    let in_doubt = || {
        records(&t, "host-a")
            .iter()
            .find(|r| r["stage"] == "in-doubt")
            .and_then(|r| r["migration_id"].as_str().map(str::to_owned))
    };
    wait_for("the source in doubt", Duration::from_secs(30), || {
        in_doubt().is_some()
    });
    let id = in_doubt().unwrap();
    // It stays frozen while nobody knows: not running, on neither host for now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(t.status("host-a", "redis").as_deref(), Some("migrating"));
    // `resolve` needs the in-doubt wait to have started (after the Commit reply timed out).
    let mut resolved = String::new();
    wait_for(
        "the operator's decision taken",
        Duration::from_secs(40),
        || {
            let out = t.ferry(
                "host-a",
                &["migration", "resolve", &id, "--resume-source", "--json"],
            );
            resolved = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success()
        },
    );
    assert!(resolved.contains("rolled-back"), "{resolved}");
    assert_eq!(t.status("host-a", "redis").as_deref(), Some("running"));
    wait_exit(&mut child, Duration::from_secs(60));
    t.lab.start_ferryd("host-b").unwrap();
    wait_final(&t, "after the operator resumed the source");
    t.assert_clean("host-b", "the destination learnt the verdict");
    writes_intact(w, "resolved by the operator");
}
