//! Live migration between hosts: the source and destination sides of the protocol.

pub mod hook;
