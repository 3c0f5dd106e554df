//! One migration's connection, with its protocol state machine kept in step: every message
//! sent or received goes through the machine, so an out-of-order message is an error here,
//! not a surprise later.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ferry_proto::{
    Compression, Message, ReceiverMachine, SenderMachine, StreamEnd, FIRST_BULK_STREAM,
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

    fn on_message(&mut self, m: &Message) -> Result<(), ferry_proto::ProtoError> {
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
        compression: Compression,
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
        compression: Compression,
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

/// Transfer time budget: a floor plus the size at a pessimistic 10 MB/s.
pub fn budget(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(bytes / 10_000)
}
