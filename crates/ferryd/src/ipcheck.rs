//! `run --ip`: asks every known peer whether it uses the address (see
//! `ferry_core::peer::query`), for warnings only: the container runs either way.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ferry_core::peer::query::{self, PeerIpReport, ASK_TIMEOUT};
use ferry_core::peer::registry::Peers;

use crate::api::AppState;

/// What each peer said about `ip`; empty without an address, a peer identity or peers.
pub async fn ask_peers(state: Arc<AppState>, ip: Option<Ipv4Addr>) -> Vec<PeerIpReport> {
    let (Some(ip), Some(identity)) = (ip, state.identity.clone()) else {
        return Vec::new();
    };
    let peers = match Peers::load(state.engine.paths()) {
        Ok(p) => p.list().into_iter().cloned().collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peers to ask about {ip}");
            return Vec::new();
        }
    };
    query::ask_all(&identity, &peers, ip, ASK_TIMEOUT).await
}
