//! What one suite writes: one JSON line per record (`suite-<stamp>.jsonl`), from which the
//! markdown report and the plot are made (also later, by `ferry-bench report`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Machine(crate::machine::Machine),
    Run(Run),
    Limit(Limit),
    /// A method the suite was asked for and could not run in this build (said, never faked).
    Unavailable {
        method: String,
        reason: String,
    },
}

/// The workload a run moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// busybox printing a tick every 0.1 s: the near-zero baseline.
    Counter,
    /// Redis with `size_mib` of 1 KiB values, one persistent writer.
    Redis,
}

/// CPU seconds spent on each side of a move (tools, daemons and the container's cgroup).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CpuSides {
    pub source: f64,
    pub destination: f64,
}

/// One move of one container by one method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub workload: Workload,
    /// Redis data (DEBUG POPULATE), 0 for the counter.
    pub size_mib: u64,
    pub method: String,
    pub repeat: u32,
    /// The move finished and the container runs on the destination.
    pub ok: bool,
    pub error: Option<String>,
    /// The container's resident memory before the move (Redis: `used_memory_rss`).
    pub rss_bytes: Option<u64>,
    /// The longest interval without progress: the writer's longest stall (Redis), or the
    /// longest interval between two ticks in the container's log (counter).
    pub gap_ms: Option<f64>,
    /// What `gap_ms` is: "client" or "ticks".
    pub gap_source: String,
    /// ferry: freeze → resumed on the destination (its report). Podman: checkpoint command
    /// started → restore command returned and the address announced.
    pub downtime_ms: Option<f64>,
    /// The whole operation as its user waits for it.
    pub total_ms: Option<f64>,
    /// Bytes between the hosts by category (ferry: its report; Podman: the archive).
    pub wire_bytes: BTreeMap<String, u64>,
    pub cpu_s: CpuSides,
    /// Client connections that broke (reset or closed) during the move.
    pub resets: u32,
    /// Acknowledged writes missing afterwards (None: could not be counted).
    pub lost_writes: Option<u64>,
    /// Every acknowledged write present, on the same connection.
    pub writes_verified: Option<bool>,
    /// Method-specific detail: ferry's downtime breakdown, Podman's phases.
    pub details: serde_json::Value,
}

/// The machine's limit, measured in the same run next to the moves of one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limit {
    pub size_mib: u64,
    pub repeat: u32,
    /// Resident memory the floor is computed for.
    pub rss_bytes: u64,
    /// Writing `rss_bytes` into a fresh memfd (first touch of every page).
    pub fresh_write_ms: f64,
    /// Raw TCP between the two lab hosts' namespaces, bytes per second.
    pub fabric_bytes_per_s: f64,
    pub fabric_bytes: u64,
    /// `ferry checkpoint` (runc + CRIU) of a near-empty container, and its restore.
    pub empty_checkpoint_ms: f64,
    pub empty_restore_ms: f64,
    /// empty freeze + restore, plus the RSS once over the fabric and once into fresh memory.
    pub floor_ms: f64,
}

/// The runs among a suite's records.
pub fn runs(records: &[Record]) -> Vec<&Run> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Run(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The limit measurements among a suite's records.
pub fn limits(records: &[Record]) -> Vec<&Limit> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Limit(l) => Some(l),
            _ => None,
        })
        .collect()
}

impl Run {
    /// The gap the client saw, when it measures an interruption: a run whose connection broke
    /// has none (its writer stopped at the reset, so its longest wait says nothing).
    pub fn measured_gap(&self) -> Option<f64> {
        self.gap_ms.filter(|_| self.resets == 0)
    }
}

impl Limit {
    pub fn compute_floor(&mut self) {
        let fabric_ms = if self.fabric_bytes_per_s > 0.0 {
            self.rss_bytes as f64 / self.fabric_bytes_per_s * 1000.0
        } else {
            0.0
        };
        self.floor_ms =
            self.empty_checkpoint_ms + self.empty_restore_ms + fabric_ms + self.fresh_write_ms;
    }
}

/// Appends records to the suite's `.jsonl` as they are made, so a crash keeps what ran.
pub struct Journal {
    file: std::fs::File,
    path: std::path::PathBuf,
    pub records: Vec<Record>,
}

impl Journal {
    pub fn create(path: &Path) -> Result<Journal> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the results file {}", path.display()))?;
        Ok(Journal {
            file,
            path: path.to_owned(),
            records: Vec::new(),
        })
    }

    pub fn push(&mut self, r: Record) -> Result<()> {
        let line = serde_json::to_string(&r)?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.records.push(r);
        Ok(())
    }
}

pub fn load(path: &Path) -> Result<Vec<Record>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        v.push(
            serde_json::from_str(&line).with_context(|| {
                format!("{} line {}: not a suite record", path.display(), i + 1)
            })?,
        );
    }
    Ok(v)
}
