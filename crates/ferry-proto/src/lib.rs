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
//!
//! Start here: the two diagrams below, then `message.rs` (every message, in order) and
//! `machine.rs` (the one transition function both ends share).
//!
//! # A migration, message by message
//!
//! The source opens the connection and drives; the destination answers. Both modes share every
//! step but where the memory goes: in stop-and-copy it crosses while the container is frozen, in
//! post-copy after the container already runs on the destination.
//!
//! ```mermaid
//! sequenceDiagram
//!     autonumber
//!     participant S as source ferryd (SenderMachine)
//!     participant D as destination ferryd (ReceiverMachine)
//!     S->>D: Hello {versions, mode, features}
//!     D-->>S: Welcome {version} (or Refuse)
//!     S->>D: CpuInfo + stream (criu cpuinfo dump)
//!     D-->>S: CpuOk (or Refuse)
//!     S->>D: Prepare {migration_id, container, image}
//!     D-->>S: NeedBlobs {digests} (or Refuse)
//!     loop each blob the destination lacks
//!         S->>D: BlobStart + stream
//!     end
//!     loop each filesystem (upper dir, volumes, log), container still running
//!         S->>D: FsStart {pass: 1} + stream
//!     end
//!     S->>D: OpenPageSink {memory_bytes, lz4}
//!     D-->>S: PagesReady {lz4}
//!     Note over S: freeze, criu dump
//!     alt stop-and-copy
//!         S->>D: every page, on the tunnel stream, into the destination's page server
//!     else post-copy
//!         Note over S: pages stay behind, served by CRIU's lazy page server
//!     end
//!     S->>D: DumpDone {stats}
//!     S->>D: ImagesStart + stream (the other CRIU images, as a tar)
//!     S->>D: FsStart {pass: 2} + stream, per filesystem (the final delta)
//!     S->>D: Restore
//!     D-->>S: Restored {stats} (or RestoreFailed: the source resumes)
//!     Note over D: the copy runs, its traffic gated; the verdict is written durably
//!     S->>D: Commit
//!     D-->>S: Committed (the gate opens; the container lives here)
//!     opt post-copy
//!         D->>S: page requests on the tunnel (faulted pages first, then the rest pushed)
//!         D-->>S: LazyComplete {bytes, pages, faults}
//!     end
//! ```
//!
//! Either side may send `Abort` in any non-final state (the source then resumes), and `Progress`
//! after the handshake as a heartbeat. Two short conversations of their own open a fresh
//! connection instead of `Hello`: `Inquire` → `Verdict` (a side that lost its peer mid-commit
//! asks what was decided) and `IpQuery` → `IpStatus` (is this address taken over there?).
//!
//! # The receiver's states
//!
//! [`ReceiverMachine`] (and [`SenderMachine`], which walks the same [`State`]s) after each
//! message. Any non-final state goes to `Aborted` on `Abort`; final states accept nothing.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Negotiating: Hello
//!     Negotiating --> Welcomed: Welcome
//!     Welcomed --> CheckingCpu: CpuInfo
//!     CheckingCpu --> CpuAccepted: CpuOk
//!     CpuAccepted --> Preparing: Prepare
//!     Preparing --> TransferringBlobs: NeedBlobs
//!     TransferringBlobs --> TransferringBlobs: BlobStart
//!     TransferringBlobs --> PreCopy: FsStart pass 1
//!     PreCopy --> PreCopy: FsStart pass 1
//!     TransferringBlobs --> OpeningPageSink: OpenPageSink
//!     PreCopy --> OpeningPageSink: OpenPageSink
//!     OpeningPageSink --> Dumping: PagesReady
//!     Dumping --> Finishing: DumpDone
//!     Finishing --> Finishing: ImagesStart, FsStart pass 2
//!     Finishing --> Restoring: Restore
//!     Restoring --> Restored: Restored
//!     Restoring --> RestoreFailed: RestoreFailed
//!     Restored --> Committing: Commit
//!     Committing --> Done: Committed (stop-and-copy)
//!     Committing --> Draining: Committed (post-copy)
//!     Draining --> Done: LazyComplete
//!     Negotiating --> Refused: Refuse
//!     CheckingCpu --> Refused: Refuse
//!     Preparing --> Refused: Refuse
//!     [*] --> Inquiring: Inquire
//!     Inquiring --> Answered: Verdict
//!     [*] --> AskingIp: IpQuery
//!     AskingIp --> Answered: IpStatus
//!     Done --> [*]
//!     Refused --> [*]
//!     RestoreFailed --> [*]
//!     Answered --> [*]
//!     Aborted --> [*]
//! ```
//!
//! # Versioning rule
//!
//! Two numbers version the wire: [`FRAME_FORMAT`] (the 20-byte frame header, checked on every
//! frame) and the message protocol, [`PROTOCOL_VERSION`] (the JSON [`Message`]s and the order
//! [`State`] allows), negotiated in `Hello`/`Welcome` ([`negotiate`]: the highest version both
//! ranges hold). [`MIN_SUPPORTED`] is the oldest a build still speaks.
//!
//! **Additive, within a version** (old and new peers keep working together; say "added within
//! vN" in the field's doc):
//! - a new *optional* field on an existing message, with `#[serde(default)]` (and
//!   `skip_serializing_if` where its default must not reach an older peer), whose absence means
//!   what an older peer meant (example: `OpenPageSink::memory_bytes`, `NeedBlobs::from_registry`);
//! - a new capability the source lists in `Hello::features` (a `FEATURE_*` constant) and uses
//!   only when the destination takes it up, or one offered on a message and accepted in the
//!   answer (`OpenPageSink::lz4`, then `PagesReady::lz4`);
//! - a new message that opens its own fresh connection and that an older peer may simply not
//!   answer, the asking side saying it knows nothing then (example: `IpQuery`).
//!
//! **Needs a version bump** (bump [`PROTOCOL_VERSION`]; raise [`MIN_SUPPORTED`] only when an old
//! peer would be unsafe, as v1 was without the fenced commit):
//! - a new required field, a removed or renamed field or message, a changed type or meaning;
//! - a new message inside the migration conversation, or any change to the order [`State`]
//!   allows (an older peer's machine would reject it as unexpected);
//! - a new enum variant an older peer would receive (serde rejects unknown variants).
//!
//! A change to the frame header (layout, magic, CRC) bumps [`FRAME_FORMAT`] instead: frames are
//! read before any negotiation, so there is no mixing across it.
//!
//! The same rule governs ferry's persisted formats that carry their own version: the checkpoint
//! archive's `manifest.json` (`ferry_core::checkpoint::archive::VERSION`, "MAJOR.MINOR": a new
//! optional field is a minor bump, anything an older reader would misread is a major one).
//! [`Message`] and that manifest both carry a notice pointing here.

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
