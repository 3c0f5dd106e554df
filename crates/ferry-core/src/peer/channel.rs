//! A framed, authenticated connection to a peer ferryd, and the demultiplexer on its read side.
//!
//! One connection carries everything of one migration: control messages, several bulk streams
//! and the CRIU page-server tunnel, interleaved frame by frame.
//!
//! **Writing.** [`FrameSink`] is cheap to clone; every task that sends (the migration driver, a
//! blob sender, the tunnel) holds a clone. Each frame is written whole under a fair lock, so frames
//! never interleave mid-frame and a bulk stream cannot starve the tunnel for more than one frame.
//!
//! **Reading.** [`Demux::spawn`] takes the [`FrameSource`] and runs one task that reads frames in
//! order and routes them:
//! - `Control` and `Abort` frames → the [`ControlReceiver`] (in order);
//! - `Data`/`DataEnd` frames → a bounded channel per stream id, handed out once by
//!   [`Demux::stream`]. A stream's channel is created by whichever comes first, the first frame or
//!   the `stream()` call, so data that arrives before its consumer asks is kept (up to the channel
//!   bound) rather than lost.
//!
//! Backpressure: when a stream's channel is full the demux waits, which pauses every stream on the
//! connection (TCP then pushes back on the sender). So each announced stream must be consumed, and
//! a consumer must not wait on a control message while its stream's channel is full. The protocol
//! announces every stream by a control message *before* its data, so a reader that takes a stream
//! when it sees the announcement never deadlocks. Dropping a [`StreamReceiver`] discards the rest
//! of that stream.
//!
//! When the connection ends (EOF, I/O error, bad frame) the control receiver yields the error (or
//! [`PeerError::Closed`]) and every stream receiver yields `Closed`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{Frame, FrameKind, Header, Message, StreamEnd, HEADER_LEN, MAX_FRAME};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::tls::{host_name, HostIdentity};
use super::PeerError;

/// How long a TCP connect plus TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames buffered per stream before the demux pushes back.
const STREAM_QUEUE: usize = 32;
/// Control messages buffered before the demux pushes back.
const CONTROL_QUEUE: usize = 64;
/// Frames up to this size are joined with their header before they go into TLS.
const SMALL_FRAME: usize = 16 * 1024;

type Tls = TlsStream<TcpStream>;

/// An authenticated TLS connection to a named peer.
pub struct PeerConn {
    stream: Tls,
    peer: String,
    /// A frame read ahead by [`PeerConn::first_message`], handed out first after `split`.
    pending: Option<Frame>,
}

impl std::fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConn")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than {HANDSHAKE_TIMEOUT:?}"),
    )
}

impl PeerConn {
    /// Connects to `addr` and proves it is `peer_name`: its certificate must be signed by the
    /// cluster CA and issued to that name.
    pub async fn connect(
        identity: &HostIdentity,
        peer_name: &str,
        addr: SocketAddr,
    ) -> Result<PeerConn, PeerError> {
        Self::connect_with(identity.client_config(), peer_name, addr).await
    }

    pub(crate) async fn connect_with(
        config: Arc<rustls::ClientConfig>,
        peer_name: &str,
        addr: SocketAddr,
    ) -> Result<PeerConn, PeerError> {
        super::validate_name(peer_name)?;
        let server_name =
            rustls::pki_types::ServerName::try_from(peer_name.to_string()).map_err(|_| {
                PeerError::BadName {
                    name: peer_name.to_string(),
                    reason: "not a DNS name",
                }
            })?;
        let connect_err = |source| PeerError::Connect {
            peer: peer_name.to_string(),
            addr,
            source,
        };
        let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(timed_out("TCP connect")))?
            .map_err(connect_err)?;
        tcp.set_nodelay(true).map_err(PeerError::Net)?;
        let hs_err = |source| PeerError::Handshake {
            who: format!("{peer_name} at {addr}"),
            source,
        };
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(config).connect(server_name, tcp),
        )
        .await
        .map_err(|_| hs_err(timed_out("TLS handshake")))?
        .map_err(hs_err)?;
        Ok(PeerConn {
            stream: tls.into(),
            peer: peer_name.to_string(),
            pending: None,
        })
    }

    /// The authenticated name of the other host.
    pub fn peer_name(&self) -> &str {
        &self.peer
    }

    /// Reads the connection's first frame ahead, so the one who accepted it can tell what it
    /// is for (a migration, or a short question: see [`super::query`]) before handing it on.
    /// The frame stays queued: the receiving half of [`PeerConn::split`] yields it first.
    /// `None` when the peer closed without a word, or the first frame is not a message.
    pub async fn first_message(&mut self) -> Result<Option<Message>, PeerError> {
        if self.pending.is_none() {
            self.pending = read_frame(&mut self.stream).await?;
        }
        match &self.pending {
            Some(f) if matches!(f.kind, FrameKind::Control | FrameKind::Abort) => {
                Ok(Some(f.to_message()?))
            }
            _ => Ok(None),
        }
    }

    /// Drops the frame [`PeerConn::first_message`] read ahead: the caller has dealt with it.
    pub fn consume_first(&mut self) {
        self.pending = None;
    }

    /// Splits into a sending half (cloneable) and a receiving half (feed it to [`Demux::spawn`]).
    pub fn split(self) -> (FrameSink, FrameSource) {
        let (r, w) = tokio::io::split(self.stream);
        (
            FrameSink {
                inner: Arc::new(tokio::sync::Mutex::new(w)),
            },
            FrameSource {
                inner: BufReader::with_capacity(256 * 1024, r),
                pending: self.pending,
            },
        )
    }
}

/// Accepts peer connections: TLS with a client certificate from the cluster CA, required.
///
/// The listening port is open to the network before anyone is authenticated, so handshakes
/// never hold each other up: each runs in its own task with [`HANDSHAKE_TIMEOUT`], and at most
/// [`MAX_HANDSHAKES`] run at once ([`MAX_HANDSHAKES_PER_ADDR`] from one address). Connections
/// beyond that are closed at once. A few hundred half-open connections used to stall every
/// migration behind them.
pub struct PeerListener {
    local: SocketAddr,
    authenticated: mpsc::Receiver<Result<(PeerConn, String), PeerError>>,
    task: tokio::task::JoinHandle<()>,
}

/// Handshakes in flight at once, in all.
pub const MAX_HANDSHAKES: usize = 64;
/// Handshakes in flight at once from one source address.
pub const MAX_HANDSHAKES_PER_ADDR: usize = 8;

impl PeerListener {
    pub async fn bind(
        identity: &HostIdentity,
        addr: SocketAddr,
    ) -> Result<PeerListener, PeerError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| PeerError::Io {
                path: format!("listen {addr}").into(),
                source,
            })?;
        let local = tcp.local_addr().map_err(|source| PeerError::Io {
            path: format!("listen {addr}").into(),
            source,
        })?;
        let acceptor = TlsAcceptor::from(identity.server_config());
        let (tx, authenticated) = mpsc::channel(MAX_HANDSHAKES);
        let task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(PeerListener {
            local,
            authenticated,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next authenticated peer and its host name (from its certificate). An error concerns
    /// only that one attempt (refused certificate, timeout); call again for the next peer.
    pub async fn accept(&mut self) -> Result<(PeerConn, String), PeerError> {
        self.authenticated.recv().await.unwrap_or_else(|| {
            Err(PeerError::Net(std::io::Error::other(
                "the peer listener stopped",
            )))
        })
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Handshakes in flight, in all and per source address; a slot is given back on drop.
#[derive(Default)]
struct InFlight {
    total: usize,
    by_addr: HashMap<std::net::IpAddr, usize>,
}

struct HandshakeSlot {
    in_flight: Arc<Mutex<InFlight>>,
    addr: std::net::IpAddr,
}

impl HandshakeSlot {
    /// A slot for a handshake from `addr`, if both caps allow one.
    fn take(in_flight: &Arc<Mutex<InFlight>>, addr: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut f = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mine = f.by_addr.get(&addr).copied().unwrap_or(0);
        if f.total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_ADDR {
            return None;
        }
        f.total += 1;
        *f.by_addr.entry(addr).or_default() += 1;
        Some(HandshakeSlot {
            in_flight: in_flight.clone(),
            addr,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.total = f.total.saturating_sub(1);
        if let Some(n) = f.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                f.by_addr.remove(&self.addr);
            }
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<(PeerConn, String), PeerError>>,
) {
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let mut refused = 0u64;
    loop {
        let (stream, remote) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, say: the next accept may work; do not spin on it.
                tracing::warn!(error = %e, "accepting a peer connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = HandshakeSlot::take(&in_flight, remote.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%remote, refused, "too many peer handshakes in flight; closing");
            }
            continue;
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let result = handshake(&acceptor, stream, remote).await;
            drop(slot);
            let _ = tx.send(result).await;
        });
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<(PeerConn, String), PeerError> {
    tcp.set_nodelay(true).map_err(PeerError::Net)?;
    let hs_err = |source| PeerError::Handshake {
        who: remote.to_string(),
        source,
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| hs_err(timed_out("TLS handshake")))?
        .map_err(hs_err)?;
    let name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(host_name)
        .ok_or_else(|| PeerError::NoPeerName(remote.to_string()))?;
    Ok((
        PeerConn {
            stream: tls.into(),
            peer: name.clone(),
            pending: None,
        },
        name,
    ))
}

/// The sending half. Clone it for each task that sends.
#[derive(Clone)]
pub struct FrameSink {
    inner: Arc<tokio::sync::Mutex<WriteHalf<Tls>>>,
}

impl std::fmt::Debug for FrameSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameSink")
    }
}

impl FrameSink {
    async fn write(&self, kind: FrameKind, stream: u32, payload: &[u8]) -> Result<(), PeerError> {
        let header = Header::encode(kind, stream, payload);
        let mut w = self.inner.lock().await;
        // Small frames in one buffer: one write into the TLS layer, one record. A big payload
        // goes as it is, after its header: TLS copies it into its records anyway, so joining
        // them first would only copy every byte once more.
        if payload.len() <= SMALL_FRAME {
            let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
            buf.extend_from_slice(&header);
            buf.extend_from_slice(payload);
            w.write_all(&buf).await.map_err(PeerError::Net)?;
        } else {
            w.write_all(&header).await.map_err(PeerError::Net)?;
            w.write_all(payload).await.map_err(PeerError::Net)?;
        }
        w.flush().await.map_err(PeerError::Net)
    }

    pub async fn send_frame(&self, frame: &Frame) -> Result<(), PeerError> {
        self.write(frame.kind, frame.stream, &frame.payload).await
    }

    pub async fn send_message(&self, msg: &Message) -> Result<(), PeerError> {
        let frame = Frame::message(msg);
        if frame.payload.len() > MAX_FRAME {
            return Err(ferry_proto::ProtoError::TooLarge {
                length: frame.payload.len() as u32,
                max: MAX_FRAME,
            }
            .into());
        }
        self.send_frame(&frame).await
    }

    /// Sends `bytes` on `stream`, cut into frames of at most [`MAX_FRAME`].
    pub async fn send_data(&self, stream: u32, bytes: &[u8]) -> Result<(), PeerError> {
        assert_ne!(
            stream,
            ferry_proto::CONTROL_STREAM,
            "data never goes on the control stream"
        );
        for chunk in bytes.chunks(MAX_FRAME) {
            self.write(FrameKind::Data, stream, chunk).await?;
        }
        Ok(())
    }

    /// Fault injection only: a control frame whose payload does not match its CRC, as a
    /// corrupting link would deliver it.
    pub async fn send_corrupt_frame(&self) -> Result<(), PeerError> {
        let payload = br#"{"type":"progress","phase":"corrupt","done":0}"#;
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&Header::encode(
            FrameKind::Control,
            ferry_proto::CONTROL_STREAM,
            payload,
        ));
        buf.extend_from_slice(payload);
        let last = buf.len() - 2;
        buf[last] ^= 0x55;
        let mut w = self.inner.lock().await;
        w.write_all(&buf).await.map_err(PeerError::Net)?;
        w.flush().await.map_err(PeerError::Net)
    }

    /// Ends this side's half of `stream`.
    pub async fn send_end(&self, stream: u32, end: &StreamEnd) -> Result<(), PeerError> {
        self.send_frame(&Frame::end(stream, end)).await
    }

    /// Sends TLS close_notify and shuts down the write side.
    pub async fn close(&self) -> Result<(), PeerError> {
        self.inner
            .lock()
            .await
            .shutdown()
            .await
            .map_err(PeerError::Net)
    }
}

/// The receiving half: raw frames in order. Most users hand it to [`Demux::spawn`].
pub struct FrameSource {
    inner: BufReader<ReadHalf<Tls>>,
    /// A frame read before the split ([`PeerConn::first_message`]).
    pending: Option<Frame>,
}

impl FrameSource {
    /// The next frame; `None` when the peer closed cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Frame>, PeerError> {
        if let Some(f) = self.pending.take() {
            return Ok(Some(f));
        }
        read_frame(&mut self.inner).await
    }
}

/// One frame from `r`; `None` when the peer closed cleanly between frames.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, PeerError> {
    let mut header = [0u8; HEADER_LEN];
    // Read the first byte apart: EOF there is a clean close, anywhere later it is a cut.
    match r.read(&mut header[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(PeerError::Net(e)),
    }
    r.read_exact(&mut header[1..])
        .await
        .map_err(PeerError::Net)?;
    let h = Header::parse(&header)?;
    // Read into spare capacity: no zeroing of a buffer that is overwritten at once, and a
    // large payload bypasses the BufReader (read straight out of TLS, one copy less).
    let len = h.length as usize;
    let mut payload = Vec::with_capacity(len);
    let got = r
        .take(len as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(PeerError::Net)?;
    if got < len {
        return Err(PeerError::Net(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the connection ended {} bytes into a frame of {len}", got),
        )));
    }
    h.check_payload(&payload)?;
    Ok(Some(Frame {
        kind: h.kind,
        stream: h.stream,
        payload,
    }))
}

/// What arrives on a bulk stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Data(Vec<u8>),
    End(StreamEnd),
}

/// One stream's frames, from the demux.
#[derive(Debug)]
pub struct StreamReceiver {
    id: u32,
    rx: mpsc::Receiver<StreamItem>,
}

impl StreamReceiver {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next item; [`PeerError::Closed`] if the connection ended first.
    pub async fn recv(&mut self) -> Result<StreamItem, PeerError> {
        self.rx.recv().await.ok_or(PeerError::Closed)
    }
}

/// Control messages, in order, from the demux.
#[derive(Debug)]
pub struct ControlReceiver {
    rx: mpsc::Receiver<Result<Message, PeerError>>,
}

impl ControlReceiver {
    /// The next message (an `Abort` is returned as a message, for the state machine to see).
    /// After the connection ends: the error that ended it, then [`PeerError::Closed`].
    pub async fn recv(&mut self) -> Result<Message, PeerError> {
        self.rx.recv().await.unwrap_or(Err(PeerError::Closed))
    }
}

#[derive(Default)]
struct Slot {
    tx: Option<mpsc::Sender<StreamItem>>,
    rx: Option<mpsc::Receiver<StreamItem>>,
    taken: bool,
}

#[derive(Default)]
struct Table {
    slots: HashMap<u32, Slot>,
    closed: bool,
}

/// Handle on the demultiplexing task: hands out stream receivers. Cheap to clone.
#[derive(Clone)]
pub struct Demux {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Demux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Demux")
    }
}

impl Demux {
    /// Starts the routing task. It ends when the connection does.
    pub fn spawn(source: FrameSource) -> (Demux, ControlReceiver) {
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
        let demux = Demux {
            table: Arc::new(Mutex::new(Table::default())),
        };
        tokio::spawn(demux.clone().run(source, ctl_tx));
        (demux, ControlReceiver { rx: ctl_rx })
    }

    /// The receiver for `stream`. Each stream can be taken once.
    pub fn stream(&self, stream: u32) -> Result<StreamReceiver, PeerError> {
        let mut table = self.table.lock().expect("demux table lock");
        if table.closed && !table.slots.contains_key(&stream) {
            // The connection is gone: a receiver that reports Closed at once.
            let (_, rx) = mpsc::channel(1);
            return Ok(StreamReceiver { id: stream, rx });
        }
        let slot = table.slots.entry(stream).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            Slot {
                tx: Some(tx),
                rx: Some(rx),
                taken: false,
            }
        });
        if slot.taken {
            return Err(PeerError::StreamTaken(stream));
        }
        slot.taken = true;
        let rx = slot.rx.take().expect("untaken slot holds its receiver");
        if slot.tx.is_none() {
            // The stream already ended; its frames are buffered in `rx`.
            table.slots.remove(&stream);
        }
        Ok(StreamReceiver { id: stream, rx })
    }

    /// The sender for a data frame on `stream`, creating the slot if it is new.
    fn route(&self, stream: u32) -> Option<mpsc::Sender<StreamItem>> {
        let mut table = self.table.lock().expect("demux table lock");
        let slot = table.slots.entry(stream).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            Slot {
                tx: Some(tx),
                rx: Some(rx),
                taken: false,
            }
        });
        slot.tx.clone()
    }

    /// After a stream's end: drop its sender so its receiver sees the end of the channel.
    fn finish_stream(&self, stream: u32) {
        let mut table = self.table.lock().expect("demux table lock");
        if let Some(slot) = table.slots.get_mut(&stream) {
            if slot.taken {
                table.slots.remove(&stream);
            } else {
                slot.tx = None;
            }
        }
    }

    async fn run(self, mut source: FrameSource, control: mpsc::Sender<Result<Message, PeerError>>) {
        let outcome = self.pump(&mut source, &control).await;
        {
            let mut table = self.table.lock().expect("demux table lock");
            table.closed = true;
            for slot in table.slots.values_mut() {
                slot.tx = None;
            }
        }
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "peer connection failed");
            let _ = control.send(Err(e)).await;
        }
    }

    async fn pump(
        &self,
        source: &mut FrameSource,
        control: &mpsc::Sender<Result<Message, PeerError>>,
    ) -> Result<(), PeerError> {
        while let Some(frame) = source.recv().await? {
            match frame.kind {
                FrameKind::Control | FrameKind::Abort => {
                    let msg = frame.to_message()?;
                    if matches!(msg, Message::Progress { .. }) {
                        // A heartbeat only proves the peer alive; when nobody reads control for
                        // a while (a long upload), drop it rather than stall every stream.
                        let _ = control.try_send(Ok(msg));
                        continue;
                    }
                    // Nobody listening for control any more: keep routing streams regardless.
                    let _ = control.send(Ok(msg)).await;
                }
                FrameKind::Data => {
                    if let Some(tx) = self.route(frame.stream) {
                        // A dropped receiver means its consumer gave up on the stream: discard.
                        let _ = tx.send(StreamItem::Data(frame.payload)).await;
                    }
                }
                FrameKind::DataEnd => {
                    let end = frame.to_stream_end()?;
                    if let Some(tx) = self.route(frame.stream) {
                        let _ = tx.send(StreamItem::End(end)).await;
                    }
                    self.finish_stream(frame.stream);
                }
            }
        }
        Ok(())
    }
}
