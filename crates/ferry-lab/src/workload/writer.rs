//! A client that keeps writing to Redis over one persistent connection while a container is
//! checkpointed or migrated, and remembers exactly which writes were acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::redis::{RedisConn, Reply};

pub struct WriterReport {
    /// SET w:<i> <i> acknowledged for i in 0..acked_sets.
    pub acked_sets: u64,
    /// INCR counter acknowledged this many times; each reply was the expected value.
    pub acked_incrs: u64,
    pub longest_stall: Duration,
    pub error: Option<String>,
    pub conn: RedisConn,
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    pub acked: Arc<AtomicU64>,
    handle: JoinHandle<WriterReport>,
}

impl Writer {
    /// Starts writing: alternately `SET w:i i` and `INCR counter`, one at a time, each waiting
    /// for its acknowledgement, with `pause` between rounds.
    pub fn start(conn: RedisConn, pause: Duration) -> Writer {
        Writer::start_keyed(conn, "", pause)
    }

    /// Like [`Writer::start`], with every key prefixed by `prefix` (several writers, one Redis).
    pub fn start_keyed(mut conn: RedisConn, prefix: &str, pause: Duration) -> Writer {
        let prefix = prefix.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let handle = std::thread::spawn(move || {
            let mut sets = 0u64;
            let mut incrs = 0u64;
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            let mut error = None;
            while !s.load(Ordering::SeqCst) {
                let i = sets.to_string();
                match conn.cmd(&["SET", &format!("{prefix}w:{i}"), &i]) {
                    Ok(Reply::Status(ok)) if ok == "OK" => sets += 1,
                    other => {
                        error = Some(format!("SET w:{i}: {other:?}"));
                        break;
                    }
                }
                match conn.cmd(&["INCR", &format!("{prefix}counter")]) {
                    Ok(Reply::Int(n)) if n as u64 == incrs + 1 => incrs += 1,
                    other => {
                        error = Some(format!("INCR #{}: {other:?}", incrs + 1));
                        break;
                    }
                }
                a.store(sets, Ordering::SeqCst);
                let now = Instant::now();
                longest = longest.max(now - last);
                last = now;
                std::thread::sleep(pause);
            }
            WriterReport {
                acked_sets: sets,
                acked_incrs: incrs,
                longest_stall: longest,
                error,
                conn,
            }
        });
        Writer {
            stop,
            acked,
            handle,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    pub fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("writer thread")
    }
}

/// Asserts every acknowledged write is present, using the given connection.
pub fn verify_acked(conn: &mut RedisConn, acked_sets: u64, acked_incrs: u64) {
    verify_acked_keyed(conn, "", acked_sets, acked_incrs)
}

pub fn verify_acked_keyed(conn: &mut RedisConn, prefix: &str, acked_sets: u64, acked_incrs: u64) {
    let counter_key = format!("{prefix}counter");
    let counter = match conn.cmd(&["GET", &counter_key]).expect("GET counter") {
        Reply::Bulk(Some(v)) => v.parse::<u64>().expect("counter value"),
        other => panic!("GET counter: {other:?}"),
    };
    assert_eq!(
        counter, acked_incrs,
        "counter equals the number of acknowledged INCRs"
    );
    let mut i = 0;
    while i < acked_sets {
        let end = (i + 500).min(acked_sets);
        let keys: Vec<String> = (i..end).map(|k| format!("{prefix}w:{k}")).collect();
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        match conn.cmd(&args).expect("MGET") {
            Reply::Array(vals) => {
                for (k, v) in (i..end).zip(vals) {
                    assert_eq!(
                        v,
                        Reply::Bulk(Some(k.to_string())),
                        "acknowledged write {prefix}w:{k} present"
                    );
                }
            }
            other => panic!("MGET: {other:?}"),
        }
        i = end;
    }
}

/// How many acknowledged writes a server lost, counted (where [`verify_acked_keyed`] stops at
/// the first one): the benchmark reports losses per method, also after a reset connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostWrites {
    /// Acknowledged `SET <prefix>w:i` whose value is missing or wrong.
    pub sets: u64,
    /// Acknowledged INCRs the counter lacks (0 when it holds at least as many).
    pub incrs: u64,
}

impl LostWrites {
    pub fn total(&self) -> u64 {
        self.sets + self.incrs
    }
}

/// Counts the acknowledged writes missing on the server, over `conn` (a fresh connection works
/// as well as the writer's own).
pub fn count_lost_keyed(
    conn: &mut RedisConn,
    prefix: &str,
    acked_sets: u64,
    acked_incrs: u64,
) -> std::io::Result<LostWrites> {
    let mut lost = LostWrites::default();
    let counter = match conn.cmd(&["GET", &format!("{prefix}counter")])? {
        Reply::Bulk(Some(v)) => v.parse::<u64>().unwrap_or(0),
        Reply::Bulk(None) => 0,
        other => {
            return Err(std::io::Error::other(format!(
                "GET {prefix}counter: {other:?}"
            )))
        }
    };
    lost.incrs = acked_incrs.saturating_sub(counter);
    let mut i = 0;
    while i < acked_sets {
        let end = (i + 500).min(acked_sets);
        let keys: Vec<String> = (i..end).map(|k| format!("{prefix}w:{k}")).collect();
        let mut args = vec!["MGET"];
        args.extend(keys.iter().map(String::as_str));
        match conn.cmd(&args)? {
            Reply::Array(vals) => {
                let present = (i..end)
                    .zip(&vals)
                    .filter(|(k, v)| **v == Reply::Bulk(Some(k.to_string())))
                    .count() as u64;
                lost.sets += (end - i) - present;
            }
            other => return Err(std::io::Error::other(format!("MGET: {other:?}"))),
        }
        i = end;
    }
    Ok(lost)
}
