//! Running code inside a network namespace: a fresh OS thread that entered it.
//!
//! The bottom of the network module: it knows namespace files only as paths to `setns` into,
//! and nothing about links or netlink.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::error::NetError;
use crate::fsutil::block_on_fresh;

/// Runs `f` on a fresh OS thread that has entered the network namespace at `path`. The thread
/// ends with `f`, so no pooled thread is ever left in a foreign namespace. A panic in `f` is
/// propagated to the caller.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    let ns = File::open(path).map_err(|source| NetError::Netns {
        path: path.to_owned(),
        op: "open",
        source,
    })?;
    let ns_path = path.to_owned();
    let worker = std::thread::Builder::new()
        .name("ferry-netns".into())
        .spawn(move || -> Result<T, NetError> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                path: ns_path,
                op: "setns",
                source: e.into(),
            })?;
            drop(ns);
            Ok(f())
        })
        .map_err(NetError::Thread)?;
    match worker.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs the future made by `f` to completion on a private single-threaded runtime, on a thread
/// inside the namespace at `path`. Usable from sync code and from inside another runtime.
pub fn run_in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    in_netns(path, move || block_on_fresh(f()))?
}
