//! One migration's connection, with its protocol state machine kept in step: every message
//! sent or received goes through the machine, so an out-of-order message is an error here,
//! not a surprise later.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::{
    Message, ReceiverMachine, SenderMachine, StreamCompression, StreamEnd, FIRST_BULK_STREAM,
};

use super::MigrationError;
use crate::peer::bulk::{recv_stream, send_stream};
use crate::peer::channel::{ControlReceiver, Demux, FrameSink};

/// Either side's machine.
pub enum Machine {
    Sender(SenderMachine),
    Receiver(ReceiverMachine),
}

impl Machine {
    fn on_send(&mut self, m: &Message) -> Result<(), ferry_proto::ProtoError> {
        match self {
            Machine::Sender(s) => s.on_send(m),
            Machine::Receiver(r) => r.on_send(m),
        }
    }

    pub(super) fn on_message(&mut self, m: &Message) -> Result<(), ferry_proto::ProtoError> {
        match self {
            Machine::Sender(s) => s.on_message(m),
            Machine::Receiver(r) => r.on_message(m),
        }
    }
}

pub struct Wire {
    pub sink: FrameSink,
    pub demux: Demux,
    pub control: ControlReceiver,
    pub machine: Machine,
    next_stream: u32,
}

/// Bounds a network wait, so a cut link becomes an error instead of a hang.
pub async fn within<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, MigrationError>>,
) -> Result<T, MigrationError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(MigrationError::Timeout {
            what: what.to_owned(),
            after: limit,
        }),
    }
}

impl Wire {
    pub fn new(sink: FrameSink, demux: Demux, control: ControlReceiver, machine: Machine) -> Self {
        Wire {
            sink,
            demux,
            control,
            machine,
            next_stream: FIRST_BULK_STREAM,
        }
    }

    pub fn new_stream(&mut self) -> u32 {
        let s = self.next_stream;
        self.next_stream += 1;
        s
    }

    pub async fn send(&mut self, m: Message) -> Result<(), MigrationError> {
        self.machine.on_send(&m)?;
        self.sink.send_message(&m).await?;
        Ok(())
    }

    /// Receives the next control message; a peer's `Abort` becomes an error.
    pub async fn recv(&mut self) -> Result<Message, MigrationError> {
        let m = self.control.recv().await?;
        self.machine.on_message(&m)?;
        if let Message::Abort { reason } = &m {
            return Err(MigrationError::PeerAborted(reason.clone()));
        }
        Ok(m)
    }

    pub async fn recv_within(
        &mut self,
        what: &str,
        limit: Duration,
    ) -> Result<Message, MigrationError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(MigrationError::Timeout {
                what: what.to_owned(),
                after: limit,
            }),
        }
    }

    /// Sends `msg` and waits for the reply, which `accept` turns into a value or rejects.
    /// `accept` picks the expected reply (`None`: unexpected). `Refuse` and `RestoreFailed` become
    /// their errors; heartbeats (`Progress`) only prove the
    /// peer alive, so `idle` bounds the silence, not the whole wait.
    pub async fn request<T>(
        &mut self,
        msg: Message,
        what: &str,
        idle: Duration,
        accept: impl Fn(Message) -> Option<T>,
    ) -> Result<T, MigrationError> {
        let expected = msg.name();
        self.send(msg).await?;
        self.await_reply(what, idle, accept)
            .await
            .map_err(|e| match e {
                MigrationError::Unexpected { expected: _, got } => MigrationError::Unexpected {
                    expected: "the reply",
                    got: format!("{got} (in answer to {expected})"),
                },
                other => other,
            })
    }

    /// The reply half of [`Wire::request`], for a request that was a message and a stream.
    pub async fn await_reply<T>(
        &mut self,
        what: &str,
        idle: Duration,
        accept: impl Fn(Message) -> Option<T>,
    ) -> Result<T, MigrationError> {
        loop {
            match self.recv_within(what, idle).await? {
                Message::Progress { .. } => continue,
                Message::Refuse { reason } => return Err(MigrationError::Refused(reason)),
                Message::RestoreFailed { reason } => {
                    return Err(MigrationError::RestoreFailed(reason))
                }
                reply => {
                    let got = reply.name().to_owned();
                    return accept(reply).ok_or(MigrationError::Unexpected {
                        expected: "the reply",
                        got,
                    });
                }
            }
        }
    }

    /// Sends a heartbeat every [`HEARTBEAT`] until the returned guard drops, so the peer can
    /// tell a long step from a dead host.
    pub fn heartbeat(&self, phase: &str) -> Heartbeat {
        let sink = self.sink.clone();
        let phase = phase.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // Never aborted mid-write (that would cut a frame in half): it notices the flag.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let m = Message::Progress {
                    phase: phase.clone(),
                    done: 0,
                    total: None,
                };
                if sink.send_message(&m).await.is_err() {
                    return;
                }
            }
        });
        Heartbeat(stop)
    }

    /// Ends this side of the connection (TLS close_notify, then shutdown), so the peer's reader
    /// sees the end and closes too: without it both sides would wait for each other and keep
    /// the connection open forever.
    pub async fn close(&self) {
        match tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing a peer connection"),
            Err(_) => tracing::debug!("closing a peer connection timed out"),
        }
    }

    /// Best effort: tells the peer we give up. Never fails.
    pub async fn abort(&mut self, reason: &str) {
        let m = Message::Abort {
            reason: reason.to_owned(),
        };
        let _ = self.machine.on_send(&m);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.send_message(&m)).await;
    }

    pub async fn send_file(
        &self,
        stream: u32,
        path: &Path,
        compression: StreamCompression,
    ) -> Result<StreamEnd, MigrationError> {
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| MigrationError::io(path, e))?;
        Ok(send_stream(
            &self.sink,
            stream,
            tokio::io::BufReader::new(f),
            compression,
        )
        .await?)
    }

    pub async fn recv_file(
        &self,
        stream: u32,
        path: &Path,
        compression: StreamCompression,
    ) -> Result<StreamEnd, MigrationError> {
        let mut rx = self.demux.stream(stream)?;
        let f = tokio::fs::File::create(path)
            .await
            .map_err(|e| MigrationError::io(path, e))?;
        let mut w = tokio::io::BufWriter::new(f);
        let end = recv_stream(&mut rx, &mut w, compression).await?;
        use tokio::io::AsyncWriteExt;
        w.flush().await.map_err(|e| MigrationError::io(path, e))?;
        Ok(end)
    }
}

/// How often a side busy with a long step says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Stops its heartbeat task when dropped.
pub struct Heartbeat(Arc<AtomicBool>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Transfer time budget: a floor plus the size at a pessimistic 10 MB/s.
pub fn budget(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(bytes / 10_000)
}
