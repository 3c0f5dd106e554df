//! The ways to move a container between the two lab hosts, behind one interface.

pub mod ferry;
pub mod podman;
mod podnet;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Result;

use crate::ctx::Ctx;
use crate::record::{CpuSides, Workload};

pub use ferry_lab::workload::{COUNTER, REDIS_SERVER};

/// What one move produced.
#[derive(Debug, Clone, Default)]
pub struct Moved {
    pub ok: bool,
    pub error: Option<String>,
    pub downtime_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub wire_bytes: BTreeMap<String, u64>,
    pub cpu: CpuSides,
    pub details: serde_json::Value,
}

pub trait Method {
    /// The name in the results (`ferry`, `ferry-postcopy`, `podman`).
    fn name(&self) -> &str;
    /// The address its Redis is reached at from the client.
    fn redis_ip(&self) -> Ipv4Addr;
    /// Starts `workload` as container `name` on the source host.
    fn start(&mut self, ctx: &Ctx, workload: Workload, name: &str) -> Result<()>;
    /// Moves it to the destination host.
    fn migrate(&mut self, ctx: &Ctx, name: &str) -> Result<Moved>;
    /// The container's log, timestamped, from both hosts (the counter's ticks).
    fn tick_log(&self, ctx: &Ctx, name: &str) -> Result<String>;
    /// Removes every trace of `name` on both hosts. Failures are returned, not hidden.
    fn cleanup(&mut self, ctx: &Ctx, name: &str) -> Vec<String>;
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
