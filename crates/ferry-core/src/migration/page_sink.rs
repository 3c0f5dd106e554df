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
pub(super) struct PageSink(Option<PageReceiver>);

impl PageSink {
    pub(super) fn new(images_dir: &Path) -> PageSink {
        PageSink(Some(PageReceiver::new(images_dir)))
    }
}

impl LocalSink for PageSink {
    fn take(&mut self, bytes: &[u8], answer: &mut Vec<u8>) -> Result<(), PeerError> {
        match self.0.as_mut() {
            Some(r) => r.feed(bytes, answer).map_err(whose_fault),
            None => Err(stream_error("page bytes after the stream ended".into())),
        }
    }

    fn end(&mut self) -> Result<(), PeerError> {
        match self.0.take() {
            Some(r) => {
                let got = r.finish().map_err(whose_fault)?;
                tracing::debug!(pages = got.pages, pagemaps = got.pagemaps, "pages received");
                Ok(())
            }
            None => Err(stream_error("the page stream ended twice".into())),
        }
    }
}

/// Writing the images is this host's business (a full tmpfs is ours); anything else is what
/// the peer sent.
fn whose_fault(e: CriuError) -> PeerError {
    match e {
        CriuError::Io { path, source } => PeerError::Io { path, source },
        other => stream_error(other.to_string()),
    }
}

fn stream_error(reason: String) -> PeerError {
    PeerError::StreamCheck {
        stream: TUNNEL_STREAM,
        reason,
    }
}
