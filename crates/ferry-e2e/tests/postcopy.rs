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
