//! A local connection carried over a channel stream, both directions.
//!
//! This is how CRIU's page-server protocol (stop-and-copy) and lazy-pages server (post-copy) talk across
//! hosts without their plain traffic ever leaving the host: each end only ever talks to a local
//! socket, and the bytes cross the network inside the authenticated TLS channel.
//!
//! - The stop-and-copy source hands its dump's CRIU one end of a unix socket pair
//!   (`criu::PageSocket`) and calls [`tunnel_unix`] with the other: no loopback TCP leg.
//! - The side whose CRIU *connects* over TCP (the post-copy destination: `criu lazy-pages
//!   --page-server`) calls [`tunnel_listen`] and gives CRIU the port.
//! - The side whose CRIU *listens* (the lazy page server on the source) calls [`tunnel_connect`]
//!   once that server is up.
//! - A side that answers in-process (the stop-and-copy destination, which writes the pages
//!   itself) calls [`tunnel_into`] with a [`LocalSink`].
//!
//! Both directions use the same stream id ([`ferry_proto::TUNNEL_STREAM`]); a `DataEnd` on it
//! half-closes that direction, which becomes a write shutdown of the local socket at the far end.
//! The tunnel is done when both directions have ended. Bytes are counted each way, live, for
//! progress and stats.
//! CRIU's client speaks first, so the connecting end never has to hold data before the local
//! client arrives.
//!
//! With [`Codec::Lz4`] (negotiated per migration) each frame's payload is tagged: the bytes as
//! read, or an LZ4 block when that is smaller. Memory pages are often mostly zeroes or text;
//! LZ4 runs at about 4.5 GB/s here even on random bytes, far under what the TLS channel costs
//! per byte, so it is worth trying on every frame (measured in bench/).
//!
//! A held tunnel ([`Hold`]) (post-copy) never lets its local CRIU see the far side fail:
//! when the peer or the link goes, it keeps the local connection open and reports the failure
//! ([`Tunnel::broken`]); the local connection closes only when the owner aborts the tunnel. The
//! owner acts first: a lazy-pages daemon that lost its source would let the restored process
//! read zeroes for its missing pages, and a lazy dump whose client vanished would thaw the
//! source, so the destination kills its copy (or the source kills CRIU) before the abort.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ferry_proto::StreamEnd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

use super::channel::{FrameSink, StreamItem, StreamReceiver};
use super::PeerError;

/// Per-frame read size: a read returns what the socket holds, so a large buffer adds no
/// latency to the page-server protocol's small requests and replies, while a bulk page stream goes in
/// few large frames (fewer syscalls, locks and wake-ups per byte; measured in bench/).
const CHUNK: usize = ferry_proto::MAX_FRAME;

/// Bytes carried, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Local connection → peer.
    pub to_peer: u64,
    /// Peer → local connection.
    pub from_peer: u64,
    /// What `to_peer` took on the wire (less than `to_peer` when LZ4 paid).
    pub to_peer_wire: u64,
}

/// How a tunnel's bytes travel in their frames (both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As read.
    Plain,
    /// A tag byte, then the bytes as read ([`RAW`]), or [`LZ4`] with the length they
    /// decompress to (u32, big-endian) and the block.
    Lz4,
}

/// Tags of an [`Codec::Lz4`] payload.
const RAW: u8 = 0;
const LZ4: u8 = 1;
const LZ4_HEADER: usize = 5;

/// Shared view of a tunnel's byte counts.
#[derive(Debug, Clone)]
pub struct TunnelCounters(Arc<Counters>);

impl TunnelCounters {
    pub fn from_peer(&self) -> u64 {
        self.0.from_peer.load(Ordering::Relaxed)
    }

    pub fn to_peer(&self) -> u64 {
        self.0.to_peer.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Counters {
    to_peer: AtomicU64,
    from_peer: AtomicU64,
    to_peer_wire: AtomicU64,
    /// When the first byte went to the peer (the first page of a dump).
    first_to_peer: OnceLock<Instant>,
    /// The local client closed its write side (it is done talking).
    local_done: std::sync::atomic::AtomicBool,
    /// Why a held tunnel stopped carrying bytes.
    broken: OnceLock<String>,
}

/// What a tunnel does when its far side fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Close the local connection (the local CRIU sees the failure at once).
    Never,
    /// On a broken link or a dead peer, keep the local connection open until the owner
    /// aborts (see the module docs). A clean end from the peer still passes through.
    OnError,
    /// Like `OnError`, and a peer that ends its direction before the local client ended its
    /// own counts as broken too (a lazy-pages daemon always closes first; its source server
    /// closing first means it died).
    OnErrorOrEarlyEnd,
}

/// A running tunnel.
#[derive(Debug)]
pub struct Tunnel {
    counters: Arc<Counters>,
    task: JoinHandle<Result<TunnelStats, PeerError>>,
}

impl Tunnel {
    /// Bytes carried so far (e.g. to show lazy pages still flowing).
    pub fn stats(&self) -> TunnelStats {
        self.counters.stats()
    }

    /// When the local client's first byte was read (for a dump: its first page bytes).
    pub fn first_byte_to_peer(&self) -> Option<Instant> {
        self.counters.first_to_peer.get().copied()
    }

    /// Why a held tunnel ([`Hold`]) stopped: the peer or the link failed, and the local
    /// connection is held open until [`Tunnel::abort`].
    pub fn broken(&self) -> Option<String> {
        self.counters.broken.get().cloned()
    }

    /// Waits until both directions have ended.
    pub async fn wait(self) -> Result<TunnelStats, PeerError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(PeerError::Net(std::io::Error::other(format!(
                "tunnel task failed: {e}"
            )))),
        }
    }

    /// A handle on the live byte counts that outlives borrowing the tunnel.
    pub fn counter_handle(&self) -> TunnelCounters {
        TunnelCounters(self.counters.clone())
    }

    /// Tears the tunnel down (on abort); the local connection is closed.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The listening end of a tunnel, bound on loopback before the local client is started.
#[derive(Debug)]
pub struct TunnelListener {
    listener: TcpListener,
}

/// Binds the local end for a client such as `criu lazy-pages --page-server 127.0.0.1:PORT`.
/// Refuses non-loopback addresses: the point is that nothing plain leaves the host.
pub async fn tunnel_listen(addr: SocketAddr) -> Result<TunnelListener, PeerError> {
    if !addr.ip().is_loopback() {
        return Err(PeerError::Net(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tunnel endpoints must be on loopback, not {addr}"),
        )));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| PeerError::Io {
            path: format!("tunnel listen {addr}").into(),
            source,
        })?;
    Ok(TunnelListener { listener })
}

impl TunnelListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts one local connection (in the background) and bridges it to `rx.id()`.
    pub fn bridge(self, sink: FrameSink, rx: StreamReceiver, codec: Codec) -> Tunnel {
        self.bridge_with(sink, rx, Hold::Never, codec)
    }

    /// [`TunnelListener::bridge`], choosing what a failure of the far side does.
    pub fn bridge_with(
        self,
        sink: FrameSink,
        rx: StreamReceiver,
        hold: Hold,
        codec: Codec,
    ) -> Tunnel {
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            let (tcp, from) = self.listener.accept().await.map_err(PeerError::Net)?;
            drop(self.listener);
            if !from.ip().is_loopback() {
                return Err(PeerError::Net(std::io::Error::other(format!(
                    "tunnel accepted a non-loopback client {from}"
                ))));
            }
            run_tcp(tcp, sink, rx, c, hold, codec).await
        });
        Tunnel { counters, task }
    }
}

/// Connects to the local server at `target` and bridges it to `rx.id()`.
pub async fn tunnel_connect(
    target: SocketAddr,
    sink: FrameSink,
    rx: StreamReceiver,
    codec: Codec,
) -> Result<Tunnel, PeerError> {
    tunnel_connect_with(target, sink, rx, Hold::Never, codec).await
}

/// [`tunnel_connect`], choosing what a failure of the far side does.
pub async fn tunnel_connect_with(
    target: SocketAddr,
    sink: FrameSink,
    rx: StreamReceiver,
    hold: Hold,
    codec: Codec,
) -> Result<Tunnel, PeerError> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|source| PeerError::Io {
            path: format!("tunnel connect {target}").into(),
            source,
        })?;
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(run_tcp(tcp, sink, rx, counters.clone(), hold, codec));
    Ok(Tunnel { counters, task })
}

/// Bridges `local`, a connected unix socket whose other end a local client was given (CRIU's
/// dump with `--ps-socket`, see `criu::PageSocket`), to `rx.id()`. The client may not be able
/// to close its end (runc keeps a copy of CRIU's), so the owner ends the local input with the
/// returned [`EndInput`] instead.
pub fn tunnel_unix(
    local: UnixStream,
    sink: FrameSink,
    rx: StreamReceiver,
    codec: Codec,
) -> (Tunnel, EndInput) {
    let counters = Arc::new(Counters::default());
    let (r, w) = local.into_split();
    let (tx, end) = tokio::sync::oneshot::channel();
    let r = EndableRead {
        inner: r,
        end: Some(end),
        ended: false,
    };
    let task = tokio::spawn(run(r, w, sink, rx, counters.clone(), Hold::Never, codec));
    (Tunnel { counters, task }, EndInput(tx))
}

/// Ends a [`tunnel_unix`]'s local input: the tunnel reads what the client already sent, then
/// takes it as the end of the input. Dropped without [`EndInput::end`], it ends nothing (a
/// failure is not a complete stream). No second handle on the socket is kept for this, so the
/// socket still closes with the tunnel and a client writing into a dead tunnel fails at once,
/// as with a TCP connection.
#[derive(Debug)]
pub struct EndInput(tokio::sync::oneshot::Sender<()>);

impl EndInput {
    pub fn end(self) {
        // The tunnel is gone already if nobody receives: nothing is left to end.
        let _ = self.0.send(());
    }
}

/// The local input of a [`tunnel_unix`]: once told to end, it reads what is still waiting in
/// the socket directly (not through the reactor's readiness, which may not have seen the last
/// bytes yet), and then reports end of file.
struct EndableRead {
    inner: tokio::net::unix::OwnedReadHalf,
    end: Option<tokio::sync::oneshot::Receiver<()>>,
    ended: bool,
}

impl AsyncRead for EndableRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        if !self.ended {
            if let Poll::Ready(r) = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
                return Poll::Ready(r);
            }
            let Some(end) = self.end.as_mut() else {
                return Poll::Pending;
            };
            match std::pin::Pin::new(end).poll(cx) {
                Poll::Ready(Ok(())) => self.ended = true,
                // The owner dropped its handle: never a clean end; keep reading.
                Poll::Ready(Err(_)) => {
                    self.end = None;
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // Told to end: what is waiting, then end of file. A plain non-blocking recv, since
        // tokio's own reads trust the cached readiness.
        use std::os::fd::AsRawFd;
        let fd = self.inner.as_ref().as_raw_fd();
        match nix::sys::socket::recv(
            fd,
            buf.initialize_unfilled(),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(nix::errno::Errno::EAGAIN) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl Counters {
    fn count_to_peer(&self, read: usize, wire: usize) {
        self.to_peer.fetch_add(read as u64, Ordering::Relaxed);
        self.to_peer_wire.fetch_add(wire as u64, Ordering::Relaxed);
    }

    fn stats(&self) -> TunnelStats {
        TunnelStats {
            to_peer: self.to_peer.load(Ordering::Relaxed),
            from_peer: self.from_peer.load(Ordering::Relaxed),
            to_peer_wire: self.to_peer_wire.load(Ordering::Relaxed),
        }
    }
}

async fn run_tcp(
    tcp: TcpStream,
    sink: FrameSink,
    rx: StreamReceiver,
    c: Arc<Counters>,
    hold: Hold,
    codec: Codec,
) -> Result<TunnelStats, PeerError> {
    tcp.set_nodelay(true).map_err(PeerError::Net)?;
    let (r, w) = tcp.into_split();
    run(r, w, sink, rx, c, hold, codec).await
}

async fn run<R, W>(
    mut r: R,
    mut w: W,
    sink: FrameSink,
    rx: StreamReceiver,
    c: Arc<Counters>,
    hold: Hold,
    codec: Codec,
) -> Result<TunnelStats, PeerError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let stream = rx.id();
    let carried = tokio::try_join!(
        local_to_peer(&mut r, &sink, stream, &c, codec),
        peer_to_local(rx, &mut w, &c, hold, codec)
    );
    if let Err(e) = carried {
        if hold == Hold::Never {
            return Err(e);
        }
        // `r` and `w` stay alive, so the local connection stays open until the owner aborts.
        let _ = c.broken.set(e.to_string());
        tracing::warn!(error = %e, "tunnel broken; holding the local connection for the owner");
        std::future::pending::<()>().await;
    }
    Ok(c.stats())
}

/// Frames what is read from the local connection, compressed where that pays.
struct Encoder {
    codec: Codec,
    /// What is read; with [`Codec::Lz4`] after a one-byte slot for the [`RAW`] tag.
    buf: Vec<u8>,
    /// Tag, length and LZ4 block.
    packed: Vec<u8>,
}

impl Encoder {
    fn new(codec: Codec) -> Encoder {
        let packed = match codec {
            Codec::Plain => Vec::new(),
            Codec::Lz4 => vec![0u8; LZ4_HEADER + lz4_flex::block::get_maximum_output_size(CHUNK)],
        };
        Encoder {
            codec,
            buf: vec![0u8; CHUNK],
            packed,
        }
    }

    /// The payload for `bytes` (at most [`CHUNK`]) produced in-process rather than read.
    fn encode(&mut self, bytes: &[u8]) -> &[u8] {
        let n = bytes.len();
        self.space()[..n].copy_from_slice(bytes);
        self.payload(n)
    }

    /// Where the next read goes.
    fn space(&mut self) -> &mut [u8] {
        match self.codec {
            Codec::Plain => &mut self.buf,
            Codec::Lz4 => &mut self.buf[1..],
        }
    }

    /// The payload for the `n` bytes just read.
    fn payload(&mut self, n: usize) -> &[u8] {
        match self.codec {
            Codec::Plain => &self.buf[..n],
            Codec::Lz4 => match pack(&mut self.buf, n, &mut self.packed) {
                Some(k) => &self.packed[..k],
                None => &self.buf[..=n],
            },
        }
    }
}

/// Packs the `n` bytes at `buf[1..=n]`: into `packed` as an LZ4 block when that is smaller
/// (returns the payload's length there), else tags them [`RAW`] in place (`buf[..=n]`).
fn pack(buf: &mut [u8], n: usize, packed: &mut [u8]) -> Option<usize> {
    if let Ok(k) = lz4_flex::block::compress_into(&buf[1..=n], &mut packed[LZ4_HEADER..]) {
        if LZ4_HEADER + k < 1 + n {
            packed[0] = LZ4;
            packed[1..LZ4_HEADER].copy_from_slice(&(n as u32).to_be_bytes());
            return Some(LZ4_HEADER + k);
        }
    }
    buf[0] = RAW;
    None
}

/// The bytes a tagged payload stands for. A peer's bad payload is refused, never trusted:
/// the length it claims is bounded by the frame size and must be what the block yields.
fn decode<'a>(
    payload: &'a [u8],
    scratch: &'a mut Vec<u8>,
    stream: u32,
) -> Result<&'a [u8], PeerError> {
    let bad = |reason: String| PeerError::StreamCheck { stream, reason };
    match payload.split_first() {
        Some((&RAW, bytes)) => Ok(bytes),
        Some((&LZ4, rest)) if rest.len() >= LZ4_HEADER - 1 => {
            let (len, block) = rest.split_at(LZ4_HEADER - 1);
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len > CHUNK {
                return Err(bad(format!("compressed frame claims {len} bytes")));
            }
            scratch.resize(len, 0);
            match lz4_flex::block::decompress_into(block, scratch) {
                Ok(got) if got == len => Ok(&scratch[..len]),
                Ok(got) => Err(bad(format!("compressed frame gave {got} bytes, not {len}"))),
                Err(e) => Err(bad(format!("bad compressed frame: {e}"))),
            }
        }
        _ => Err(bad("tunnel frame without a valid tag".into())),
    }
}

async fn local_to_peer(
    r: &mut (impl AsyncRead + Unpin + Send),
    sink: &FrameSink,
    stream: u32,
    c: &Counters,
    codec: Codec,
) -> Result<(), PeerError> {
    let total = match codec {
        Codec::Plain => plain_to_peer(r, sink, stream, c).await?,
        Codec::Lz4 => packed_to_peer(r, sink, stream, c).await?,
    };
    // The local side closed its write direction: pass the half-close on.
    c.local_done.store(true, Ordering::Relaxed);
    let end = StreamEnd {
        bytes: total,
        sha256: None,
    };
    sink.send_end(stream, &end).await
}

/// Reads, frames and sends, one after the other. Returns the bytes carried.
async fn plain_to_peer(
    r: &mut (impl AsyncRead + Unpin),
    sink: &FrameSink,
    stream: u32,
    c: &Counters,
) -> Result<u64, PeerError> {
    let mut enc = Encoder::new(Codec::Plain);
    let mut total = 0u64;
    loop {
        let n = read_local(r, enc.space(), stream).await?;
        if n == 0 {
            return Ok(total);
        }
        c.first_to_peer.get_or_init(Instant::now);
        let payload = enc.payload(n);
        sink.send_data(stream, payload).await?;
        total += n as u64;
        c.count_to_peer(n, payload.len());
    }
}

/// Read buffers in flight between reading, packing and sending.
const PIPELINE_DEPTH: usize = 4;

/// A frame ready to send: an LZ4 payload (its read buffer already went back), or the read
/// buffer itself, tagged raw, which goes back once sent.
enum Packed {
    Lz4 { payload: Vec<u8>, read: usize },
    Raw { buf: Vec<u8>, read: usize },
}

/// Reads, packs and sends as a pipeline: packing runs on a thread of its own, so on two cores
/// reading the next bytes and sending the last frame overlap with compressing this one (the
/// three in one task made the source the slowest stage of a dump; measured in bench/).
async fn packed_to_peer(
    r: &mut (impl AsyncRead + Unpin + Send),
    sink: &FrameSink,
    stream: u32,
    c: &Counters,
) -> Result<u64, PeerError> {
    use tokio::sync::mpsc;
    let (free_tx, mut free_rx) = mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH);
    for _ in 0..PIPELINE_DEPTH {
        free_tx
            .try_send(vec![0u8; CHUNK])
            .expect("the pool has room for its buffers");
    }
    let (read_tx, read_rx) = mpsc::channel::<(Vec<u8>, usize)>(PIPELINE_DEPTH);
    let (packed_tx, mut packed_rx) = mpsc::channel::<Packed>(PIPELINE_DEPTH);
    let packer_free = free_tx.clone();
    let packer = tokio::task::spawn_blocking(move || pack_loop(read_rx, packed_tx, packer_free));
    let read = async move {
        loop {
            let Some(mut buf) = free_rx.recv().await else {
                return Ok(());
            };
            let n = read_local(r, &mut buf[1..], stream).await?;
            if n == 0 {
                return Ok(()); // dropping `read_tx` lets the packer finish
            }
            c.first_to_peer.get_or_init(Instant::now);
            if read_tx.send((buf, n)).await.is_err() {
                return Ok(()); // the packer is gone: the send side says why
            }
        }
    };
    let send = async {
        let mut total = 0u64;
        while let Some(frame) = packed_rx.recv().await {
            match frame {
                Packed::Lz4 { payload, read } => {
                    sink.send_data(stream, &payload).await?;
                    total += read as u64;
                    c.count_to_peer(read, payload.len());
                }
                Packed::Raw { buf, read } => {
                    sink.send_data(stream, &buf[..=read]).await?;
                    total += read as u64;
                    c.count_to_peer(read, read + 1);
                    let _ = free_tx.send(buf).await;
                }
            }
        }
        Ok::<u64, PeerError>(total)
    };
    let ((), total) = tokio::try_join!(read, send)?;
    packer.await.map_err(|e| PeerError::StreamCheck {
        stream,
        reason: format!("the tunnel's packer failed: {e}"),
    })?;
    Ok(total)
}

// The senders are taken by value on purpose: dropping them when the loop ends is what ends the
// send side and the pool.
#[allow(clippy::needless_pass_by_value)]
fn pack_loop(
    mut read: tokio::sync::mpsc::Receiver<(Vec<u8>, usize)>,
    packed: tokio::sync::mpsc::Sender<Packed>,
    free: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut scratch = vec![0u8; LZ4_HEADER + lz4_flex::block::get_maximum_output_size(CHUNK)];
    while let Some((mut buf, n)) = read.blocking_recv() {
        let frame = match pack(&mut buf, n, &mut scratch) {
            Some(k) => {
                let payload = scratch[..k].to_vec();
                // The pool is as deep as the pipeline, so there is room; a closed pool means
                // the tunnel is going away.
                let _ = free.try_send(buf);
                Packed::Lz4 { payload, read: n }
            }
            None => Packed::Raw { buf, read: n },
        };
        if packed.blocking_send(frame).is_err() {
            return;
        }
    }
}

async fn read_local(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
    stream: u32,
) -> Result<usize, PeerError> {
    r.read(buf)
        .await
        .map_err(|source| PeerError::StreamIo { stream, source })
}

async fn peer_to_local(
    mut rx: StreamReceiver,
    w: &mut (impl AsyncWrite + Unpin),
    c: &Counters,
    hold: Hold,
    codec: Codec,
) -> Result<(), PeerError> {
    let stream = rx.id();
    let mut total = 0u64;
    let mut scratch = Vec::new();
    loop {
        let item = rx.recv().await.map_err(|_| PeerError::StreamCheck {
            stream,
            reason: format!("connection ended after {total} tunnel bytes"),
        })?;
        match item {
            StreamItem::Data(payload) => {
                let bytes = match codec {
                    Codec::Plain => &payload[..],
                    Codec::Lz4 => decode(&payload, &mut scratch, stream)?,
                };
                w.write_all(bytes)
                    .await
                    .map_err(|source| PeerError::StreamIo { stream, source })?;
                total += bytes.len() as u64;
                c.from_peer.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            StreamItem::End(end) => {
                if end.bytes != total {
                    return Err(PeerError::StreamCheck {
                        stream,
                        reason: format!("peer sent {} tunnel bytes, received {total}", end.bytes),
                    });
                }
                if hold == Hold::OnErrorOrEarlyEnd && !c.local_done.load(Ordering::Relaxed) {
                    return Err(PeerError::StreamCheck {
                        stream,
                        reason: format!(
                            "the far side ended after {total} bytes while the local side was \
                             still talking"
                        ),
                    });
                }
                return w
                    .shutdown()
                    .await
                    .map_err(|source| PeerError::StreamIo { stream, source });
            }
        }
    }
}

/// The local end of a tunnel that lives in this process: it takes the peer's bytes and may
/// answer. Its calls run on a blocking thread of their own, so it may write files.
pub trait LocalSink: Send + 'static {
    /// Takes the peer's next bytes; what it appends to `answer` goes back to the peer.
    fn take(&mut self, bytes: &[u8], answer: &mut Vec<u8>) -> Result<(), PeerError>;
    /// The peer ended its direction after every byte arrived: the sink says whether that was
    /// a complete conversation. Only then does the tunnel end its own direction.
    fn end(self) -> Result<(), PeerError>
    where
        Self: Sized;
}

/// Bridges `rx.id()` to `local`, in this process. The tunnel ends when the peer has ended its
/// direction and `local` accepted the end; if `local` fails, the tunnel fails with its error
/// and never ends its direction cleanly, so the peer's client sees a broken conversation.
pub fn tunnel_into(
    sink: FrameSink,
    rx: StreamReceiver,
    codec: Codec,
    local: impl LocalSink,
) -> Tunnel {
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let stream = rx.id();
        // A few frames of slack: enough to keep the sink busy, little enough that a slow sink
        // pushes back on the peer instead of piling frames up in memory.
        let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(8);
        let (answers_tx, answers_rx) = tokio::sync::mpsc::unbounded_channel();
        let worker_counters = c.clone();
        let worker = tokio::task::spawn_blocking(move || {
            sink_loop(
                local,
                frames_rx,
                answers_tx,
                &worker_counters,
                codec,
                stream,
            )
        });
        let (forwarded, answered) = tokio::join!(
            forward_frames(rx, frames_tx),
            send_answers(answers_rx, &sink, stream, &c, codec)
        );
        let worked = worker.await.unwrap_or_else(|e| {
            Err(PeerError::StreamCheck {
                stream,
                reason: format!("the local end of the tunnel failed: {e}"),
            })
        });
        // The peer's failure explains the sink's (it was cut short), so it is reported first.
        forwarded?;
        worked?;
        answered?;
        Ok(c.stats())
    });
    Tunnel { counters, task }
}

/// Passes the peer's frames on to the sink's thread, up to and including the end.
async fn forward_frames(
    mut rx: StreamReceiver,
    frames: tokio::sync::mpsc::Sender<StreamItem>,
) -> Result<(), PeerError> {
    let stream = rx.id();
    loop {
        let item = rx.recv().await.map_err(|_| PeerError::StreamCheck {
            stream,
            reason: "connection ended in the middle of the tunnel".into(),
        })?;
        let end = matches!(item, StreamItem::End(_));
        if frames.send(item).await.is_err() || end {
            // The sink stopped (its error is the one to report) or has everything.
            return Ok(());
        }
    }
}

/// What the sink's thread says back.
enum Answer {
    Bytes(Vec<u8>),
    /// The conversation is complete: end our direction.
    Done,
}

// `answers` is taken by value on purpose: dropping it when the loop ends, however it ends, is
// what tells `send_answers` that the sink stopped.
#[allow(clippy::needless_pass_by_value)]
fn sink_loop(
    mut local: impl LocalSink,
    mut frames: tokio::sync::mpsc::Receiver<StreamItem>,
    answers: tokio::sync::mpsc::UnboundedSender<Answer>,
    c: &Counters,
    codec: Codec,
    stream: u32,
) -> Result<(), PeerError> {
    let mut scratch = Vec::new();
    let mut answer = Vec::new();
    let mut total = 0u64;
    while let Some(item) = frames.blocking_recv() {
        match item {
            StreamItem::Data(payload) => {
                let bytes = match codec {
                    Codec::Plain => &payload[..],
                    Codec::Lz4 => decode(&payload, &mut scratch, stream)?,
                };
                local.take(bytes, &mut answer)?;
                total += bytes.len() as u64;
                c.from_peer.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if !answer.is_empty() {
                    // The receiver only goes away when the tunnel is torn down.
                    let _ = answers.send(Answer::Bytes(std::mem::take(&mut answer)));
                }
            }
            StreamItem::End(end) => {
                if end.bytes != total {
                    return Err(PeerError::StreamCheck {
                        stream,
                        reason: format!("peer sent {} tunnel bytes, received {total}", end.bytes),
                    });
                }
                local.end()?;
                let _ = answers.send(Answer::Done);
                return Ok(());
            }
        }
    }
    Err(PeerError::StreamCheck {
        stream,
        reason: format!("the tunnel stopped after {total} bytes, before the peer ended it"),
    })
}

/// Sends the sink's answers to the peer; ends our direction once the sink is done.
async fn send_answers(
    mut answers: tokio::sync::mpsc::UnboundedReceiver<Answer>,
    sink: &FrameSink,
    stream: u32,
    c: &Counters,
    codec: Codec,
) -> Result<(), PeerError> {
    let mut enc = Encoder::new(codec);
    let mut total = 0u64;
    while let Some(answer) = answers.recv().await {
        match answer {
            Answer::Bytes(bytes) => {
                for chunk in bytes.chunks(CHUNK) {
                    let payload = enc.encode(chunk);
                    sink.send_data(stream, payload).await?;
                    c.to_peer_wire
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                }
                total += bytes.len() as u64;
                c.to_peer.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Answer::Done => {
                let end = StreamEnd {
                    bytes: total,
                    sha256: None,
                };
                return sink.send_end(stream, &end).await;
            }
        }
    }
    // The sink failed: its error is reported; the peer must not see a clean end.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ended_input_reads_what_was_sent_then_ends_while_the_client_keeps_its_end() {
        let (ours, mut client) = UnixStream::pair().unwrap();
        let (tx, end) = tokio::sync::oneshot::channel();
        let (ours, _w) = ours.into_split();
        let mut r = EndableRead {
            inner: ours,
            end: Some(end),
            ended: false,
        };
        client.write_all(b"last").await.unwrap();
        let mut first = [0u8; 4];
        r.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"last");
        // The client keeps its end open (as runc keeps CRIU's): no end of file yet.
        let mut byte = [0u8; 1];
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), r.read(&mut byte)).await;
        assert!(waited.is_err(), "ended before it was told to");
        client.write_all(b"more").await.unwrap();
        EndInput(tx).end();
        // What was sent before the end is still read, then end of file.
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"more");
        drop(client);
    }

    #[tokio::test]
    async fn a_dropped_end_handle_is_no_end_of_file() {
        let (ours, _client) = UnixStream::pair().unwrap();
        let (tx, end) = tokio::sync::oneshot::channel::<()>();
        let (ours, _w) = ours.into_split();
        let mut r = EndableRead {
            inner: ours,
            end: Some(end),
            ended: false,
        };
        drop(tx);
        let mut byte = [0u8; 1];
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), r.read(&mut byte)).await;
        assert!(waited.is_err(), "a dropped handle ended the input");
    }

    fn encode(bytes: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(Codec::Lz4);
        enc.space()[..bytes.len()].copy_from_slice(bytes);
        enc.payload(bytes.len()).to_vec()
    }

    #[test]
    fn payloads_decode_to_what_was_read() {
        let zeros = vec![0u8; 300_000];
        let packed = encode(&zeros);
        assert_eq!(packed[0], LZ4);
        assert!(packed.len() < 2_000, "{}", packed.len());
        let mut scratch = Vec::new();
        assert_eq!(decode(&packed, &mut scratch, 1).unwrap(), &zeros[..]);

        // Too short to shrink: sent as read, behind its tag.
        let packed = encode(b"ab");
        assert_eq!(packed, [RAW, b'a', b'b']);
        assert_eq!(decode(&packed, &mut scratch, 1).unwrap(), b"ab");
    }

    #[test]
    fn a_peers_bad_payload_is_refused() {
        let mut scratch = Vec::new();
        let mut bad = |p: &[u8]| decode(p, &mut scratch, 1).unwrap_err().to_string();
        assert!(bad(&[]).contains("without a valid tag"));
        assert!(bad(&[7, 1, 2]).contains("without a valid tag"));
        assert!(bad(&[LZ4, 0, 0]).contains("without a valid tag"));
        // A length beyond one frame is never allocated.
        let huge = [&[LZ4][..], &u32::MAX.to_be_bytes()[..], &[0u8; 4]].concat();
        assert!(
            bad(&huge).contains("claims 4294967295 bytes"),
            "{}",
            bad(&huge)
        );
        // A block that does not yield the length it claims.
        let mut packed = encode(&[0u8; 100_000]);
        packed[1..LZ4_HEADER].copy_from_slice(&200_000u32.to_be_bytes());
        assert!(bad(&packed).contains("not 200000"), "{}", bad(&packed));
        let garbage = [&[LZ4][..], &100u32.to_be_bytes()[..], &[0xff; 8]].concat();
        assert!(
            bad(&garbage).contains("bad compressed frame"),
            "{}",
            bad(&garbage)
        );
    }
}
