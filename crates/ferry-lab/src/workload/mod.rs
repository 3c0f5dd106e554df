//! Client workloads for the lab: what the e2e tests, the demo and the benchmarks run against a
//! container while it moves. Every client connects from inside a namespace (normally the lab's
//! client netns) and keeps its connections open, so a reset or reconnect would show.

pub mod redis;
pub mod writer;
