//! The address question: "does anything on your side use this IPv4 address?"
//!
//! `ferry run --ip` asks it of every known peer, so a user learns of a collision when choosing
//! the address instead of when a later migration onto that host fails. It is a conversation of
//! its own on a fresh connection (`IpQuery`, one `IpStatus`, close), like a verdict inquiry.
//! A peer that is down or too slow must not hold up `run`: each question has [`ASK_TIMEOUT`],
//! and every peer is asked at once.

use std::net::Ipv4Addr;
use std::time::Duration;

use ferry_proto::{FrameKind, Message, ReceiverMachine, SenderMachine};
use serde::{Deserialize, Serialize};

use super::channel::PeerConn;
use super::registry::PeerEntry;
use super::tls::HostIdentity;
use super::PeerError;
use crate::container::Engine;

/// How long one peer may take to answer (connect, TLS and the answer).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What one peer said about an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "answer")]
pub enum IpAnswer {
    Free,
    InUse {
        /// What uses it there ("container web", "the bridge ferry0 of host host-b").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// No answer: the peer is down, too slow, or does not know the question.
    Unknown {
        why: String,
    },
}

/// One peer's answer, for `run`'s warnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIpReport {
    pub peer: String,
    pub ip: String,
    #[serde(flatten)]
    pub answer: IpAnswer,
}

impl PeerIpReport {
    /// The warning `run` shows, or `None` when the peer said the address is free.
    pub fn warning(&self) -> Option<String> {
        match &self.answer {
            IpAnswer::Free => None,
            IpAnswer::InUse { by } => Some(format!(
                "peer {} reports {} as in use{}: a migration of this container onto {} would be refused",
                self.peer,
                self.ip,
                by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
                self.peer
            )),
            IpAnswer::Unknown { why } => Some(format!(
                "could not ask peer {} whether {} is in use ({why}); the address was not checked there",
                self.peer, self.ip
            )),
        }
    }
}

/// Asks every peer in `peers` about `ip` at once; each answers within `timeout` or counts as
/// [`IpAnswer::Unknown`]. In the order of `peers`.
pub async fn ask_all(
    identity: &HostIdentity,
    peers: &[PeerEntry],
    ip: Ipv4Addr,
    timeout: Duration,
) -> Vec<PeerIpReport> {
    let asks = peers.iter().map(|p| async move {
        let answer = match tokio::time::timeout(timeout, ask(identity, p, ip)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => IpAnswer::Unknown { why: e.to_string() },
            Err(_) => IpAnswer::Unknown {
                why: format!("no answer within {} s", timeout.as_secs_f32()),
            },
        };
        PeerIpReport {
            peer: p.name.clone(),
            ip: ip.to_string(),
            answer,
        }
    });
    futures::future::join_all(asks).await
}

/// Asks one peer about `ip` (no timeout of its own beyond the connect's: see [`ask_all`]).
pub async fn ask(
    identity: &HostIdentity,
    peer: &PeerEntry,
    ip: Ipv4Addr,
) -> Result<IpAnswer, PeerError> {
    let conn = PeerConn::connect(identity, &peer.name, peer.addr).await?;
    // Read here, not through a demux task: when the caller gives up (its timeout), dropping
    // this future closes the connection; a task would keep a silent peer's socket open.
    let (sink, mut source) = conn.split();
    let mut machine = SenderMachine::new();
    let question = Message::IpQuery { ip: ip.to_string() };
    machine.on_send(&question)?;
    sink.send_message(&question).await?;
    let reply = loop {
        match source.recv().await {
            Ok(Some(f)) if matches!(f.kind, FrameKind::Control | FrameKind::Abort) => {
                break f.to_message().map_err(PeerError::from)
            }
            // No stream belongs to this conversation: ignore stray data.
            Ok(Some(_)) => continue,
            Ok(None) => break Err(PeerError::Closed),
            Err(e) => break Err(e),
        }
    };
    let _ = sink.close().await;
    let reply = match reply {
        Ok(m) => m,
        // A peer from before the question closes the connection on it.
        Err(PeerError::Closed) => {
            return Ok(IpAnswer::Unknown {
                why: "it closed the connection without an answer (an older ferryd?)".into(),
            })
        }
        Err(e) => return Err(e),
    };
    if let Message::Abort { reason } = &reply {
        return Ok(IpAnswer::Unknown {
            why: format!("it did not take the question: {reason}"),
        });
    }
    machine.on_message(&reply)?;
    match reply {
        Message::IpStatus {
            ip: answered,
            in_use,
            user,
        } if answered == ip.to_string() => Ok(if in_use {
            IpAnswer::InUse { by: user }
        } else {
            IpAnswer::Free
        }),
        other => Err(PeerError::UnexpectedMessage {
            expected: "IpStatus about the address asked",
            got: other.name(),
        }),
    }
}

/// If `conn`'s first message is an address question, answers it with `user` (what on this
/// host uses an address: [`ip_user`] in ferryd) and returns `None`: the connection is done.
/// Otherwise returns the connection untouched, its first frame still to be read, for the
/// migration code. A peer silent for `wait` is dropped.
pub async fn answer_if_asked(
    mut conn: PeerConn,
    wait: Duration,
    user: impl FnOnce(Ipv4Addr) -> Option<String>,
) -> Option<PeerConn> {
    let first = match tokio::time::timeout(wait, conn.first_message()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(peer = %conn.peer_name(), error = %e, "a peer's first frame is bad");
            return None;
        }
        Err(_) => {
            tracing::warn!(peer = %conn.peer_name(), "a peer said nothing for {wait:?}; closing");
            return None;
        }
    };
    let Some(question @ Message::IpQuery { .. }) = first else {
        return Some(conn);
    };
    conn.consume_first();
    let peer = conn.peer_name().to_owned();
    let mut machine = ReceiverMachine::new();
    if let Err(e) = machine.on_message(&question) {
        tracing::warn!(%peer, error = %e, "a bad address question");
        return None;
    }
    let Message::IpQuery { ip } = question else {
        unreachable!("matched above")
    };
    let user = match ip.parse::<Ipv4Addr>() {
        Ok(addr) => user(addr),
        Err(_) => {
            tracing::warn!(%peer, ip = %ip.escape_debug(), "an address question about no IPv4 address");
            return None;
        }
    };
    tracing::info!(%peer, %ip, in_use = user.is_some(), "answered an address question");
    let answer = Message::IpStatus {
        ip,
        in_use: user.is_some(),
        user,
    };
    let (sink, _source) = conn.split();
    if machine.on_send(&answer).is_ok() {
        if let Err(e) = sink.send_message(&answer).await {
            tracing::warn!(%peer, error = %e, "answering an address question");
        }
    }
    let _ = sink.close().await;
    None
}

/// What on this host uses `ip`: a container (or one arriving), the bridge, or any address of
/// the host's own interfaces.
pub fn ip_user(engine: &Engine, ip: Ipv4Addr) -> Option<String> {
    if let Some(u) = engine.ip_user(ip) {
        return Some(u);
    }
    let host = &engine.config().host_name;
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let mine = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .is_some_and(|sin| sin.ip() == ip);
        if mine {
            return Some(format!("host {host} itself ({})", a.interface_name));
        }
    }
    None
}
