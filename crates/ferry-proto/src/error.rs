use crate::machine::{Side, State};

/// Everything that can be wrong with bytes or messages coming off the peer connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad frame magic {found:#010x} (expected \"FRY1\"): not a ferry peer, or the stream lost sync")]
    BadMagic { found: u32 },
    #[error("unsupported frame format version {found} (this build speaks {supported})")]
    BadFormatVersion { found: u16, supported: u16 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("frame payload of {length} bytes exceeds the {max}-byte limit")]
    TooLarge { length: u32, max: usize },
    #[error("payload CRC mismatch on stream {stream}: header says {expected:#010x}, payload has {actual:#010x}")]
    BadCrc {
        stream: u32,
        expected: u32,
        actual: u32,
    },
    #[error("{kind:?} frame on stream {stream}: control and abort frames use stream 0, data frames any other")]
    BadStream { kind: crate::FrameKind, stream: u32 },
    #[error("truncated frame: {needed} more bytes needed")]
    Truncated { needed: usize },
    #[error("decoder is unusable after an earlier error: {0}")]
    Poisoned(Box<ProtoError>),
    #[error("undecodable {what} payload: {reason}")]
    BadPayload { what: &'static str, reason: String },
    #[error("{side:?} may not send {message} in state {state:?}")]
    Unexpected {
        state: State,
        side: Side,
        message: &'static str,
    },
    #[error("invalid {message}: {reason}")]
    Invalid {
        message: &'static str,
        reason: String,
    },
}
