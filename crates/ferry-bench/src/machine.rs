//! The machine description committed with every report: numbers mean little without it.

use ferry_core::tool::Tool;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub started: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub criu: String,
    pub runc: String,
    pub podman: String,
    /// The commit the suite ran (with `-dirty` if the tree had changes).
    pub ferry_commit: String,
    pub profile: String,
    /// The options the suite ran with.
    pub options: serde_json::Value,
}

fn first_line(
    out: Result<String, ferry_core::tool::ToolError>,
    pick: impl Fn(&str) -> bool,
) -> String {
    match out {
        Ok(s) => s
            .lines()
            .find(|l| pick(l))
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Err(e) => format!("unavailable ({e})"),
    }
}

fn meminfo_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default()
}

fn commit() -> String {
    let rev = Tool::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .run_text();
    let dirty = Tool::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .run_text()
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    match rev {
        Ok(r) => format!("{}{}", r.trim(), if dirty { "-dirty" } else { "" }),
        Err(_) => "unknown".into(),
    }
}

pub fn describe(criu: &str, options: serde_json::Value) -> Machine {
    Machine {
        started: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        kernel: first_line(Tool::new("uname").args(["-r"]).run_text(), |_| true),
        cpu_model: cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: meminfo_gib(),
        criu: first_line(Tool::new(criu).arg("--version").run_text(), |l| {
            l.starts_with("Version")
        })
        .replace("Version:", "CRIU"),
        runc: first_line(Tool::new("runc").arg("--version").run_text(), |l| {
            l.starts_with("runc")
        }),
        podman: first_line(Tool::new("podman").arg("--version").run_text(), |_| true),
        ferry_commit: commit(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        options,
    }
}
