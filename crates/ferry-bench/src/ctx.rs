//! The suite's handle on the lab: commands on its hosts and its client, and the Redis writer.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_lab::Lab;

pub const SOURCE: &str = "host-a";
pub const DESTINATION: &str = "host-b";

pub struct Ctx {
    pub lab: Lab,
    /// The `ferry-lab` binary (its `redis-load` is the writer).
    pub lab_bin: PathBuf,
    /// Scratch space: images, Podman's storage and archives.
    pub work: PathBuf,
}

/// Runs `cmd` to completion; its stdout, or an error naming `what` with its stderr.
pub fn run_checked(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Ctx {
    pub fn host(&self, name: &str) -> Result<&ferry_lab::HostHandle> {
        self.lab
            .host(name)
            .with_context(|| format!("the lab has no host {name}"))
    }

    /// `ferry ARGS` on a lab host.
    pub fn ferry(&self, host: &str, args: &[&str]) -> Result<String> {
        let mut c = self.lab.host_command(host, "ferry")?;
        c.args(args);
        run_checked(c, &format!("ferry {} on {host}", args.join(" ")))
    }

    /// `ARGS` in the lab's client namespace.
    pub fn client(&self, args: &[&str]) -> Result<String> {
        let mut c = self.lab.client_command(args[0]);
        c.args(&args[1..]);
        run_checked(c, &format!("{} in the client netns", args.join(" ")))
    }

    pub fn wait_redis(&self, ip: Ipv4Addr) -> Result<()> {
        let ip = ip.to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // redis-cli has no connect timeout of its own: a SYN into nowhere waits minutes.
            if let Ok(o) = self.client(&["timeout", "2", "redis-cli", "-h", &ip, "PING"]) {
                if o.trim() == "PONG" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("Redis at {ip} did not answer PING within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `size_mib` MiB of 1 KiB values (`DEBUG POPULATE`), and the resident memory after it.
    pub fn populate(&self, ip: Ipv4Addr, size_mib: u64) -> Result<u64> {
        let ip = ip.to_string();
        let keys = (size_mib * 1024).to_string();
        let out = self.client(&[
            "redis-cli",
            "-h",
            &ip,
            "DEBUG",
            "POPULATE",
            &keys,
            "bulk",
            "1024",
        ])?;
        if out.trim() != "OK" {
            bail!(
                "DEBUG POPULATE {keys} at {ip} answered {:?} (is --enable-debug-command set?)",
                out.trim()
            );
        }
        let info = self.client(&["redis-cli", "-h", &ip, "INFO", "memory"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory_rss:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no used_memory_rss in Redis INFO memory at {ip}"))
    }

    /// Starts one writer on one persistent connection (`ferry-lab redis-load`).
    pub fn start_load(&self, ip: Ipv4Addr) -> Result<Load> {
        let stop = self.work.join(format!("stop-{ip}"));
        let _ = std::fs::remove_file(&stop);
        let st = self.lab.state();
        let child = Command::new(&self.lab_bin)
            .arg("--dir")
            .arg(&st.dir)
            .args([
                "--prefix",
                &st.prefix,
                "redis-load",
                "--ip",
                &ip.to_string(),
            ])
            .args(["--connections", "1", "--json", "--stop-file"])
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} redis-load", self.lab_bin.display()))?;
        Ok(Load { child, stop })
    }
}

/// A running writer.
pub struct Load {
    child: Child,
    stop: PathBuf,
}

/// What the writer saw.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub gap_ms: Option<f64>,
    pub resets: u32,
    pub lost: Option<u64>,
    pub verified: bool,
    pub errors: Vec<String>,
}

impl Load {
    pub fn stop(self) -> Result<LoadResult> {
        std::fs::write(&self.stop, b"")
            .with_context(|| format!("creating the stop file {}", self.stop.display()))?;
        let out = self
            .child
            .wait_with_output()
            .context("waiting for redis-load")?;
        let _ = std::fs::remove_file(&self.stop);
        parse_load(&out.stdout).with_context(|| {
            format!(
                "redis-load ({}) printed no report: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }
}

fn parse_load(stdout: &[u8]) -> Result<LoadResult> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(stdout)?;
    let mut r = LoadResult {
        verified: !v.is_empty(),
        lost: Some(0),
        ..Default::default()
    };
    for c in &v {
        if let Some(gap) = c["longest_stall_ms"].as_f64() {
            r.gap_ms = Some(r.gap_ms.map_or(gap, |g| g.max(gap)));
        }
        if let Some(e) = c["error"].as_str() {
            r.resets += 1;
            r.errors.push(e.to_owned());
        }
        r.verified &= c["all_acknowledged_writes_present"] == true;
        r.lost = match (r.lost, c["lost_acknowledged_writes"].as_u64()) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    Ok(r)
}

/// The longest interval between consecutive ticks (`tick N`) in timestamped log lines; lines
/// from both hosts may be mixed (the first time a tick was seen counts).
pub fn longest_tick_gap_ms(lines: &str) -> Option<f64> {
    let mut seen: std::collections::BTreeMap<u64, chrono::DateTime<chrono::FixedOffset>> =
        Default::default();
    for l in lines.lines() {
        let Some(ts) = l.split_whitespace().next() else {
            continue;
        };
        let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
            continue;
        };
        let Some(n) = l
            .split("tick ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        seen.entry(n).and_modify(|e| *e = (*e).min(t)).or_insert(t);
    }
    let v: Vec<_> = seen.into_iter().collect();
    v.windows(2)
        .filter(|w| w[1].0 == w[0].0 + 1)
        .map(|w| (w[1].1 - w[0].1).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_gap_across_two_logs() {
        let a = "2026-11-30T10:00:00.000Z stdout tick 1\n2026-11-30T10:00:00.100Z stdout tick 2\n";
        let b = "2026-11-30T10:00:01.350+00:00 stdout F tick 3\n2026-11-30T10:00:01.450Z tick 4\n";
        let g = longest_tick_gap_ms(&format!("{a}{b}")).unwrap();
        assert!((g - 1250.0).abs() < 0.01, "{g}");
        assert_eq!(longest_tick_gap_ms("no ticks here"), None);
    }

    #[test]
    fn load_report_counts_broken_connections() {
        let r = parse_load(
            br#"[{"longest_stall_ms": 812, "error": "INCR: connection reset",
            "all_acknowledged_writes_present": false, "lost_acknowledged_writes": 0}]"#,
        )
        .unwrap();
        assert_eq!(
            (r.resets, r.verified, r.lost, r.gap_ms),
            (1, false, Some(0), Some(812.0))
        );
    }
}
