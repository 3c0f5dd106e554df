//! Issue 4: live migration between lab hosts, against real runc, CRIU and Redis.
//! The three demos (counter, Redis under load, TCP stream) and the faults.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_e2e::lab::*;
use ferry_e2e::redis::{connect_in_netns, RedisConn};
use ferry_e2e::writer::{verify_acked_keyed, Writer};
use ferry_e2e::{ticks, COUNTER};

#[test]
fn counter_migrates_a_to_b_to_a() {
    let t = lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &[
            "run",
            "-d",
            "--name",
            "counter",
            "--hostname",
            "tally",
            "--add-host",
            "db:10.0.0.5",
            "busybox",
            "sh",
            "-c",
            COUNTER,
        ],
    );
    wait_for("ticks on A", Duration::from_secs(20), || {
        ticks(&t.logs("host-a", "counter")).len() >= 10
    });
    let before = *ticks(&t.logs("host-a", "counter")).last().unwrap();
    let (ok, report, err) = t.migrate("host-a", "counter", "host-b");
    assert!(ok, "A→B failed: {err}\n{}", t.logs_tail());
    assert_eq!(report["outcome"], "committed", "{report}");
    assert_eq!(
        t.status("host-a", "counter"),
        None,
        "the source copy is gone"
    );
    assert_eq!(t.status("host-b", "counter").as_deref(), Some("running"));
    // The name-resolution files are there on B, as the process sees them.
    let rec: serde_json::Value =
        serde_json::from_str(&t.ok("host-b", &["inspect", "counter"])).unwrap();
    let etc =
        |f: &str| std::fs::read_to_string(format!("/proc/{}/root/etc/{f}", rec["pid"])).unwrap();
    assert_eq!(etc("hostname"), "tally\n");
    assert!(etc("hosts").contains("10.0.0.5\tdb\n"), "{}", etc("hosts"));
    assert!(
        etc("resolv.conf").contains("nameserver "),
        "{}",
        etc("resolv.conf")
    );
    // B's log starts with A's history, so wait for B's own ticks past it.
    wait_for("ticks on B", Duration::from_secs(20), || {
        ticks(&t.logs("host-b", "counter")).len() as u64 > before + 5
    });
    // The log moves with the container: B shows A's history, then its own, as one count.
    let on_b = ticks(&t.logs("host-b", "counter"));
    assert_eq!(on_b[0], 1, "the history from A came along");
    assert!(
        on_b.len() as u64 > before + 5,
        "B counts on past A's {before}"
    );
    assert!(
        on_b.windows(2).all(|w| w[1] == w[0] + 1),
        "never resets, never jumps: {on_b:?}"
    );

    let last_b = *on_b.last().unwrap();
    let (ok, report, err) = t.migrate("host-b", "counter", "host-a");
    assert!(ok, "B→A failed: {err}\n{}", t.logs_tail());
    assert_eq!(
        report["layers_sent"], 0,
        "the image is already on A: {report}"
    );
    wait_for("ticks on A again", Duration::from_secs(20), || {
        ticks(&t.logs("host-a", "counter")).len() as u64 >= last_b + 5
    });
    let back = ticks(&t.logs("host-a", "counter"));
    assert_eq!(back[0], 1);
    assert!(
        back.windows(2).all(|w| w[1] == w[0] + 1),
        "one unbroken count over A→B→A: {back:?}"
    );
    assert_eq!(t.status("host-b", "counter"), None);
    eprintln!(
        "counter A→B→A: B→A downtime {} ms ({})",
        report["downtime_ms"],
        phase_ms(&report)
    );
}

#[test]
fn redis_256mib_keeps_every_write_and_its_connections() {
    let t = lab();
    let ip = "10.77.1.50";
    start_redis(&t, "host-a", ip, 256 * 1024);
    let ns = t.client_ns();
    let (c1, c2) = (
        RedisConn::connect(&ns, ip).unwrap(),
        RedisConn::connect(&ns, ip).unwrap(),
    );
    let ports = (c1.local_port, c2.local_port);
    let w1 = Writer::start_keyed(c1, "a:", Duration::from_millis(2));
    let w2 = Writer::start_keyed(c2, "b:", Duration::from_millis(3));
    std::thread::sleep(Duration::from_secs(1));
    let (ok, report, err) = t.migrate("host-a", "redis", "host-b");
    assert!(ok, "migration failed: {err}\n{}", t.logs_tail());
    let at = (w1.acked(), w2.acked());
    wait_for("writes continue on B", Duration::from_secs(20), || {
        w1.acked() > at.0 + 200 && w2.acked() > at.1 + 200
    });
    let (mut r1, mut r2) = (w1.stop(), w2.stop());
    assert!(
        r1.error.is_none() && r2.error.is_none(),
        "no reset or error: {:?} {:?}",
        r1.error,
        r2.error
    );
    assert_eq!(
        (r1.conn.local_port, r2.conn.local_port),
        ports,
        "the same connections"
    );
    verify_acked_keyed(&mut r1.conn, "a:", r1.acked_sets, r1.acked_incrs);
    verify_acked_keyed(&mut r2.conn, "b:", r2.acked_sets, r2.acked_incrs);
    let dbsize = r1.conn.int(&["DBSIZE"]).unwrap() as u64;
    assert_eq!(
        dbsize,
        256 * 1024 + r1.acked_sets + r2.acked_sets + 2,
        "DBSIZE"
    );
    assert_eq!(t.status("host-a", "redis"), None);
    assert_eq!(t.status("host-b", "redis").as_deref(), Some("running"));
    assert!(
        report["bytes"]["pages"].as_u64().unwrap() > 256 << 20,
        "memory moved: {report}"
    );
    assert_downtime_breakdown(&report);
    eprintln!(
        "redis 256 MiB: downtime {} ms, longest client stall {:?} / {:?}, total {} ms ({}), pages {} B, criu {}",
        report["downtime_ms"],
        r1.longest_stall,
        r2.longest_stall,
        report["total_ms"],
        phase_ms(&report),
        report["bytes"]["pages"],
        report["criu_dump"]
    );
}

/// The report says where the frozen window went: every part, in order, and they add up to
/// about the downtime (what falls between them is small next to it).
fn assert_downtime_breakdown(report: &serde_json::Value) {
    let w = &report["downtime_breakdown"];
    let parts: Vec<(&str, f64)> = w["parts"]
        .as_array()
        .unwrap_or_else(|| panic!("no downtime breakdown: {report}"))
        .iter()
        .map(|p| (p["part"].as_str().unwrap(), p["ms"].as_f64().unwrap()))
        .collect();
    let names: Vec<&str> = parts.iter().map(|p| p.0).collect();
    assert_eq!(
        names,
        [
            "freeze",
            "pages",
            "post-dump",
            "images",
            "delta",
            "restore",
            "commit"
        ],
        "{w}"
    );
    let total = w["total_ms"].as_f64().unwrap();
    let downtime = report["downtime_ms"].as_f64().unwrap();
    assert!((total - downtime).abs() <= 1.0, "the same window: {w}");
    let sum: f64 = parts.iter().map(|p| p.1).sum();
    let between = w["unaccounted_ms"].as_f64().unwrap();
    assert!((sum + between - total).abs() < 1.0, "{w}");
    assert!(
        between <= total * 0.1 + 20.0,
        "the parts explain the downtime: {sum} of {total} ms, {between} ms between them: {w}"
    );
    assert_eq!(
        w["parts"][1]["bytes"], report["bytes"]["pages"],
        "the pages part carried the pages: {w}"
    );
    let criu = &w["criu_dump"];
    assert!(criu["pages_written"].as_u64().unwrap() > 0, "{w}");
    assert!(criu["frozen_ms"].as_f64().unwrap() > 0.0, "{w}");
    let dest = &w["restore"];
    let on_dest = dest["destination_ms"].as_f64().unwrap();
    assert!(on_dest > 0.0, "{w}");
    assert!(
        dest["runc_restore_ms"].as_f64().unwrap() <= on_dest,
        "runc's restore is part of the destination's time: {w}"
    );
    assert!(
        parts[5].1 + 1.0 >= on_dest,
        "the source waited at least as long as the destination worked: {w}"
    );
    assert!(dest["criu_restore_ms"].as_f64().unwrap() > 0.0, "{w}");
}

/// A numbered line stream from a server in the container; the same client socket must see
/// every number, in order, across the migration.
#[test]
fn tcp_stream_keeps_flowing_on_the_same_socket() {
    tcp_stream_across("stop-copy");
}

/// Post-copy: the same socket, every line in order, while the memory follows the resume.
#[test]
fn tcp_stream_keeps_flowing_on_the_same_socket_in_lazy_mode() {
    tcp_stream_across("lazy");
}

/// The report names the mode that ran.
fn assert_mode(report: &serde_json::Value, mode: &str) {
    let name = if mode == "lazy" {
        "post-copy"
    } else {
        "stop-and-copy"
    };
    assert_eq!(report["mode"], name, "{report}");
}

fn tcp_stream_across(mode: &str) {
    let t = lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &[
            "run",
            "-d",
            "--name",
            "stream",
            "--ip",
            "10.77.1.60",
            "busybox",
            "nc",
            "-l",
            "-p",
            "9000",
            "-e",
            "sh",
            "-c",
            "i=0; while true; do echo $i; i=$((i+1)); usleep 2000; done",
        ],
    );
    let ns = t.client_ns();
    let mut sock = None;
    wait_for("stream server", Duration::from_secs(20), || {
        sock = connect_in_netns(&ns, "10.77.1.60:9000").ok();
        sock.is_some()
    });
    let sock = sock.unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(sock);
        let mut expect = 0u64;
        let mut longest = Duration::ZERO;
        let mut last = Instant::now();
        let mut line = String::new();
        while !s2.load(Ordering::SeqCst) {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) => return Err(format!("stream closed after {expect}")),
                Ok(_) => {}
                Err(e) => return Err(format!("read error after {expect}: {e}")),
            }
            let n: u64 = line
                .trim()
                .parse()
                .map_err(|_| format!("garbage {line:?}"))?;
            if n != expect {
                return Err(format!("expected {expect}, got {n}"));
            }
            expect += 1;
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        Ok((expect, longest))
    });
    std::thread::sleep(Duration::from_secs(2));
    let (ok, report, err) = t.migrate_mode("host-a", "stream", "host-b", mode);
    assert!(ok, "migration failed: {err}\n{}", t.logs_tail());
    assert_mode(&report, mode);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let (count, longest) = reader
        .join()
        .unwrap()
        .expect("an unbroken, in-order stream");
    assert!(count > 500, "the stream kept flowing: {count} lines");
    eprintln!(
        "stream ({mode}): {count} lines in order, longest gap {longest:?}, downtime {} ms",
        report["downtime_ms"]
    );
}

/// Checks an MPEG-TS byte stream as it arrives: 188-byte packets, each starting with the sync
/// byte, and per PID a continuity counter that goes up by one with every payload packet. A lost,
/// repeated or reordered packet, or a byte slip, breaks one of those.
struct TsChecker {
    buf: Vec<u8>,
    counters: std::collections::HashMap<u16, u8>,
    packets: u64,
}

impl TsChecker {
    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let whole = self.buf.len() / 188 * 188;
        for p in self.buf[..whole].chunks(188) {
            if p[0] != 0x47 {
                return Err(format!("lost sync at packet {}", self.packets));
            }
            let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
            let has_payload = p[3] & 0x10 != 0;
            let cc = p[3] & 0x0f;
            if has_payload && pid != 0x1fff {
                if let Some(prev) = self.counters.insert(pid, cc) {
                    if cc != (prev + 1) & 0x0f {
                        return Err(format!(
                            "PID {pid:#x}: continuity {prev} → {cc} at packet {}",
                            self.packets
                        ));
                    }
                }
            }
            self.packets += 1;
        }
        self.buf.drain(..whole);
        Ok(())
    }
}

/// The demo that failed in 2016: ffmpeg streams MPEG-TS from the container to a client outside;
/// the same socket must get an unbroken transport stream across the migration.
#[test]
fn mpegts_stream_from_ffmpeg_survives_migration() {
    mpegts_stream_across("stop-copy");
}

#[test]
fn mpegts_stream_from_ffmpeg_survives_lazy_migration() {
    mpegts_stream_across("lazy");
}

fn mpegts_stream_across(mode: &str) {
    let t = lab();
    t.import("host-a", "ffmpeg");
    t.ok(
        "host-a",
        &[
            "run",
            "-d",
            "--name",
            "video",
            "--ip",
            "10.77.1.61",
            "ffmpeg",
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25",
            "-c:v",
            "mpeg1video",
            "-b:v",
            "300k",
            "-f",
            "mpegts",
            "tcp://0.0.0.0:9100?listen=1",
        ],
    );
    let ns = t.client_ns();
    let mut sock = None;
    wait_for("ffmpeg listening", Duration::from_secs(30), || {
        sock = connect_in_netns(&ns, "10.77.1.61:9100").ok();
        sock.is_some()
    });
    let mut sock = sock.unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut ts = TsChecker {
            buf: Vec::new(),
            counters: Default::default(),
            packets: 0,
        };
        let mut buf = [0u8; 16384];
        let (mut longest, mut last) = (Duration::ZERO, Instant::now());
        while !s2.load(Ordering::SeqCst) {
            let n = sock
                .read(&mut buf)
                .map_err(|e| format!("read: {e} after {} packets", ts.packets))?;
            if n == 0 {
                return Err(format!("stream closed after {} packets", ts.packets));
            }
            ts.feed(&buf[..n])?;
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        Ok((ts.packets, longest))
    });
    std::thread::sleep(Duration::from_secs(3));
    let (ok, report, err) = t.migrate_mode("host-a", "video", "host-b", mode);
    assert!(ok, "migration failed: {err}\n{}", t.logs_tail());
    assert_mode(&report, mode);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    let (packets, longest) = reader.join().unwrap().expect("an unbroken MPEG-TS stream");
    assert!(packets > 500, "the video kept flowing: {packets} packets");
    eprintln!(
        "mpeg-ts ({mode}): {packets} packets intact, longest gap {longest:?}, downtime {} ms",
        report["downtime_ms"]
    );
}

#[test]
fn fault_destination_ferryd_killed_during_memory_transfer() {
    let mut t = lab();
    let ip = "10.77.1.70";
    start_redis(&t, "host-a", ip, 32 * 1024);
    let w = Writer::start_keyed(
        RedisConn::connect(&t.client_ns(), ip).unwrap(),
        "f:",
        Duration::from_millis(3),
    );
    t.throttle("host-b", "100mbit");
    let cmd = migrate_command(&t, "redis");
    let (ok, log) = migrate_and_interfere(cmd, || t.lab.kill_ferryd("host-b").unwrap());
    assert!(!ok, "the migration must fail:\n{log}");
    assert!(
        log.contains("rolled-back") || log.contains("rolled back"),
        "{log}"
    );
    assert_redis_intact(&t, ip, w, "dest killed");
    t.lab.start_ferryd("host-b").unwrap();
    t.assert_clean("host-b", "after the destination restarted");
}

#[test]
fn fault_link_cut_during_memory_transfer() {
    let t = lab();
    let ip = "10.77.1.71";
    start_redis(&t, "host-a", ip, 32 * 1024);
    t.throttle("host-b", "100mbit");
    // The client reaches A through the fabric; it stays connected while host-b is cut off.
    let w = Writer::start_keyed(
        RedisConn::connect(&t.client_ns(), ip).unwrap(),
        "f:",
        Duration::from_millis(3),
    );
    let (ok, log) = migrate_and_interfere(migrate_command(&t, "redis"), || t.link("host-b", false));
    assert!(!ok, "the migration must fail:\n{log}");
    assert_redis_intact(&t, ip, w, "link cut");
    t.link("host-b", true);
    wait_for(
        "the destination gives up and cleans up",
        Duration::from_secs(90),
        || {
            t.ferry("host-b", &["ps", "-a", "--json"])
                .stdout
                .starts_with(b"[]")
        },
    );
    t.assert_clean("host-b", "after the link came back");
}

#[test]
fn fault_restore_fails_on_destination() {
    let t = lab();
    let ip = "10.77.1.72";
    start_redis(&t, "host-a", ip, 32 * 1024);
    let w = Writer::start_keyed(
        RedisConn::connect(&t.client_ns(), ip).unwrap(),
        "f:",
        Duration::from_millis(3),
    );
    let fault = t.host_root("host-b").join("inject-fault");
    std::fs::create_dir_all(&fault).unwrap();
    std::fs::write(fault.join("restore"), b"").unwrap();
    let (ok, report, err) = t.migrate("host-a", "redis", "host-b");
    assert!(!ok, "the migration must fail");
    assert_eq!(report["outcome"], "rolled-back", "{report}\n{err}");
    assert!(err.contains("injected fault"), "{err}");
    assert_redis_intact(&t, ip, w, "restore failed");
    t.assert_clean("host-b", "after a failed restore");
}

#[test]
fn fault_destination_cannot_get_the_image() {
    let t = lab();
    t.import("host-a", "busybox");
    t.ok(
        "host-a",
        &[
            "run", "-d", "--name", "counter", "busybox", "sh", "-c", COUNTER,
        ],
    );
    wait_for("ticks", Duration::from_secs(20), || {
        ticks(&t.logs("host-a", "counter")).len() >= 3
    });
    // Damage the source's copy of the layer: the destination verifies digests and refuses it.
    let blobs = t.host_root("host-a").join("images/blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    let (ok, report, err) = t.migrate("host-a", "counter", "host-b");
    assert!(!ok);
    assert_eq!(report["outcome"], "refused", "{report}\n{err}");
    let n = ticks(&t.logs("host-a", "counter")).len();
    wait_for("the source keeps counting", Duration::from_secs(10), || {
        ticks(&t.logs("host-a", "counter")).len() > n + 5
    });
    t.assert_clean("host-b", "after the image could not be sent");
    let images = t.ok("host-b", &["image", "ls", "--json"]);
    assert_eq!(images.trim(), "[]", "no partial image on the destination");
}

#[test]
fn inotify_watch_migrates_and_keeps_firing() {
    let t = lab();
    let dir = tempfile::tempdir().unwrap();
    let layout = ferry_e2e::inotify_image(dir.path());
    t.ok("host-a", &["image", "import", layout.to_str().unwrap()]);
    t.ok(
        "host-a",
        &[
            "run",
            "-d",
            "--name",
            "watcher",
            "inotify",
            "sh",
            "-c",
            ferry_e2e::INOTIFY_WATCHER,
        ],
    );
    wait_for("inotify events on host-a", Duration::from_secs(20), || {
        ferry_e2e::events(&t.logs("host-a", "watcher")).len() >= 5
    });
    let (ok, report, err) = t.migrate("host-a", "watcher", "host-b");
    assert!(ok, "the watcher migrates: {err}\n{report}");
    let before = ferry_e2e::events(&t.logs("host-b", "watcher"));
    let last = before.last().map(|e| e.0).unwrap_or(0);
    wait_for(
        "the restored watch keeps firing on host-b",
        Duration::from_secs(20),
        || {
            let now = ferry_e2e::events(&t.logs("host-b", "watcher"));
            now.len() >= before.len() + 5
        },
    );
    let after = ferry_e2e::events(&t.logs("host-b", "watcher"));
    // Restored, not restarted: the event numbers go on from where they were.
    let next = after[before.len()].0;
    assert_eq!(next, last + 1, "events continue after {last}: {after:?}");
    t.assert_clean("host-a", "after the watcher left");
}

#[test]
fn migration_refuses_a_stopped_task_before_freezing() {
    let t = lab();
    t.import("host-a", "busybox");
    let script = format!("sleep 1000 & kill -STOP $!; {COUNTER}");
    t.ok(
        "host-a",
        &[
            "run", "-d", "--name", "counter", "busybox", "sh", "-c", &script,
        ],
    );
    wait_for("ticks", Duration::from_secs(20), || {
        ticks(&t.logs("host-a", "counter")).len() >= 3
    });
    let (ok, report, err) = t.migrate("host-a", "counter", "host-b");
    assert!(!ok, "a stopped task cannot move");
    assert_eq!(report["outcome"], "refused", "{report}\n{err}");
    let why = report["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("sleep 1000") && why.contains("stopped"),
        "the reason names the process and the cause: {why}"
    );
    // Never frozen: it keeps counting on host-a, and host-b has nothing.
    let n = ticks(&t.logs("host-a", "counter")).len();
    wait_for("the source keeps counting", Duration::from_secs(10), || {
        ticks(&t.logs("host-a", "counter")).len() > n + 5
    });
    assert_eq!(t.status("host-a", "counter").as_deref(), Some("running"));
    t.assert_clean("host-b", "after a refused migration");
}

/// Issue 13: hundreds of half-open connections to the destination's peer port (from the
/// clients' network, never a TLS hello) while a real migration runs: the migration goes
/// through, since handshakes are concurrent and capped per address.
#[test]
fn migration_goes_through_while_silent_clients_hold_the_peer_port() {
    let t = lab();
    let ip = "10.77.1.63";
    start_redis(&t, "host-a", ip, 16 * 1024);
    let peer = t.lab.host("host-b").unwrap().peer_address();
    let silent: Vec<_> = (0..300)
        .filter_map(|_| connect_in_netns(&t.client_ns(), &peer).ok())
        .collect();
    assert!(
        silent.len() >= 200,
        "{} silent clients connected",
        silent.len()
    );
    let w = Writer::start_keyed(
        RedisConn::connect(&t.client_ns(), ip).unwrap(),
        "s:",
        Duration::from_millis(3),
    );
    let (ok, report, err) = t.migrate("host-a", "redis", "host-b");
    assert!(ok, "migration failed: {err}\n{report}\n{}", t.logs_tail());
    assert_eq!(report["outcome"], "committed", "{report}");
    let at = w.acked();
    wait_for("writes continue on B", Duration::from_secs(20), || {
        w.acked() > at + 100
    });
    let mut r = w.stop();
    assert!(r.error.is_none(), "no reset or error: {:?}", r.error);
    verify_acked_keyed(&mut r.conn, "s:", r.acked_sets, r.acked_incrs);
    drop(silent);
}

/// Issue 13: an address already in use on the destination is refused at the prepare step,
/// before anything freezes, with the address named; the container runs on where it was.
#[test]
fn destination_refuses_an_ip_it_already_uses() {
    let t = lab();
    t.import("host-a", "busybox");
    t.import("host-b", "busybox");
    let ip = "10.77.1.64";
    for (host, name) in [("host-b", "squatter"), ("host-a", "mover")] {
        t.ok(
            host,
            &[
                "run", "-d", "--name", name, "--ip", ip, "busybox", "sleep", "3600",
            ],
        );
    }
    let (ok, report, err) = t.migrate("host-a", "mover", "host-b");
    assert!(!ok, "the migration must be refused: {report}");
    assert_eq!(report["outcome"], "refused", "{report}\n{err}");
    let why = report["error"].as_str().unwrap_or_default().to_owned() + &err;
    assert!(why.contains(ip), "the refusal names the address: {why}");
    assert_eq!(t.status("host-a", "mover").as_deref(), Some("running"));
    assert_eq!(t.status("host-b", "squatter").as_deref(), Some("running"));
    assert_eq!(t.status("host-b", "mover"), None);
}
