//! What a migration tells its user: progress events while it runs, and a final report.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The phases of a migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Connect,
    CpuCheck,
    Prepare,
    Image,
    FsPass1,
    Dump,
    Images,
    FsPass2,
    Restore,
    Commit,
    Rollback,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Connect => "connect + handshake",
            Phase::CpuCheck => "CPU check",
            Phase::Prepare => "prepare destination",
            Phase::Image => "image layers",
            Phase::FsPass1 => "filesystem pass 1 (running)",
            Phase::Dump => "freeze + memory",
            Phase::Images => "CRIU images",
            Phase::FsPass2 => "filesystem final delta",
            Phase::Restore => "restore on destination",
            Phase::Commit => "commit",
            Phase::Rollback => "rollback",
        }
    }
}

/// One line of the progress stream (NDJSON on the API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MigrationEvent {
    PhaseStart {
        phase: Phase,
    },
    PhaseDone {
        phase: Phase,
        ms: u64,
        bytes: u64,
    },
    Bytes {
        phase: Phase,
        bytes: u64,
    },
    Note {
        message: String,
    },
    Done {
        report: MigrationReport,
    },
    Failed {
        error: String,
        report: MigrationReport,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The container runs on the destination; the source copy is gone.
    Committed,
    /// The migration failed; the container kept running on the source.
    RolledBack,
    /// The migration failed before the source was touched.
    Refused,
    /// `Commit` was sent but no verdict came back: the source stays frozen until the
    /// destination answers or an operator runs `ferry migration resolve`.
    InDoubt,
    /// The migration failed and resuming the source could not be verified: see the error.
    RollbackFailed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: Option<Phase>,
    pub ms: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bytes {
    pub layers: u64,
    pub fs: u64,
    pub pages: u64,
    pub images: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    pub migration_id: String,
    pub container: String,
    pub from: String,
    pub to: String,
    pub mode: String,
    pub outcome: Option<Outcome>,
    /// Freeze on the source → resumed (gate open) on the destination.
    pub downtime_ms: Option<u64>,
    pub total_ms: u64,
    pub phases: Vec<PhaseTime>,
    pub bytes: Bytes,
    pub layers_sent: usize,
    pub layers_skipped: usize,
    pub criu_dump: Option<serde_json::Value>,
    pub criu_restore: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Cleanup steps that failed (recorded, never ignored).
    #[serde(default)]
    pub cleanup_failures: Vec<String>,
}

impl MigrationReport {
    pub fn new(id: &str, container: &str, from: &str, to: &str, mode: &str) -> Self {
        MigrationReport {
            migration_id: id.to_owned(),
            container: container.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            mode: mode.to_owned(),
            outcome: None,
            downtime_ms: None,
            total_ms: 0,
            phases: Vec::new(),
            bytes: Bytes::default(),
            layers_sent: 0,
            layers_skipped: 0,
            criu_dump: None,
            criu_restore: None,
            error: None,
            cleanup_failures: Vec::new(),
        }
    }
}

/// Sends progress to whoever watches (the API stream); a gone watcher does not stop the work.
pub struct Progress {
    tx: tokio::sync::mpsc::UnboundedSender<MigrationEvent>,
    current: Option<(Phase, Instant)>,
}

impl Progress {
    pub fn new(tx: tokio::sync::mpsc::UnboundedSender<MigrationEvent>) -> Self {
        Progress { tx, current: None }
    }

    pub fn emit(&self, ev: MigrationEvent) {
        let _ = self.tx.send(ev);
    }

    pub fn start(&mut self, phase: Phase) {
        self.current = Some((phase, Instant::now()));
        self.emit(MigrationEvent::PhaseStart { phase });
    }

    pub fn bytes(&self, phase: Phase, bytes: u64) {
        self.emit(MigrationEvent::Bytes { phase, bytes });
    }

    pub fn note(&self, message: impl Into<String>) {
        self.emit(MigrationEvent::Note {
            message: message.into(),
        });
    }

    /// Ends the current phase and records it in the report.
    pub fn done(&mut self, report: &mut MigrationReport, bytes: u64) -> Duration {
        let Some((phase, t)) = self.current.take() else {
            return Duration::ZERO;
        };
        let d = t.elapsed();
        report.phases.push(PhaseTime {
            phase: Some(phase),
            ms: d.as_millis() as u64,
            bytes,
        });
        self.emit(MigrationEvent::PhaseDone {
            phase,
            ms: d.as_millis() as u64,
            bytes,
        });
        d
    }

    pub fn current(&self) -> Option<Phase> {
        self.current.map(|c| c.0)
    }
}
