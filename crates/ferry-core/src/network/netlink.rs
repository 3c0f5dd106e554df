//! The one place that opens netlink sockets: a [`Handle`] in the caller's namespace, or in the
//! namespace at a path.
//!
//! A netlink socket belongs to the network namespace of the thread that opened it, for its whole
//! life; after that it can be driven from any thread. So a handle for another namespace is
//! opened on a thread inside it ([`in_netns`]) and then used from the caller's runtime.

use std::path::Path;

use rtnetlink::Handle;

use super::enter::in_netns;
use super::error::NetError;

/// A netlink handle in the calling thread's network namespace, its connection driven by a task
/// on the current tokio runtime.
pub(crate) async fn handle() -> Result<Handle, NetError> {
    // This module is the one place netlink sockets are opened (clippy.toml sends others here).
    #[allow(clippy::disallowed_methods)]
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::NetlinkSocket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle whose socket lives in the namespace at `path`, driven by the caller's tokio
/// runtime. The socket is opened on a thread inside that namespace, then used from anywhere.
pub(crate) async fn handle_in(path: &Path) -> Result<Handle, NetError> {
    let runtime = tokio::runtime::Handle::current();
    let (conn, handle, _) = in_netns(path, move || {
        // new_connection registers the socket with the runtime it is called in.
        let _entered = runtime.enter();
        #[allow(clippy::disallowed_methods)] // the one place, as in handle()
        rtnetlink::new_connection()
    })?
    .map_err(NetError::NetlinkSocket)?;
    tokio::spawn(conn);
    Ok(handle)
}
