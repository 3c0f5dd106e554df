//! `count_lost_keyed` against a real redis-server: it counts every acknowledged write the
//! server lacks, where `verify_acked_keyed` stops at the first. The server runs in a network
//! namespace of its own, so port 6379 is free whatever else runs on the machine.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::network::{create_netns, delete_netns};
use ferry_lab::workload::redis::{RedisConn, Reply};
use ferry_lab::workload::writer::{count_lost_keyed, LostWrites};

struct Server {
    child: Child,
    netns: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(e) = delete_netns(&self.netns) {
            eprintln!("cleanup: deleting {}: {e}", self.netns.display());
        }
    }
}

#[test]
fn counts_every_missing_acknowledged_write() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: redis-server is not installed (scripts/setup.sh installs it)");
        return;
    }
    // Not under any lab's prefix: a lab refuses to come up while a netns with its prefix exists.
    let netns = PathBuf::from(format!("/run/netns/lostw-{}", std::process::id()));
    create_netns(&netns).expect("creating a netns (needs root)");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    let server = Server { child, netns };
    let ns = server.netns.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match RedisConn::connect(&ns, "127.0.0.1") {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("redis-server never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    for i in 0..10 {
        let v = i.to_string();
        assert_eq!(
            conn.cmd(&["SET", &format!("p:w:{i}"), &v]).unwrap(),
            Reply::Status("OK".into())
        );
    }
    conn.cmd(&["SET", "p:counter", "7"]).unwrap();
    conn.cmd(&["DEL", "p:w:3", "p:w:8"]).unwrap();
    conn.cmd(&["SET", "p:w:5", "wrong"]).unwrap();

    let lost = count_lost_keyed(&mut conn, "p:", 10, 10).unwrap();
    assert_eq!(lost, LostWrites { sets: 3, incrs: 3 });
    assert_eq!(lost.total(), 6);
    // A fresh connection (the writer's own may have been reset) counts the same.
    let mut fresh = RedisConn::connect(&ns, "127.0.0.1").unwrap();
    assert_eq!(count_lost_keyed(&mut fresh, "p:", 10, 10).unwrap(), lost);
    // Nothing lost when the server holds at least what was acknowledged.
    assert_eq!(
        count_lost_keyed(&mut fresh, "p:", 3, 7).unwrap(),
        LostWrites::default()
    );
    drop(server);
}
