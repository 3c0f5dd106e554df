//! ferry's engine: everything around runc and CRIU that makes a container movable.
//!
//! Each module owns one job and has its own error enum; binaries turn them into anyhow.

pub mod api;
pub mod checkpoint;
pub mod container;
pub mod criu;
pub mod exec;
pub mod fsdiff;
pub mod fsutil;
pub mod ids;
pub mod image;
pub mod migration;
pub mod network;
pub mod paths;
pub mod peer;
pub mod runtime;
pub mod tool;
