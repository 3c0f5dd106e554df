//! Which message may come when.
//!
//! Both ends walk the same conversation, so both machines share one [`State`] enum and one
//! transition function; they differ only in which side "sending" and "receiving" mean. This makes
//! it impossible for the two ends to disagree about the protocol. The source drives a
//! [`SenderMachine`], the destination a [`ReceiverMachine`]; each checks its own outgoing
//! messages (`on_send`) and the peer's incoming ones (`on_message`).
//!
//! Rules beyond the order of messages: the destination may only ask for blobs the source offered;
//! the source sends each needed blob exactly once, before any filesystem stream; each bulk stream
//! id is used once; each filesystem is sent at most once per pass; the CRIU images go before
//! `Restore`. `Abort` moves any non-final state to `Aborted`; final states accept nothing.
//! A verdict inquiry is its own short conversation: `Inquire` from the side that connected,
//! one `Verdict` back. So is an address question: `IpQuery`, one `IpStatus` back.

use std::collections::BTreeSet;

use crate::{FsTarget, Message, MigrationMode, ProtoError, FIRST_BULK_STREAM};

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Nothing said yet; the source opens with `Hello`.
    Start,
    /// `Hello` sent; the destination answers `Welcome` or `Refuse`.
    Negotiating,
    /// Version agreed; the source sends `CpuInfo`.
    Welcomed,
    /// cpuinfo sent; the destination answers `CpuOk` or `Refuse`.
    CheckingCpu,
    /// CPU accepted; the source sends `Prepare`.
    CpuAccepted,
    /// `Prepare` sent; the destination answers `NeedBlobs` or `Refuse`.
    Preparing,
    /// The source sends the needed blobs.
    TransferringBlobs,
    /// Filesystem pass 1 while the container runs.
    PreCopy,
    /// `OpenPageSink` sent; the destination answers `PagesReady`.
    OpeningPageSink,
    /// The source is frozen and dumping; pages flow on the tunnel.
    Dumping,
    /// Dump done: the source sends CRIU images and filesystem pass 2, then `Restore`.
    Finishing,
    /// `Restore` sent; the destination answers `Restored` or `RestoreFailed`.
    Restoring,
    /// The copy runs on the destination, gated; the source commits or aborts.
    Restored,
    /// `Commit` sent; the destination answers `Committed`.
    Committing,
    /// Post-copy: committed, pages still pulled; the destination ends with `LazyComplete`.
    Draining,
    /// Final: the container lives on the destination.
    Done,
    /// Final: the destination refused the migration.
    Refused,
    /// Final: the restore failed; the source resumes.
    RestoreFailed,
    /// Final: one side aborted; the source resumes.
    Aborted,
    /// A verdict inquiry: `Inquire` sent, the peer answers `Verdict`.
    Inquiring,
    /// Final: the inquiry (or the address question) was answered.
    Answered,
    /// An address question: `IpQuery` sent, the peer answers `IpStatus`.
    AskingIp,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Done | State::Refused | State::RestoreFailed | State::Aborted | State::Answered
        )
    }
}

#[derive(Debug, Clone)]
struct Conversation {
    state: State,
    mode: Option<MigrationMode>,
    versions: (u16, u16),
    version: Option<u16>,
    offered: BTreeSet<String>,
    blobs_pending: BTreeSet<String>,
    streams_used: BTreeSet<u32>,
    fs_sent: BTreeSet<(u8, FsTarget)>,
    images_sent: bool,
}

fn invalid(message: &Message, reason: String) -> ProtoError {
    ProtoError::Invalid {
        message: message.name(),
        reason,
    }
}

impl Conversation {
    fn new() -> Self {
        Conversation {
            state: State::Start,
            mode: None,
            versions: (0, 0),
            version: None,
            offered: BTreeSet::new(),
            blobs_pending: BTreeSet::new(),
            streams_used: BTreeSet::new(),
            fs_sent: BTreeSet::new(),
            images_sent: false,
        }
    }

    fn check_stream(&self, msg: &Message) -> Result<(), ProtoError> {
        match msg.announced_stream() {
            Some(s) if s < FIRST_BULK_STREAM => Err(invalid(
                msg,
                format!("stream {s} is reserved (bulk streams start at {FIRST_BULK_STREAM})"),
            )),
            Some(s) if self.streams_used.contains(&s) => {
                Err(invalid(msg, format!("stream {s} was already used")))
            }
            _ => Ok(()),
        }
    }

    /// Validates `msg` from `from` and applies it. On error nothing changes.
    fn apply(&mut self, from: Side, msg: &Message) -> Result<(), ProtoError> {
        use Side::{Destination as D, Source as S};
        use State::*;
        let unexpected = || ProtoError::Unexpected {
            state: self.state,
            side: from,
            message: msg.name(),
        };
        if self.state.is_final() {
            return Err(unexpected());
        }
        self.check_stream(msg)?;
        let next = match (from, self.state, msg) {
            (_, _, Message::Abort { .. }) => Aborted,
            (_, Start | Negotiating | Inquiring | AskingIp, Message::Progress { .. }) => {
                return Err(unexpected())
            }
            (_, state, Message::Progress { .. }) => state,

            (S, Start, Message::Hello(h)) => {
                if h.versions.0 > h.versions.1 {
                    return Err(invalid(
                        msg,
                        format!("empty version range {:?}", h.versions),
                    ));
                }
                self.mode = Some(h.mode);
                self.versions = h.versions;
                Negotiating
            }
            (D, Negotiating, Message::Welcome(w)) => {
                if w.version < self.versions.0 || w.version > self.versions.1 {
                    return Err(invalid(
                        msg,
                        format!(
                            "version {} is outside the offered range {:?}",
                            w.version, self.versions
                        ),
                    ));
                }
                self.version = Some(w.version);
                Welcomed
            }
            (D, Negotiating | CheckingCpu | Preparing, Message::Refuse { .. }) => Refused,
            // The side that opens a connection is `Source` in these terms, whichever host it is.
            (S, Start, Message::Inquire { .. }) => Inquiring,
            (D, Inquiring, Message::Verdict { .. }) => Answered,
            (S, Start, Message::IpQuery { .. }) => AskingIp,
            (D, AskingIp, Message::IpStatus { .. }) => Answered,
            (S, Welcomed, Message::CpuInfo { .. }) => CheckingCpu,
            (D, CheckingCpu, Message::CpuOk {}) => CpuAccepted,
            (S, CpuAccepted, Message::Prepare { image, .. }) => {
                self.offered = image.blobs.iter().map(|b| b.digest.clone()).collect();
                Preparing
            }
            (D, Preparing, Message::NeedBlobs { digests, .. }) => {
                let mut pending = BTreeSet::new();
                for d in digests {
                    if !self.offered.contains(d) {
                        return Err(invalid(msg, format!("blob {d} was not offered")));
                    }
                    if !pending.insert(d.clone()) {
                        return Err(invalid(msg, format!("blob {d} asked for twice")));
                    }
                }
                self.blobs_pending = pending;
                TransferringBlobs
            }
            (S, TransferringBlobs, Message::BlobStart { digest, .. }) => {
                if !self.blobs_pending.remove(digest) {
                    return Err(invalid(
                        msg,
                        format!("blob {digest} was not asked for, or was already sent"),
                    ));
                }
                TransferringBlobs
            }
            (
                S,
                TransferringBlobs | PreCopy,
                Message::FsStart { pass: 1, .. } | Message::OpenPageSink { .. },
            ) => {
                if !self.blobs_pending.is_empty() {
                    return Err(invalid(
                        msg,
                        format!("blobs still to send: {:?}", self.blobs_pending),
                    ));
                }
                match msg {
                    Message::FsStart { what, .. } => {
                        self.mark_fs(msg, 1, what)?;
                        PreCopy
                    }
                    _ => OpeningPageSink,
                }
            }
            (D, OpeningPageSink, Message::PagesReady { .. }) => Dumping,
            (S, Dumping, Message::DumpDone { .. }) => Finishing,
            (S, Finishing, Message::ImagesStart { .. }) if !self.images_sent => {
                self.images_sent = true;
                Finishing
            }
            (S, Finishing, Message::FsStart { pass: 2, what, .. }) => {
                self.mark_fs(msg, 2, what)?;
                Finishing
            }
            (S, Finishing, Message::Restore {}) => {
                if !self.images_sent {
                    return Err(invalid(msg, "the CRIU images were not sent".into()));
                }
                Restoring
            }
            (D, Restoring, Message::Restored { .. }) => Restored,
            (D, Restoring, Message::RestoreFailed { .. }) => RestoreFailed,
            (S, Restored, Message::Commit {}) => Committing,
            (D, Committing, Message::Committed {}) => match self.mode {
                Some(MigrationMode::PostCopy) => Draining,
                _ => Done,
            },
            (D, Draining, Message::LazyComplete { .. }) => Done,
            _ => return Err(unexpected()),
        };
        if let Some(s) = msg.announced_stream() {
            self.streams_used.insert(s);
        }
        self.state = next;
        Ok(())
    }

    fn mark_fs(&mut self, msg: &Message, pass: u8, what: &FsTarget) -> Result<(), ProtoError> {
        if !self.fs_sent.insert((pass, what.clone())) {
            return Err(invalid(
                msg,
                format!("{what:?} already sent in pass {pass}"),
            ));
        }
        Ok(())
    }
}

/// The source's view of a migration.
#[derive(Debug, Clone)]
pub struct SenderMachine(Conversation);

/// The destination's view of a migration.
#[derive(Debug, Clone)]
pub struct ReceiverMachine(Conversation);

macro_rules! machine_api {
    ($ty:ident, $me:expr, $peer:expr) => {
        impl $ty {
            pub fn new() -> Self {
                $ty(Conversation::new())
            }

            pub fn state(&self) -> State {
                self.0.state
            }

            /// The migration mode, once `Hello` has passed.
            pub fn mode(&self) -> Option<MigrationMode> {
                self.0.mode
            }

            /// The agreed protocol version, once `Welcome` has passed.
            pub fn version(&self) -> Option<u16> {
                self.0.version
            }

            /// Checks a message this side is about to send, and advances.
            pub fn on_send(&mut self, msg: &Message) -> Result<(), ProtoError> {
                self.0.apply($me, msg)
            }

            /// Checks a message the peer sent, and advances.
            pub fn on_message(&mut self, msg: &Message) -> Result<(), ProtoError> {
                self.0.apply($peer, msg)
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

machine_api!(SenderMachine, Side::Source, Side::Destination);
machine_api!(ReceiverMachine, Side::Destination, Side::Source);

#[cfg(test)]
mod tests;
