//! Checkpoint directories and the archive format that carries them between hosts.

pub mod archive;
pub mod image;
pub mod layout;
pub mod podman;

pub use layout::CheckpointLayout;
