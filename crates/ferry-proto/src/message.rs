//! The messages of a migration. Unless noted, the source sends them and the destination answers.
//!
//! Order of a migration (see `machine` for the exact rules):
//! 1. `Hello` → `Welcome` | `Refuse`            version, tool versions, mode
//! 2. `CpuInfo` + stream → `CpuOk` | `Refuse`  CRIU cpuinfo image, checked before anything big moves
//! 3. `Prepare` → `NeedBlobs` | `Refuse`       container config and image; dest says which blobs it lacks
//! 4. `BlobStart` + stream, once per needed blob
//! 5. `FsStart { pass: 1 }` + stream, per filesystem (overlay upper dir, each volume), container running
//! 6. `OpenPageSink` → `PagesReady`            dest starts its page sink (page server, or nothing in post-copy)
//! 7. source freezes and dumps; pages flow on the tunnel stream; `DumpDone`
//! 8. `ImagesStart` + stream (non-page CRIU images as tar), `FsStart { pass: 2 }` + streams (final delta)
//! 9. `Restore` → `Restored` | `RestoreFailed`
//! 10. `Commit` → `Committed`; in post-copy the dest then reports `LazyComplete` once every page is pulled.
//!
//! `Abort` may be sent by either side at any point before the end; `Progress` by either side
//! after the handshake (a long step sends it as a heartbeat, so silence means a dead peer).
//!
//! **The fenced commit (v2).** The destination writes its verdict durably before it opens the
//! gate, and a verdict never changes once written. A side that lost the other mid-commit does
//! not guess: it opens a fresh connection and sends `Inquire { migration_id }` as its first
//! message; the peer answers one `Verdict` from its durable record, and the connection ends.
//! - An in-doubt source (it sent `Commit`, no `Committed` came back) asks the destination. The
//!   destination commits a restored copy still waiting (the source had decided to commit), and
//!   answers `Committed`, or `NotCommitted` if it discarded the copy or never had one.
//! - A destination holding a restored copy that never got `Commit` asks the source: `Committed`
//!   (the source sent `Commit`: commit), `NotCommitted` (the source resumed: discard), or
//!   `Pending` (the source has not decided yet: ask again).
//!
//! **The address question (added within v2).** Before `ferry run --ip` takes an address, its
//! ferryd may ask each known peer on a fresh connection: `IpQuery { ip }` as the first message,
//! one `IpStatus` back, and the connection ends. A peer that predates the question closes the
//! connection without an answer; the asking side then knows nothing, and says so.

use serde::{Deserialize, Serialize};

use crate::VersionRange;

/// Hello.features values this build understands.
pub const FEATURE_TCP_ESTABLISHED: &str = "tcp-established";
pub const FEATURE_LAZY_PAGES: &str = "lazy-pages";
pub const FEATURE_PAGE_TUNNEL: &str = "page-tunnel";
pub const FEATURE_ZSTD: &str = "zstd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationMode {
    /// Freeze, dump all memory to the destination, restore.
    #[serde(alias = "stop-copy")]
    StopAndCopy,
    /// Freeze, ship metadata, restore; memory is pulled from the source lazily.
    #[serde(alias = "lazy")]
    PostCopy,
}

/// How the bytes of one bulk stream are compressed on the wire (the announcing message's
/// `compression` field; `"none"` or `"zstd"`, absent meaning none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamCompression {
    #[default]
    None,
    Zstd,
}

/// What a filesystem stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum FsTarget {
    /// The container's overlay upper directory.
    Upper,
    /// A named volume.
    Volume(String),
    /// The container's log (what `ferry logs` shows), so its history moves with it.
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Inclusive range of protocol versions the source speaks.
    pub versions: VersionRange,
    pub host: String,
    pub criu_version: String,
    pub runc_version: String,
    pub kernel: String,
    pub mode: MigrationMode,
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides now speak.
    pub version: u16,
    pub host: String,
    pub criu_version: String,
    pub runc_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// "sha256:…"
    pub digest: String,
    pub size: u64,
}

/// The image a container runs on, as the source holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOffer {
    /// Digest of the image manifest.
    pub manifest: String,
    /// References the image is known by (may be empty for an imported image).
    #[serde(default)]
    pub names: Vec<String>,
    /// Every blob the image needs (manifest, config, layers).
    pub blobs: Vec<BlobRef>,
}

/// What the source tells the destination about its dump (`DumpDone`). Times in microseconds.
/// CRIU's own statistics are `ferry_core::criu::CriuDumpStats` (other field names, kept apart
/// so neither JSON changes); this build sends only `tunnel_bytes` and leaves the rest 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DumpStats {
    pub freezing_us: u64,
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_scanned: u64,
    pub pages_written: u64,
    /// Bytes the page-server tunnel carried from source to destination.
    pub tunnel_bytes: u64,
}

/// What the destination tells the source about its restore (`Restored`): a few of CRIU's
/// numbers (`stats-restore`) and ferry's own timings. Times in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreStats {
    /// Wall time of `runc restore`.
    pub restore_us: u64,
    pub forking_us: u64,
    pub pages_restored: u64,
    /// Post-copy: bytes still to be pulled from the source when the restore returned.
    pub lazy_remaining_bytes: u64,
    /// CRIU's own restore time (`stats-restore`).
    pub criu_restore_us: u64,
    /// Waiting for the page server to finish and exit, after `Restore` arrived.
    pub page_server_us: u64,
    /// `Restore` received → `Restored` sent, on the destination's clock.
    pub total_us: u64,
    /// Staging the gated network (before the freeze, so not part of the downtime).
    pub network_staging_us: u64,
    /// Warming memory for the incoming pages (before the freeze, so not part of the
    /// downtime), and how much.
    pub memory_warming_us: u64,
    pub memory_warmed_bytes: u64,
}

/// One side's durable answer about a migration's outcome (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The container lives (or is to live) on the destination.
    Committed,
    /// The destination copy is gone or never existed; the source keeps the container.
    NotCommitted,
    /// Not decided yet: ask again later.
    Pending,
    /// Post-copy: the container resumed on the destination but its memory never all arrived;
    /// the destination's copy was killed.
    Lost,
}

/// One control message (the JSON payload of a `Control` or `Abort` frame).
///
/// **Wire format: changing this needs a protocol version bump** unless it is additive by the
/// versioning rule in the crate docs (a new optional field with a serde default, a capability
/// negotiated in `Hello`/`Welcome`). That covers every type reachable from here ([`Hello`],
/// [`Welcome`], [`ImageOffer`], [`DumpStats`], [`RestoreStats`], [`Verdict`], ...). The state
/// machine's table test (`machine/tests.rs`) lists every message: a new one goes there too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello(Hello),
    /// dest: version agreed, go on.
    Welcome(Welcome),
    /// dest: will not take this migration (answer to Hello, CpuInfo or Prepare).
    Refuse {
        reason: String,
    },
    /// A CRIU cpuinfo image follows on `stream`.
    CpuInfo {
        stream: u32,
        #[serde(default)]
        compression: StreamCompression,
    },
    /// dest: `criu cpuinfo check` accepted the source's CPU.
    CpuOk {},
    Prepare {
        migration_id: String,
        /// ferry's container config (owned by the container module).
        container: serde_json::Value,
        image: ImageOffer,
    },
    /// dest: the blobs the source must send (possibly none).
    NeedBlobs {
        digests: Vec<String>,
        /// Of the blobs the destination lacked, those it fetched from the image's registry
        /// instead: for the report only. Added within v2 (absent from older peers).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        from_registry: Vec<String>,
    },
    /// One blob follows on `stream`.
    BlobStart {
        digest: String,
        size: u64,
        stream: u32,
        #[serde(default)]
        compression: StreamCompression,
    },
    /// A filesystem tar stream follows on `stream`: pass 1 while running, pass 2 the final
    /// delta (with deletions) after the dump.
    FsStart {
        pass: u8,
        what: FsTarget,
        stream: u32,
        #[serde(default)]
        compression: StreamCompression,
        /// What changed (owned by the fsdiff module), for logs and checks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<serde_json::Value>,
    },
    /// About to freeze: dest, get the page sink ready.
    OpenPageSink {
        /// The container's memory in use (its memory cgroup), 0 when unknown. The destination
        /// refuses a container it has no room for and, in stop-and-copy, warms that much
        /// memory before answering. Added within v2 (absent from older peers).
        #[serde(default, skip_serializing_if = "is_zero")]
        memory_bytes: u64,
        /// The source can send the tunnel's bytes as LZ4 where that is smaller (added
        /// within v2).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lz4: bool,
    },
    /// dest: the page sink is ready (stop-and-copy: page server listening behind the tunnel).
    PagesReady {
        /// The tunnel carries LZ4 (only if the source offered it; an older destination never
        /// says so, and then gets the bytes as they are).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lz4: bool,
    },
    /// The dump finished; memory pages are on the destination (or held for lazy pull).
    DumpDone {
        stats: DumpStats,
    },
    /// The non-page CRIU images follow on `stream` as a tar.
    ImagesStart {
        stream: u32,
        #[serde(default)]
        compression: StreamCompression,
    },
    /// Everything is there: restore now (with the new copy's traffic gated).
    Restore {},
    /// dest: restored and running, gated until commit.
    Restored {
        stats: RestoreStats,
    },
    /// dest: restore failed; the destination has cleaned up and the source resumes.
    RestoreFailed {
        reason: String,
    },
    /// The source has let go: destination, open the gate.
    Commit {},
    /// dest: the gate is open; the container now lives here.
    Committed {},
    /// dest, post-copy only: every page has been pulled; the source may go away.
    LazyComplete {
        bytes: u64,
        /// Pages the lazy-pages daemon moved in all, and how many of them a page fault asked
        /// for (the rest were pushed in the background).
        #[serde(default)]
        pages: u64,
        #[serde(default)]
        faults: u64,
    },
    /// First message of a verdict inquiry (a fresh connection, no `Hello`): what became of
    /// this migration on your side?
    Inquire {
        migration_id: String,
    },
    /// The answer to `Inquire`, from the answering side's durable record.
    Verdict {
        migration_id: String,
        verdict: Verdict,
    },
    /// First message of an address question (a fresh connection, no `Hello`): does anything
    /// on your side use this IPv4 address? Added within v2.
    IpQuery {
        ip: String,
    },
    /// The answer to `IpQuery`: whether the address is in use there, and by what (a container's
    /// name, or the host itself), for the asking user.
    IpStatus {
        ip: String,
        in_use: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Either side: stop, roll back. Valid in every non-final state.
    Abort {
        reason: String,
    },
    /// Either side: progress for display only.
    Progress {
        phase: String,
        done: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Refuse { .. } => "Refuse",
            Message::CpuInfo { .. } => "CpuInfo",
            Message::CpuOk {} => "CpuOk",
            Message::Prepare { .. } => "Prepare",
            Message::NeedBlobs { .. } => "NeedBlobs",
            Message::BlobStart { .. } => "BlobStart",
            Message::FsStart { .. } => "FsStart",
            Message::OpenPageSink { .. } => "OpenPageSink",
            Message::PagesReady { .. } => "PagesReady",
            Message::DumpDone { .. } => "DumpDone",
            Message::ImagesStart { .. } => "ImagesStart",
            Message::Restore {} => "Restore",
            Message::Restored { .. } => "Restored",
            Message::RestoreFailed { .. } => "RestoreFailed",
            Message::Commit {} => "Commit",
            Message::Committed {} => "Committed",
            Message::LazyComplete { .. } => "LazyComplete",
            Message::Inquire { .. } => "Inquire",
            Message::Verdict { .. } => "Verdict",
            Message::IpQuery { .. } => "IpQuery",
            Message::IpStatus { .. } => "IpStatus",
            Message::Abort { .. } => "Abort",
            Message::Progress { .. } => "Progress",
        }
    }

    /// The bulk stream this message announces, if any.
    pub fn announced_stream(&self) -> Option<u32> {
        match self {
            Message::CpuInfo { stream, .. }
            | Message::BlobStart { stream, .. }
            | Message::FsStart { stream, .. }
            | Message::ImagesStart { stream, .. } => Some(*stream),
            _ => None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire spelling of a stream's compression, and that an older peer's message without
    /// the field still means none.
    #[test]
    fn stream_compression_json_is_pinned() {
        for (c, json) in [
            (StreamCompression::None, "\"none\""),
            (StreamCompression::Zstd, "\"zstd\""),
        ] {
            assert_eq!(serde_json::to_string(&c).unwrap(), json);
            assert_eq!(serde_json::from_str::<StreamCompression>(json).unwrap(), c);
        }
        let m: Message = serde_json::from_str(r#"{"type":"images_start","stream":5}"#).unwrap();
        assert_eq!(
            m,
            Message::ImagesStart {
                stream: 5,
                compression: StreamCompression::None
            }
        );
        let m = Message::BlobStart {
            digest: "sha256:ab".into(),
            size: 3,
            stream: 9,
            compression: StreamCompression::Zstd,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"blob_start","digest":"sha256:ab","size":3,"stream":9,"compression":"zstd"}"#
        );
    }

    /// The field names of the statistics the peers exchange (`DumpDone`, `Restored`).
    #[test]
    fn stats_json_is_pinned() {
        let v = serde_json::to_value(DumpStats {
            tunnel_bytes: 7,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"freezing_us": 0, "frozen_us": 0, "memdump_us": 0,
                "memwrite_us": 0, "pages_scanned": 0, "pages_written": 0, "tunnel_bytes": 7})
        );
        let v = serde_json::to_value(RestoreStats {
            criu_restore_us: 5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"restore_us": 0, "forking_us": 0, "pages_restored": 0,
                "lazy_remaining_bytes": 0, "criu_restore_us": 5, "page_server_us": 0,
                "total_us": 0, "network_staging_us": 0, "memory_warming_us": 0,
                "memory_warmed_bytes": 0})
        );
    }

    #[test]
    fn json_shape_is_tagged_and_round_trips() {
        let m = Message::FsStart {
            pass: 2,
            what: FsTarget::Volume("data".into()),
            stream: 17,
            compression: StreamCompression::Zstd,
            summary: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "fs_start");
        assert_eq!(v["what"]["kind"], "volume");
        assert_eq!(v["what"]["name"], "data");
        assert_eq!(v["compression"], "zstd");
        assert_eq!(serde_json::from_value::<Message>(v).unwrap(), m);

        let hello = Message::Hello(Hello {
            versions: (1, 1),
            host: "host-a".into(),
            criu_version: "4.2.1".into(),
            runc_version: "1.1.5".into(),
            kernel: "6.18".into(),
            mode: MigrationMode::PostCopy,
            features: vec![FEATURE_LAZY_PAGES.into()],
        });
        let v = serde_json::to_value(&hello).unwrap();
        assert_eq!(v["type"], "hello");
        assert_eq!(v["mode"], "post-copy");
        assert_eq!(serde_json::from_value::<Message>(v).unwrap(), hello);

        let v = serde_json::to_value(Message::Verdict {
            migration_id: "m1".into(),
            verdict: Verdict::NotCommitted,
        })
        .unwrap();
        assert_eq!(v["type"], "verdict");
        assert_eq!(v["verdict"], "not-committed");

        let v = serde_json::to_value(Message::IpStatus {
            ip: "10.77.1.64".into(),
            in_use: true,
            user: Some("container squatter".into()),
        })
        .unwrap();
        assert_eq!(v["type"], "ip_status");
        assert_eq!(v["in_use"], true);
        let q: Message = serde_json::from_str(r#"{"type":"ip_query","ip":"10.77.1.64"}"#).unwrap();
        assert_eq!(q.name(), "IpQuery");
        // An answer without `user` (nothing uses the address) parses.
        let free: Message =
            serde_json::from_str(r#"{"type":"ip_status","ip":"10.77.1.64","in_use":false}"#)
                .unwrap();
        assert!(matches!(
            free,
            Message::IpStatus {
                in_use: false,
                user: None,
                ..
            }
        ));

        let m: Message = serde_json::from_str(r#"{"type":"commit"}"#).unwrap();
        assert_eq!(m, Message::Commit {});
        assert!(serde_json::from_str::<Message>(r#"{"type":"teleport"}"#).is_err());
    }

    #[test]
    fn page_sink_fields_added_within_v2_default_for_older_peers() {
        // What a peer from before these fields sends.
        let m: Message = serde_json::from_str(r#"{"type":"open_page_sink"}"#).unwrap();
        assert_eq!(
            m,
            Message::OpenPageSink {
                memory_bytes: 0,
                lz4: false
            }
        );
        let m: Message = serde_json::from_str(r#"{"type":"pages_ready"}"#).unwrap();
        assert_eq!(m, Message::PagesReady { lz4: false });
        // And what it is sent: unknown fields are ignored by its (serde default) decoder.
        let v = serde_json::to_value(Message::OpenPageSink {
            memory_bytes: 1 << 30,
            lz4: true,
        })
        .unwrap();
        assert_eq!(v["memory_bytes"], 1u64 << 30);
        assert_eq!(v["lz4"], true);
        assert_eq!(
            serde_json::to_value(Message::PagesReady { lz4: false }).unwrap(),
            serde_json::json!({"type": "pages_ready"})
        );
    }
}
