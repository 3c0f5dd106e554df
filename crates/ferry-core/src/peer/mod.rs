//! The authenticated channel between two ferryds.
//!
//! - [`tls`]: the cluster CA and each host's certificate; rustls configs that accept only peers
//!   signed by the cluster CA, and check the server is the peer we meant to reach.
//! - [`registry`]: known peers (`name → address`), persisted in the state dir.
//! - [`channel`]: a framed TLS connection ([`ferry_proto::Frame`]), split into a sending half
//!   shared by every task that writes, and a demultiplexer that routes incoming frames by stream id.
//! - [`handshake`]: Hello/Welcome with version negotiation.
//! - [`bulk`]: stream a reader onto a channel stream (optional zstd) and back, checked by sha256.
//! - [`tunnel`]: carry a local TCP connection (CRIU's page-server protocol) over a channel
//!   stream, or into an in-process [`tunnel::LocalSink`].
//! - [`query`]: the address question `run --ip` asks every known peer.

pub mod bulk;
pub mod channel;
mod der;
pub mod handshake;
pub mod query;
pub mod registry;
pub mod tls;
pub mod tunnel;

#[cfg(test)]
mod tests;

pub use bulk::{recv_stream, send_stream};
pub use channel::{
    ControlReceiver, Demux, FrameSink, FrameSource, PeerConn, PeerListener, StreamItem,
    StreamReceiver,
};
pub use handshake::{handshake_destination, handshake_source, LocalVersions};
pub use registry::{PeerEntry, Peers};
pub use tls::{ClusterCa, HostIdentity};
pub use tunnel::{tunnel_connect, tunnel_listen, Codec, Tunnel, TunnelListener, TunnelStats};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite key material")]
    Exists { path: PathBuf },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    TlsConfig(String),
    #[error("invalid peer name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("peer {0:?} is already registered")]
    PeerExists(String),
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    #[error("{path}: {source}")]
    Registry {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("connect to peer {peer} at {addr}: {source}")]
    Connect {
        peer: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {who}: {source}")]
    Handshake {
        who: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peer certificate from {0} names no host")]
    NoPeerName(String),
    #[error("peer connection: {0}")]
    Net(#[source] std::io::Error),
    #[error("peer connection closed")]
    Closed,
    #[error(transparent)]
    Proto(#[from] ferry_proto::ProtoError),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("refused the peer: {0}")]
    WeRefused(String),
    #[error("peer aborted: {0}")]
    Aborted(String),
    #[error("expected {expected}, peer sent {got}")]
    UnexpectedMessage {
        expected: &'static str,
        got: &'static str,
    },
    #[error("stream {0} is already being received")]
    StreamTaken(u32),
    #[error("stream {stream}: {reason}")]
    StreamCheck { stream: u32, reason: String },
    #[error("stream {stream}: local I/O: {source}")]
    StreamIo {
        stream: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("stream {stream}: zstd: {source}")]
    Zstd {
        stream: u32,
        #[source]
        source: std::io::Error,
    },
}

impl PeerError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PeerError {
        let path = path.into();
        move |source| PeerError::Io { path, source }
    }
}

/// Host and peer names: what a DNS label allows, lower case: `[a-z0-9-]`, 1..=63, no leading or
/// trailing dash. They go into certificates as DNS names and into file names.
pub fn validate_name(name: &str) -> Result<(), PeerError> {
    let bad = |reason| {
        Err(PeerError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only a-z, 0-9 and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("may not start or end with '-'");
    }
    Ok(())
}
