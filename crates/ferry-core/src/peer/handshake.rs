//! The first exchange on a peer connection: `Hello` → `Welcome` | `Refuse`, with version
//! negotiation, driving the caller's state machine so it stays in step.

use ferry_proto::{
    negotiate, Hello, Message, ReceiverMachine, SenderMachine, VersionRange, Welcome,
};

use super::channel::{ControlReceiver, FrameSink};
use super::PeerError;

/// What the destination says about itself in `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVersions {
    pub host: String,
    pub criu_version: String,
    pub runc_version: String,
}

/// Source side: sends `hello`, returns the destination's `Welcome`.
/// `peer_name` is the authenticated name of the connection; `Welcome.host` must match it.
pub async fn handshake_source(
    sink: &FrameSink,
    control: &mut ControlReceiver,
    machine: &mut SenderMachine,
    peer_name: &str,
    hello: Hello,
) -> Result<Welcome, PeerError> {
    let hello = Message::Hello(hello);
    machine.on_send(&hello)?;
    sink.send_message(&hello).await?;
    let reply = control.recv().await?;
    if let Err(e) = machine.on_message(&reply) {
        abort(sink, &e.to_string()).await;
        return Err(e.into());
    }
    match reply {
        Message::Welcome(w) if w.host == peer_name => Ok(w),
        Message::Welcome(w) => {
            let reason = format!(
                "Welcome names host {:?} but the certificate says {peer_name:?}",
                w.host
            );
            let _ = machine.on_send(&abort_msg(&reason));
            abort(sink, &reason).await;
            Err(PeerError::Refused(reason))
        }
        Message::Refuse { reason } => Err(PeerError::Refused(reason)),
        Message::Abort { reason } => Err(PeerError::Aborted(reason)),
        other => Err(PeerError::UnexpectedMessage {
            expected: "Welcome",
            got: other.name(),
        }),
    }
}

/// Destination side: waits for `Hello`, negotiates a version within `supported`, checks the
/// sender's claimed name against `peer_name` (from its certificate), then asks `check` (tool
/// versions, mode, features). Answers `Welcome` and returns the `Hello`, or answers `Refuse`
/// and returns [`PeerError::WeRefused`].
pub async fn handshake_destination(
    sink: &FrameSink,
    control: &mut ControlReceiver,
    machine: &mut ReceiverMachine,
    peer_name: &str,
    local: &LocalVersions,
    supported: VersionRange,
    check: impl FnOnce(&Hello) -> Result<(), String>,
) -> Result<Hello, PeerError> {
    let msg = control.recv().await?;
    answer_hello(sink, msg, machine, peer_name, local, supported, check).await
}

/// [`handshake_destination`] for a first message already read (the acceptor reads it to tell
/// a migration's `Hello` from a verdict inquiry).
pub async fn answer_hello(
    sink: &FrameSink,
    msg: Message,
    machine: &mut ReceiverMachine,
    peer_name: &str,
    local: &LocalVersions,
    supported: VersionRange,
    check: impl FnOnce(&Hello) -> Result<(), String>,
) -> Result<Hello, PeerError> {
    if let Err(e) = machine.on_message(&msg) {
        abort(sink, &e.to_string()).await;
        return Err(e.into());
    }
    let hello = match msg {
        Message::Hello(h) => h,
        Message::Abort { reason } => return Err(PeerError::Aborted(reason)),
        other => {
            return Err(PeerError::UnexpectedMessage {
                expected: "Hello",
                got: other.name(),
            })
        }
    };
    let verdict = match negotiate(supported, hello.versions) {
        _ if hello.host != peer_name => Err(format!(
            "Hello names host {:?} but the certificate says {peer_name:?}",
            hello.host
        )),
        None => Err(format!(
            "no common protocol version: {} speaks {}..={}, {} speaks {}..={}",
            hello.host, hello.versions.0, hello.versions.1, local.host, supported.0, supported.1
        )),
        Some(version) => check(&hello).map(|()| version),
    };
    let reply = match &verdict {
        Ok(version) => Message::Welcome(Welcome {
            version: *version,
            host: local.host.clone(),
            criu_version: local.criu_version.clone(),
            runc_version: local.runc_version.clone(),
        }),
        Err(reason) => Message::Refuse {
            reason: reason.clone(),
        },
    };
    machine.on_send(&reply)?;
    sink.send_message(&reply).await?;
    match verdict {
        Ok(_) => Ok(hello),
        Err(reason) => Err(PeerError::WeRefused(reason)),
    }
}

fn abort_msg(reason: &str) -> Message {
    Message::Abort {
        reason: reason.to_string(),
    }
}

/// Best effort: the connection may already be gone.
async fn abort(sink: &FrameSink, reason: &str) {
    let _ = sink.send_message(&abort_msg(reason)).await;
}
