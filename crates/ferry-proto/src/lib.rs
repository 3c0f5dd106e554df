//! ferry's peer protocol, without I/O: the frame codec, the messages, version negotiation and
//! the two state machines (source and destination) that say which message may come when.
//!
//! One TLS connection carries one migration. Everything on it is a [`Frame`]: a 20-byte header
//! (magic, format version, kind, stream id, payload length, CRC32 of the payload) and a payload.
//! - `Control` frames (stream 0) carry a JSON [`Message`].
//! - `Abort` frames (stream 0) carry a JSON [`Message::Abort`]; a separate kind lets a reader spot an
//!   abort without parsing JSON.
//! - `Data` frames carry raw bytes of a bulk stream (layer, filesystem tar, CRIU images, the
//!   page-server tunnel), identified by a stream id that the announcing control message names.
//! - `DataEnd` closes one direction of a stream; its payload ([`StreamEnd`]) lets the receiver
//!   check it got every byte.

mod error;
mod frame;
mod machine;
mod message;
mod version;

pub use error::ProtoError;
pub use frame::{
    encode, Decoder, Frame, FrameKind, Header, StreamEnd, CONTROL_STREAM, FIRST_BULK_STREAM,
    FRAME_FORMAT, HEADER_LEN, MAGIC, MAX_FRAME, TUNNEL_STREAM,
};
pub use machine::{ReceiverMachine, SenderMachine, Side, State};
pub use message::{
    BlobRef, DumpStats, FsTarget, Hello, ImageOffer, Message, MigrationMode, RestoreStats,
    StreamCompression, Verdict, Welcome, FEATURE_LAZY_PAGES, FEATURE_PAGE_TUNNEL,
    FEATURE_TCP_ESTABLISHED, FEATURE_ZSTD,
};
pub use version::{negotiate, VersionRange, MIN_SUPPORTED, PROTOCOL_VERSION};
