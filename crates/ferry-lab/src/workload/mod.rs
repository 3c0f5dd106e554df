//! Client workloads for the lab: what the e2e tests, the demo and the benchmarks run against a
//! container while it moves. Every client connects from inside a namespace (normally the lab's
//! client netns) and keeps its connections open, so a reset or reconnect would show.

pub mod redis;
pub mod writer;

/// A busybox shell loop printing `tick N` ten times a second (the near-empty workload).
pub const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done";

/// redis-server as the lab runs it: reachable from outside, no persistence, DEBUG POPULATE
/// allowed.
pub const REDIS_SERVER: [&str; 11] = [
    "redis-server",
    "--bind",
    "0.0.0.0",
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
    "--enable-debug-command",
    "yes",
];
