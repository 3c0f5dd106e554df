//! ferry's engine: everything around runc and CRIU that makes a container movable.
//!
//! Each module owns one job and has its own error enum; binaries turn them into anyhow.

pub mod api;
pub mod cancel;
pub mod checkpoint;
pub mod container;
pub mod criu;
pub mod exec;
pub mod fsdiff;
pub mod fsutil;
pub mod hostmem;
pub mod ids;
pub mod image;
pub mod migration;
pub mod network;
pub mod paths;
pub mod peer;
pub mod runtime;
pub mod tool;

/// An error and its causes on one line, each cause once (a wrapper's message often repeats
/// its source's): what a user needs to see the root cause, e.g. runc's or reqwest's.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
