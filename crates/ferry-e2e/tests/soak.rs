//! Issue 9: the soak. Redis under one writer migrates host-a → host-b → host-a … and nothing
//! may grow: each ferryd's open fds, the mounts it sees, its netns files, the cgroups under its
//! parent, the processes on the machine, and TCP connections on the peer port.
//!
//! CI runs a short form; the documented command for the full one:
//! `FERRY_SOAK_MIGRATIONS=100 cargo test -p ferry-e2e --test soak -- --nocapture`

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_e2e::lab::*;
use ferry_e2e::redis::RedisConn;
use ferry_e2e::writer::{verify_acked_keyed, Writer};

const IP: &str = "10.77.1.95";

fn count_dir(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

/// What must not grow, per host.
fn resources(t: &TestLab) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in t.lab.hosts() {
        let Some(pid) = h.pid() else { continue };
        m.insert(
            format!("{} fds", h.name),
            count_dir(std::path::Path::new(&format!("/proc/{pid}/fd"))),
        );
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        m.insert(format!("{} mounts", h.name), mounts.lines().count());
        m.insert(
            format!("{} netns", h.name),
            count_dir(&h.root.join("netns")),
        );
        let cg = std::path::Path::new("/sys/fs/cgroup/pids").join(&h.cgroup_parent);
        m.insert(format!("{} cgroups", h.name), count_dirs(&cg));
        // Peer connections of this host, by state, that hold a socket (TIME-WAIT is the
        // kernel's alone and expires by itself).
        let ss = std::process::Command::new("nsenter")
            .arg(format!("--net={}", h.netns_path.display()))
            .args(["ss", "-Htan", "( sport = :7470 or dport = :7470 )"])
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&ss.stdout).lines() {
            let state = l.split_whitespace().next().unwrap_or("?");
            if state != "LISTEN" && state != "TIME-WAIT" {
                *m.entry(format!("{} peer {state}", h.name)).or_default() += 1;
            }
        }
    }
    m.insert("processes".into(), count_dir(std::path::Path::new("/proc")));
    m
}

fn count_dirs(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

#[test]
fn ping_pong_migrations_leak_nothing() {
    let n: usize = std::env::var("FERRY_SOAK_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let t = lab();
    start_redis(&t, "host-a", IP, 16 * 1024);
    let w = Writer::start_keyed(
        RedisConn::connect(&t.client_ns(), IP).unwrap(),
        "s:",
        Duration::from_millis(3),
    );
    // One round trip first, so lazily made things (images, bridges) exist before counting.
    let hosts = ["host-a", "host-b"];
    for i in 0..2 {
        let (ok, report, err) = t.migrate(hosts[i % 2], "redis", hosts[(i + 1) % 2]);
        assert!(ok, "warm-up migration {i}: {err}\n{report}");
    }
    std::thread::sleep(Duration::from_secs(3));
    let before = resources(&t);
    for i in 0..n {
        let (from, to) = (hosts[i % 2], hosts[(i + 1) % 2]);
        let (ok, report, err) = t.migrate(from, "redis", to);
        assert!(ok, "migration {i} {from} → {to}: {err}\n{report}");
        eprintln!(
            "soak {}/{n}: {from} → {to}, downtime {} ms",
            i + 1,
            report["downtime_ms"]
        );
    }
    // Let closing connections and exiting processes finish.
    std::thread::sleep(Duration::from_secs(5));
    let after = resources(&t);
    // Over every key of either count: a kind of connection that was not there before counts.
    let grown: Vec<String> = after
        .iter()
        .filter(|(k, v)| {
            // Other tests and the machine start processes too: allow a little noise there only.
            let slack = if k.as_str() == "processes" { 5 } else { 0 };
            **v > before.get(*k).copied().unwrap_or(0) + slack
        })
        .map(|(k, v)| format!("{k}: {} → {v}", before.get(k).copied().unwrap_or(0)))
        .collect();
    eprintln!("soak resources before {before:?}\nafter {after:?}");
    assert!(
        grown.is_empty(),
        "resources grew over {n} migrations: {grown:?}"
    );
    let mut r = w.stop();
    assert!(r.error.is_none(), "client error: {:?}", r.error);
    verify_acked_keyed(&mut r.conn, "s:", r.acked_sets, r.acked_incrs);
}
