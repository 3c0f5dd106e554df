//! ferry's own `ferry migrate`, stop-and-copy or post-copy (`--mode lazy`).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{ms, Method, Moved, COUNTER, REDIS_SERVER};
use crate::cpu::{self, Cgroup};
use crate::ctx::{run_checked, Ctx, DESTINATION, SOURCE};
use crate::record::{CpuSides, Workload};

/// A new address for every run of every ferry method, from `10.77.1.11` up. `ferry run`
/// announces nothing: a container started with the address (and so the MAC) of one that last
/// lived on host-b stays unreachable from the client until the fabric's forwarding entry for
/// it ages out (minutes).
static STARTED: AtomicU32 = AtomicU32::new(0);

fn address(run: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1, 10 + (run % 200) as u8)
}

pub struct Ferry {
    name: String,
    /// `--mode` to pass (None: this build has no `--mode`, so it only does stop-and-copy).
    mode: Option<&'static str>,
    /// The number of its last container among all ferry methods' (picks the address).
    runs: u32,
}

impl Ferry {
    /// Stop-and-copy, said explicitly where the build has `--mode` (its default, `auto`,
    /// picks post-copy for big containers).
    pub fn stop_and_copy(has_mode: bool) -> Ferry {
        Ferry {
            name: "ferry".into(),
            mode: has_mode.then_some("stop-copy"),
            runs: 0,
        }
    }

    pub fn post_copy() -> Ferry {
        Ferry {
            name: "ferry-postcopy".into(),
            mode: Some("lazy"),
            runs: 0,
        }
    }
}

/// Whether this build's `ferry migrate` takes `--mode` (post-copy); the reason if not.
pub fn post_copy_available() -> Result<(), String> {
    let ferry = ferry_lab::find_binary("ferry", "FERRY").map_err(|e| e.to_string())?;
    let mut c = std::process::Command::new(ferry);
    c.args(["migrate", "--help"]);
    match run_checked(c, "ferry migrate --help") {
        Ok(help) if help.contains("--mode") => Ok(()),
        Ok(_) => Err("not available in this build: `ferry migrate --help` lists no --mode".into()),
        Err(e) => Err(format!("could not ask ferry: {e:#}")),
    }
}

/// A host's CPU so far: its ferryd with everything it reaped (runc, CRIU, page server) and
/// its containers' cgroup parent (CRIU's parasite and restorer run in the container's tasks).
fn host_cpu(ctx: &Ctx, host: &str) -> f64 {
    let Ok(h) = ctx.host(host) else { return 0.0 };
    let daemon = h.pid().map_or(0.0, cpu::process_tree_s);
    daemon + Cgroup::new(&h.cgroup_parent).usage_s()
}

impl Method for Ferry {
    fn name(&self) -> &str {
        &self.name
    }

    fn redis_ip(&self) -> Ipv4Addr {
        address(self.runs)
    }

    fn start(&mut self, ctx: &Ctx, workload: Workload, name: &str) -> Result<()> {
        for host in [SOURCE, DESTINATION] {
            // Created up front, so its counter exists before the first container and keeps
            // what removed containers used.
            let _ = Cgroup::new(&ctx.host(host)?.cgroup_parent).ensure();
        }
        self.runs = STARTED.fetch_add(1, Ordering::Relaxed) + 1;
        let mut args = vec!["run", "-d", "--name", name];
        let ip = address(self.runs).to_string();
        match workload {
            Workload::Redis => {
                args.extend(["--ip", &ip, "redis"]);
                args.extend(REDIS_SERVER);
            }
            Workload::Counter => args.extend(["busybox", "sh", "-c", COUNTER]),
        }
        ctx.ferry(SOURCE, &args)?;
        Ok(())
    }

    fn migrate(&mut self, ctx: &Ctx, name: &str) -> Result<Moved> {
        let mut args = vec!["migrate", name, "--to", DESTINATION, "--json"];
        if let Some(mode) = self.mode {
            args.extend(["--mode", mode]);
        }
        let (a0, b0, c0) = (
            host_cpu(ctx, SOURCE),
            host_cpu(ctx, DESTINATION),
            cpu::children_s(),
        );
        let t0 = Instant::now();
        let mut c = ctx.lab.host_command(SOURCE, "ferry")?;
        c.args(&args);
        let out = c
            .stdin(std::process::Stdio::null())
            .output()
            .context("running ferry migrate")?;
        let wall = t0.elapsed();
        let cli = cpu::children_s() - c0;
        let cpu = CpuSides {
            source: host_cpu(ctx, SOURCE) - a0 + cli,
            destination: host_cpu(ctx, DESTINATION) - b0,
        };
        // The report is on stdout also when the migration failed.
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "ferry migrate ({}) printed no JSON report: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        let outcome = report["outcome"].as_str().unwrap_or("none").to_owned();
        let ok = out.status.success() && outcome == "committed";
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut wire = std::collections::BTreeMap::new();
        if let Some(b) = report["bytes"].as_object() {
            for (k, v) in b {
                wire.insert(k.clone(), v.as_u64().unwrap_or(0));
            }
            // The pages as they crossed (LZ4 where it paid), not as much memory as they hold.
            if let Some(on_wire) = wire.remove("pages_on_wire").filter(|&n| n > 0) {
                wire.insert("pages".into(), on_wire);
            }
        }
        Ok(Moved {
            ok,
            error: (!ok).then(|| {
                report["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("outcome {outcome}: {}", stderr.trim()))
            }),
            downtime_ms: report["downtime_ms"].as_f64(),
            total_ms: report["total_ms"].as_f64().or(Some(ms(wall))),
            wire_bytes: wire,
            cpu,
            details: serde_json::json!({
                "outcome": outcome,
                "mode": report["mode"],
                "cli_wall_ms": ms(wall),
                "phases": report["phases"],
                "downtime_breakdown": report["downtime_breakdown"],
                "source_cleanup_ms": report["source_cleanup_ms"],
            }),
        })
    }

    fn tick_log(&self, ctx: &Ctx, name: &str) -> Result<String> {
        // The log moves with the container: the destination's copy holds both sides.
        ctx.ferry(DESTINATION, &["logs", "--timestamps", name])
    }

    fn cleanup(&mut self, ctx: &Ctx, name: &str) -> Vec<String> {
        let mut failures = Vec::new();
        for host in [SOURCE, DESTINATION] {
            let listed = ctx
                .ferry(host, &["ps", "-a", "--json"])
                .map(|o| o.contains(&format!("\"{name}\"")))
                .unwrap_or(true);
            if listed {
                if let Err(e) = ctx.ferry(host, &["rm", "-f", name]) {
                    failures.push(format!("{host}: {e:#}"));
                }
            }
        }
        failures
    }
}
