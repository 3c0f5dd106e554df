//! A local TCP connection carried over a channel stream, both directions.
//!
//! This is how CRIU's page server (stop-and-copy) and lazy-pages server (post-copy) talk across
//! hosts without their plain-TCP traffic ever leaving the host: each end only ever connects to
//! 127.0.0.1, and the bytes cross the network inside the authenticated TLS channel.
//!
//! - The side whose CRIU *connects* (source in stop-and-copy: `runc checkpoint --page-server
//!   127.0.0.1:PORT`; destination in post-copy: `criu lazy-pages --page-server`) calls
//!   [`tunnel_listen`] and gives CRIU the port.
//! - The side whose CRIU *listens* (`criu page-server` on the destination; the lazy page server on
//!   the source) calls [`tunnel_connect`] once that server is up.
//!
//! Both directions use the same stream id ([`ferry_proto::TUNNEL_STREAM`]); a `DataEnd` on it
//! half-closes that direction, which becomes a TCP write shutdown at the far end. The tunnel is done
//! when both directions have ended. Bytes are counted each way, live, for progress and stats.
//! CRIU's client speaks first, so the connecting end never has to hold data before the local
//! client arrives.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::channel::{FrameSink, StreamItem, StreamReceiver};
use super::PeerError;

/// Per-frame read size: a read returns what the socket holds, so a large buffer adds no
/// latency to the page server's small requests and replies, while a bulk page stream goes in
/// few large frames (fewer syscalls, locks and wake-ups per byte; measured in bench/).
const CHUNK: usize = ferry_proto::MAX_FRAME;

/// Bytes carried, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Local connection → peer.
    pub to_peer: u64,
    /// Peer → local connection.
    pub from_peer: u64,
}

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
        TunnelStats {
            to_peer: self.counters.to_peer.load(Ordering::Relaxed),
            from_peer: self.counters.from_peer.load(Ordering::Relaxed),
        }
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

/// Binds the local end for a client such as `runc checkpoint --page-server 127.0.0.1:PORT`.
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
    pub fn bridge(self, sink: FrameSink, rx: StreamReceiver) -> Tunnel {
        self.bridge_with(sink, rx, Hold::Never)
    }

    /// [`TunnelListener::bridge`], choosing what a failure of the far side does.
    pub fn bridge_with(self, sink: FrameSink, rx: StreamReceiver, hold: Hold) -> Tunnel {
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
            run(tcp, sink, rx, c, hold).await
        });
        Tunnel { counters, task }
    }
}

/// Connects to the local server at `target` and bridges it to `rx.id()`.
pub async fn tunnel_connect(
    target: SocketAddr,
    sink: FrameSink,
    rx: StreamReceiver,
) -> Result<Tunnel, PeerError> {
    tunnel_connect_with(target, sink, rx, Hold::Never).await
}

/// [`tunnel_connect`], choosing what a failure of the far side does.
pub async fn tunnel_connect_with(
    target: SocketAddr,
    sink: FrameSink,
    rx: StreamReceiver,
    hold: Hold,
) -> Result<Tunnel, PeerError> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|source| PeerError::Io {
            path: format!("tunnel connect {target}").into(),
            source,
        })?;
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(run(tcp, sink, rx, counters.clone(), hold));
    Ok(Tunnel { counters, task })
}

async fn run(
    tcp: TcpStream,
    sink: FrameSink,
    rx: StreamReceiver,
    c: Arc<Counters>,
    hold: Hold,
) -> Result<TunnelStats, PeerError> {
    tcp.set_nodelay(true).map_err(PeerError::Net)?;
    let stream = rx.id();
    let (mut r, mut w) = tcp.into_split();
    let carried = tokio::try_join!(
        local_to_peer(&mut r, &sink, stream, &c),
        peer_to_local(rx, &mut w, &c, hold)
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
    Ok(TunnelStats {
        to_peer: c.to_peer.load(Ordering::Relaxed),
        from_peer: c.from_peer.load(Ordering::Relaxed),
    })
}

async fn local_to_peer(
    r: &mut OwnedReadHalf,
    sink: &FrameSink,
    stream: u32,
    c: &Counters,
) -> Result<(), PeerError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|source| PeerError::StreamIo { stream, source })?;
        if n == 0 {
            // The local side closed its write direction: pass the half-close on.
            c.local_done.store(true, Ordering::Relaxed);
            return sink
                .send_end(
                    stream,
                    &StreamEnd {
                        bytes: total,
                        sha256: None,
                    },
                )
                .await;
        }
        c.first_to_peer.get_or_init(Instant::now);
        sink.send_data(stream, &buf[..n]).await?;
        total += n as u64;
        c.to_peer.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn peer_to_local(
    mut rx: StreamReceiver,
    w: &mut OwnedWriteHalf,
    c: &Counters,
    hold: Hold,
) -> Result<(), PeerError> {
    let stream = rx.id();
    let mut total = 0u64;
    loop {
        let item = rx.recv().await.map_err(|_| PeerError::StreamCheck {
            stream,
            reason: format!("connection ended after {total} tunnel bytes"),
        })?;
        match item {
            StreamItem::Data(bytes) => {
                w.write_all(&bytes)
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
