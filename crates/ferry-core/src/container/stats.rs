//! Resource usage of running containers, read from the cgroup v1 files runc made for them
//! (`/sys/fs/cgroup/{cpuacct,memory,pids}/<cgroup parent>/<id>`) and from their network
//! namespace (`/proc/<init pid>/net/dev`). One sample holds counters; rates (CPU %) come from
//! two samples, which is the client's business.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Engine, Status};

/// One sample of one container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerStats {
    pub name: String,
    pub id: String,
    /// When it was read (RFC3339, nanoseconds).
    pub time: String,
    /// CPU time used since the container started, in nanoseconds (cpuacct.usage).
    pub cpu_ns: Option<u64>,
    /// Memory in use without the page cache the kernel can drop (usage - inactive file).
    pub memory_bytes: Option<u64>,
    /// The memory limit; None when unlimited.
    pub memory_limit: Option<u64>,
    /// Bytes the container received and sent on its interfaces (loopback left out).
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    /// Tasks (processes and threads).
    pub pids: Option<u64>,
}

/// Above this, a v1 memory limit means "none" (the kernel's unlimited is near 2^63).
const UNLIMITED: u64 = 1 << 62;

impl Engine {
    /// A sample of every running container (of `names` only, when given). A file that cannot
    /// be read leaves its figure out rather than failing the whole sample.
    pub fn stats(&self, names: &[String]) -> Result<Vec<ContainerStats>, super::ContainerError> {
        let records = if names.is_empty() {
            self.list()
        } else {
            names
                .iter()
                .map(|n| self.inspect(n))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(records
            .iter()
            .filter(|r| r.status == Status::Running)
            .map(|r| {
                let rel = format!(
                    "{}/{}",
                    self.config().cgroup_parent.trim_matches('/'),
                    r.config.id
                );
                let cg = |ctl: &str, file: &str| -> PathBuf {
                    Path::new("/sys/fs/cgroup").join(ctl).join(&rel).join(file)
                };
                let usage = read_u64(&cg("memory", "memory.usage_in_bytes"));
                let inactive = read_stat(&cg("memory", "memory.stat"), "total_inactive_file");
                let (rx, tx) = r.pid.and_then(net_dev).unzip();
                ContainerStats {
                    name: r.config.name.clone(),
                    id: r.config.id.clone(),
                    time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    cpu_ns: read_u64(&cg("cpuacct", "cpuacct.usage")),
                    memory_bytes: usage.map(|u| u.saturating_sub(inactive.unwrap_or(0))),
                    memory_limit: read_u64(&cg("memory", "memory.limit_in_bytes"))
                        .filter(|l| *l < UNLIMITED),
                    net_rx_bytes: rx,
                    net_tx_bytes: tx,
                    pids: read_u64(&cg("pids", "pids.current")),
                }
            })
            .collect())
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `KEY VALUE` line of a cgroup stat file.
fn read_stat(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// (received, sent) bytes over every interface but loopback of `pid`'s network namespace.
fn net_dev(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    Some(parse_net_dev(&text))
}

fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .filter(|(iface, _)| iface.trim() != "lo")
        .map(|(_, rest)| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (
                f.first().copied().unwrap_or(0),
                f.get(8).copied().unwrap_or(0),
            )
        })
        .fold((0, 0), |(r, t), (a, b)| (r + a, t + b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    2000      20    0    0    0     0          0         0      3000      30    0    0    0     0       0          0
";
        assert_eq!(parse_net_dev(text), (2000, 3000));
    }
}
