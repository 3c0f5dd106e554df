//! Holding, not dropping, the packets that reach an uncommitted restored copy.
//!
//! A full gate drops a client's retransmissions while the destination restores; the client then
//! backs off exponentially and its next try can come seconds after the commit. With the hold
//! gate, incoming packets go to an NFQUEUE that ferry reads and keeps without a verdict; at the
//! commit they are accepted in order, so the client's latest retransmission reaches the restored
//! socket at once. The copy still sends nothing before the commit (its output is dropped), and
//! on abort the held packets are simply dropped with the queue.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use super::error::NetError;

/// The NFQUEUE number the hold gate sends packets to (queues are per network namespace).
pub const HOLD_QUEUE: u16 = 7470;
/// Packets kept at most; beyond that the kernel drops new ones, as the full gate would.
const MAX_HELD: u32 = 4096;

const RUN: u8 = 0;
const RELEASE: u8 = 1;
const DISCARD: u8 = 2;

/// A running hold on one container netns' incoming packets.
pub struct PacketHold {
    state: Arc<AtomicU8>,
    worker: Option<JoinHandle<Result<usize, NetError>>>,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> NetError {
    move |e| NetError::Socket {
        op: what,
        source: e,
    }
}

impl PacketHold {
    /// Binds the queue in `netns_path`; returns once packets can be held (install the gate after).
    pub fn start(netns_path: &Path) -> Result<Self, NetError> {
        let ns = File::open(netns_path).map_err(|source| NetError::Netns {
            path: netns_path.to_owned(),
            op: "open",
            source,
        })?;
        let state = Arc::new(AtomicU8::new(RUN));
        let st = state.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), NetError>>();
        let path = netns_path.to_owned();
        let worker = std::thread::Builder::new()
            .name("ferry-hold".into())
            .spawn(move || -> Result<usize, NetError> {
                let setup = (|| {
                    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                        path,
                        op: "setns",
                        source: e.into(),
                    })?;
                    let mut q = nfq::Queue::open().map_err(io("open NFQUEUE"))?;
                    q.bind(HOLD_QUEUE).map_err(io("bind NFQUEUE"))?;
                    q.set_queue_max_len(HOLD_QUEUE, MAX_HELD)
                        .map_err(io("size NFQUEUE"))?;
                    q.set_nonblocking(true);
                    Ok(q)
                })();
                let mut q = match setup {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(()));
                        q
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(0);
                    }
                };
                let mut held = Vec::new();
                loop {
                    match q.recv() {
                        Ok(msg) => held.push(msg),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            match st.load(Ordering::SeqCst) {
                                RUN => std::thread::sleep(Duration::from_millis(1)),
                                RELEASE => {
                                    let n = held.len();
                                    for mut msg in held {
                                        msg.set_verdict(nfq::Verdict::Accept);
                                        q.verdict(msg).map_err(io("NFQUEUE verdict"))?;
                                    }
                                    return Ok(n);
                                }
                                // Closing the queue drops whatever it holds.
                                _ => return Ok(0),
                            }
                        }
                        Err(e) => return Err(io("NFQUEUE receive")(e)),
                    }
                }
            })
            .map_err(NetError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(PacketHold {
                state,
                worker: Some(worker),
            }),
            Ok(Err(e)) => {
                let _ = worker.join();
                Err(e)
            }
            Err(_) => Err(NetError::Thread(std::io::Error::other(
                "packet hold thread ended before it was ready",
            ))),
        }
    }

    /// Lets every held packet through (after the gate is gone); returns how many there were.
    pub fn release(mut self) -> Result<usize, NetError> {
        self.state.store(RELEASE, Ordering::SeqCst);
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(NetError::Thread(std::io::Error::other(
                "packet hold thread panicked",
            ))),
            None => Ok(0),
        }
    }
}

impl Drop for PacketHold {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            self.state.store(DISCARD, Ordering::SeqCst);
            let _ = w.join();
        }
    }
}
