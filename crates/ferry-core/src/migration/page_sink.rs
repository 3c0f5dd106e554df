//! The stop-and-copy destination's end of the page tunnel: the dump's pages are written into
//! the incoming images directory in-process, by [`PageReceiver`], as they come out of the TLS
//! channel (no `criu page-server`, no loopback leg; see `criu::PageReceiver` for why).

use std::path::Path;

use ferry_proto::TUNNEL_STREAM;

use crate::criu::{CriuError, PageReceiver};
use crate::peer::tunnel::LocalSink;
use crate::peer::PeerError;

/// A [`PageReceiver`] behind the tunnel.
#[derive(Debug)]
pub(super) struct PageSink(PageReceiver);

impl PageSink {
    pub(super) fn new(images_dir: &Path) -> PageSink {
        PageSink(PageReceiver::new(images_dir))
    }
}

impl LocalSink for PageSink {
    fn take(&mut self, bytes: &[u8], answer: &mut Vec<u8>) -> Result<(), PeerError> {
        self.0.feed(bytes, answer).map_err(whose_fault)
    }

    fn end(self) -> Result<(), PeerError> {
        let got = self.0.finish().map_err(whose_fault)?;
        tracing::debug!(pages = got.pages, pagemaps = got.pagemaps, "pages received");
        Ok(())
    }
}

/// Writing the images is this host's business (a full tmpfs is ours); anything else is what
/// the peer sent.
fn whose_fault(e: CriuError) -> PeerError {
    match e {
        CriuError::Io { path, source } => PeerError::Io { path, source },
        other => PeerError::StreamCheck {
            stream: TUNNEL_STREAM,
            reason: other.to_string(),
        },
    }
}
