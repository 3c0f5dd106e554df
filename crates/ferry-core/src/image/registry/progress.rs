//! What a pull or push tells as it goes: ferryd streams these as NDJSON, the CLI draws them.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

/// One blob that will move (or is already where it should be).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    /// `config` or `layer`.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TransferEvent {
    /// The manifest is known: these are the blobs.
    Resolved {
        reference: String,
        digest: String,
        blobs: Vec<BlobInfo>,
    },
    /// Bytes of one blob so far.
    Blob {
        digest: String,
        bytes: u64,
        total: u64,
    },
    /// A blob is done; `skipped` when it was already there (in the store, or the registry).
    BlobDone {
        digest: String,
        size: u64,
        skipped: bool,
    },
    Note {
        message: String,
    },
    Done {
        result: TransferResult,
    },
    Failed {
        error: String,
    },
}

/// The outcome of a pull or push (`--json` prints it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransferResult {
    /// The full reference, `registry/repository:tag`.
    pub reference: String,
    /// The image id (its manifest's digest).
    pub id: String,
    /// The digest the registry serves for the reference (an index's for multi-arch images).
    pub registry_digest: String,
    pub names: Vec<String>,
    /// Blobs moved, and those already present at the other end.
    pub blobs_moved: usize,
    pub blobs_present: usize,
    /// Bytes of the blobs moved.
    pub bytes: u64,
    pub ms: u64,
}

/// Where events go: a channel to the API stream, or nowhere.
#[derive(Debug, Clone, Default)]
pub struct TransferProgress {
    tx: Option<UnboundedSender<TransferEvent>>,
}

/// A blob's progress is told at most this often (in bytes).
const STEP: u64 = 256 * 1024;

impl TransferProgress {
    pub fn new(tx: UnboundedSender<TransferEvent>) -> Self {
        TransferProgress { tx: Some(tx) }
    }

    pub fn none() -> Self {
        TransferProgress { tx: None }
    }

    pub fn send(&self, ev: TransferEvent) {
        if let Some(tx) = &self.tx {
            // The client may have gone; the transfer goes on regardless.
            let _ = tx.send(ev);
        }
    }

    pub(crate) fn note(&self, message: impl Into<String>) {
        self.send(TransferEvent::Note {
            message: message.into(),
        });
    }

    /// Tells `bytes` of `total` when it crossed another step since `last`.
    pub(crate) fn bytes(&self, digest: &str, last: &mut u64, bytes: u64, total: u64) {
        if bytes >= *last + STEP || bytes == total {
            *last = bytes;
            self.send(TransferEvent::Blob {
                digest: digest.to_owned(),
                bytes,
                total,
            });
        }
    }
}
