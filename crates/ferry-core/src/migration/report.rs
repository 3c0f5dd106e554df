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
    /// The OCI image's blobs the destination lacks. Called `image` in reports before it was
    /// renamed (it read like `criu-images`), so an older record still reads.
    #[serde(alias = "image")]
    Layers,
    FsPass1,
    Dump,
    /// CRIU's images other than the memory pages, after the dump. Called `images` before.
    #[serde(alias = "images")]
    CriuImages,
    FsPass2,
    Restore,
    Commit,
    /// Post-copy: the memory still on the source moves while the container runs.
    Drain,
    Rollback,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Connect => "connect + handshake",
            Phase::CpuCheck => "CPU check",
            Phase::Prepare => "prepare destination",
            Phase::Layers => "image layers",
            Phase::FsPass1 => "filesystem pass 1 (running)",
            Phase::Dump => "freeze + memory",
            Phase::CriuImages => "CRIU images",
            Phase::FsPass2 => "filesystem final delta",
            Phase::Restore => "restore on destination",
            Phase::Commit => "commit",
            Phase::Drain => "memory pull (running)",
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
        /// What the phase will move in all, when known (post-copy's memory pull).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
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
    /// Post-copy failed after the destination resumed: its copy was killed, and the source
    /// holds only the state at the freeze (see the error).
    Lost,
}

/// Post-copy: the memory that moved after the resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LazyReport {
    /// Page bytes pulled from the source after the resume (through the tunnel).
    pub bytes: u64,
    /// Commit → last page on the destination.
    pub drain_ms: u64,
    /// Freeze → last page: until here the container needed both hosts.
    pub fully_copied_ms: u64,
    /// Over the drain, MB/s.
    pub pull_mb_s: f64,
    /// Pages the destination's lazy-pages daemon moved, and how many of them a page fault
    /// asked for (the rest were pushed in the background).
    pub pages: u64,
    pub pages_on_demand: u64,
    pub pages_pushed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: Option<Phase>,
    pub ms: u64,
    pub bytes: u64,
}

/// One image blob of a migration and where the destination got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerOrigin {
    pub digest: String,
    pub size: u64,
    /// `source`, `registry` or `destination` (see [`MigrationReport::layer_origins`]).
    pub from: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bytes {
    pub layers: u64,
    pub fs: u64,
    /// Memory pages moved (stop-and-copy: through the tunnel; post-copy: pulled).
    pub pages: u64,
    /// What `pages` took on the wire: less when the tunnel's LZ4 paid; 0 when not measured.
    #[serde(default)]
    pub pages_on_wire: u64,
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
    /// Where each image blob came from: `source` (sent between the hosts), `registry` (the
    /// destination fetched it from `image_registry`) or `destination` (it had it already).
    #[serde(default)]
    pub layer_origins: Vec<LayerOrigin>,
    /// The registry the image's name points at, which the destination tries before the source.
    #[serde(default)]
    pub image_registry: Option<String>,
    pub criu_dump: Option<serde_json::Value>,
    pub criu_restore: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Cleanup steps that failed (recorded, never ignored).
    #[serde(default)]
    pub cleanup_failures: Vec<String>,
    /// Where the frozen window went (a committed stop-and-copy migration).
    #[serde(default)]
    pub downtime_breakdown: Option<Downtime>,
    /// After the destination answered `Committed` (it already serves): CRIU lets the frozen
    /// source go and its copy is removed. Not part of the downtime.
    #[serde(default)]
    pub source_cleanup_ms: Option<u64>,
    /// Post-copy: the memory pulled after the resume.
    #[serde(default)]
    pub lazy: Option<LazyReport>,
}

/// Each blob of the image: sent by the source when the destination asked for it, fetched
/// by the destination from the registry, or already there.
pub(crate) fn origins(
    blobs: &[(crate::image::Digest, u64)],
    sent: &[String],
    from_registry: &[String],
) -> Vec<LayerOrigin> {
    let has = |list: &[String], d: &crate::image::Digest| list.iter().any(|s| s == d.as_str());
    blobs
        .iter()
        .map(|(d, size)| LayerOrigin {
            digest: d.to_string(),
            size: *size,
            from: if has(sent, d) {
                "source"
            } else if has(from_registry, d) {
                "registry"
            } else {
                "destination"
            }
            .to_owned(),
        })
        .collect()
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
            layer_origins: Vec::new(),
            image_registry: None,
            criu_dump: None,
            criu_restore: None,
            error: None,
            cleanup_failures: Vec::new(),
            downtime_breakdown: None,
            source_cleanup_ms: None,
            lazy: None,
        }
    }
}

/// The measured parts of the frozen window, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// CRIU's `pre-dump` action → the first page byte in the tunnel: freezing the tasks,
    /// collecting them, and the parasite's first pages.
    Freeze,
    /// First page byte → CRIU's `post-dump` action: every page is on the destination.
    Pages,
    /// `post-dump` seen → `DumpDone` sent.
    PostDump,
    /// Post-copy: CRIU's `pre-dump` action → its lazy page server up and `DumpDone` sent (the
    /// freeze and everything but the memory, which stays behind).
    LazyDump,
    /// The other CRIU images, packed and sent.
    Images,
    /// The final filesystem delta and the log.
    Delta,
    /// `Restore` sent → `Restored` received.
    Restore,
    /// `Commit` step → `Committed` received (the destination opened its gate before answering).
    Commit,
}

impl Part {
    pub fn label(self) -> &'static str {
        match self {
            Part::Freeze => "freeze (to the first page)",
            Part::Pages => "memory pages",
            Part::PostDump => "post-dump hand-off",
            Part::LazyDump => "freeze + dump (memory stays)",
            Part::Images => "CRIU images",
            Part::Delta => "filesystem delta + log",
            Part::Restore => "restore on destination",
            Part::Commit => "commit",
        }
    }
}

/// One measured interval of the frozen window, on the source's clock.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub part: Part,
    pub from: Instant,
    pub to: Instant,
    pub bytes: u64,
}

/// One part of the downtime. Milliseconds with microsecond precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DowntimePart {
    pub part: Part,
    pub ms: f64,
    #[serde(default)]
    pub bytes: u64,
}

/// CRIU's own account of the dump (`stats-dump`), in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CriuDumpTimes {
    pub freezing_ms: f64,
    /// Freeze → CRIU let the tasks go (it kills them after the commit).
    pub frozen_ms: f64,
    /// Draining the pages out of the tasks (into pipes).
    pub memdump_ms: f64,
    /// Writing them to the page server (the tunnel).
    pub memwrite_ms: f64,
    pub pages_scanned: u64,
    pub pages_written: u64,
}

/// The destination's own account of the restore (its clock), in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreTimes {
    /// `Restore` received → `Restored` sent, on the destination.
    pub destination_ms: f64,
    /// Waiting for the page server to finish writing and exit.
    pub page_server_ms: f64,
    /// `runc restore`, wall time.
    pub runc_restore_ms: f64,
    pub criu_forking_ms: f64,
    pub criu_restore_ms: f64,
    pub pages_restored: u64,
    /// The restore part as the source saw it, less the destination's own time: the wire and
    /// both sides' scheduling.
    pub round_trip_ms: f64,
    /// Staging the gated network, done before the freeze (not in the window).
    pub network_staged_before_freeze_ms: f64,
    /// Warming the memory the incoming pages land in, done before the freeze (not in the
    /// window; see `hostmem`), and how many bytes.
    #[serde(default)]
    pub memory_warmed_before_freeze_ms: f64,
    #[serde(default)]
    pub memory_warmed_bytes: u64,
}

/// Where the frozen window went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Downtime {
    /// CRIU's `pre-dump` → `Committed` received.
    pub total_ms: f64,
    /// Measured, non-overlapping parts, in order.
    pub parts: Vec<DowntimePart>,
    /// `total_ms` less the parts: hand-offs between them.
    pub unaccounted_ms: f64,
    pub criu_dump: Option<CriuDumpTimes>,
    pub restore: Option<RestoreTimes>,
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64 / 100.0).round() / 10.0
}

pub fn us_to_ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

impl Downtime {
    /// The window `start..end` cut into `spans`. A span is clipped to the window (a step that
    /// began before the freeze counts only from the freeze on), and to the end of the span
    /// before it, so the parts never overlap and never add up to more than the window.
    pub fn from_spans(start: Instant, end: Instant, spans: &[Span]) -> Downtime {
        let mut parts = Vec::new();
        let mut floor = start;
        let mut sum = Duration::ZERO;
        for s in spans {
            let from = s.from.max(floor).min(end);
            let to = s.to.max(from).min(end);
            let d = to - from;
            floor = to;
            sum += d;
            parts.push(DowntimePart {
                part: s.part,
                ms: ms(d),
                bytes: s.bytes,
            });
        }
        let total = end.saturating_duration_since(start);
        Downtime {
            total_ms: ms(total),
            parts,
            unaccounted_ms: ms(total.saturating_sub(sum)),
            criu_dump: None,
            restore: None,
        }
    }

    /// The milliseconds of `part`, if it was measured.
    pub fn part_ms(&self, part: Part) -> Option<f64> {
        self.parts.iter().find(|p| p.part == part).map(|p| p.ms)
    }

    /// Adds the destination's own restore timings to the restore part.
    pub fn with_restore(mut self, r: &ferry_proto::RestoreStats) -> Downtime {
        let destination_ms = us_to_ms(r.total_us);
        let seen = self.part_ms(Part::Restore).unwrap_or(0.0);
        self.restore = Some(RestoreTimes {
            destination_ms,
            page_server_ms: us_to_ms(r.page_server_us),
            runc_restore_ms: us_to_ms(r.restore_us),
            criu_forking_ms: us_to_ms(r.forking_us),
            criu_restore_ms: us_to_ms(r.criu_restore_us),
            pages_restored: r.pages_restored,
            round_trip_ms: ((seen - destination_ms).max(0.0) * 10.0).round() / 10.0,
            network_staged_before_freeze_ms: us_to_ms(r.network_staging_us),
            memory_warmed_before_freeze_ms: us_to_ms(r.memory_warming_us),
            memory_warmed_bytes: r.memory_warmed_bytes,
        });
        self
    }

    pub fn with_criu_dump(mut self, s: &crate::criu::CriuDumpStats) -> Downtime {
        self.criu_dump = Some(CriuDumpTimes {
            freezing_ms: us_to_ms(s.freezing_time_us),
            frozen_ms: us_to_ms(s.frozen_time_us),
            memdump_ms: us_to_ms(s.memdump_time_us),
            memwrite_ms: us_to_ms(s.memwrite_time_us),
            pages_scanned: s.pages_scanned,
            pages_written: s.pages_written,
        });
        self
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
        self.emit(MigrationEvent::Bytes {
            phase,
            bytes,
            total: None,
        });
    }

    /// Bytes moved so far out of a known total.
    pub fn bytes_of(&self, phase: Phase, bytes: u64, total: u64) {
        self.emit(MigrationEvent::Bytes {
            phase,
            bytes,
            total: Some(total),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn span(part: Part, t0: Instant, from_ms: u64, to_ms: u64, bytes: u64) -> Span {
        Span {
            part,
            from: t0 + Duration::from_millis(from_ms),
            to: t0 + Duration::from_millis(to_ms),
            bytes,
        }
    }

    /// The phase names reports and `--json` carry: OCI layers and CRIU images say which they
    /// are, and a record written before the rename still reads.
    #[test]
    fn phase_names_in_json() {
        let name = |p: Phase| serde_json::to_value(p).unwrap();
        assert_eq!(name(Phase::Layers), "layers");
        assert_eq!(name(Phase::CriuImages), "criu-images");
        assert_eq!(name(Phase::FsPass1), "fs-pass1");
        let old: PhaseTime = serde_json::from_str(r#"{"phase":"image","ms":1,"bytes":2}"#).unwrap();
        assert_eq!(old.phase, Some(Phase::Layers));
        let old: PhaseTime =
            serde_json::from_str(r#"{"phase":"images","ms":1,"bytes":2}"#).unwrap();
        assert_eq!(old.phase, Some(Phase::CriuImages));
    }

    #[test]
    fn parts_and_unaccounted_add_up_to_the_window() {
        let t0 = Instant::now();
        let spans = [
            span(Part::Freeze, t0, 0, 80, 0),
            span(Part::Pages, t0, 80, 1_280, 300 << 20),
            span(Part::PostDump, t0, 1_280, 1_290, 0),
            // 5 ms between the steps: unaccounted.
            span(Part::Images, t0, 1_295, 1_320, 2 << 20),
            span(Part::Delta, t0, 1_320, 1_330, 4096),
            span(Part::Restore, t0, 1_332, 1_800, 0),
            span(Part::Commit, t0, 1_801, 1_850, 0),
        ];
        let d = Downtime::from_spans(t0, t0 + Duration::from_millis(1_852), &spans);
        assert_eq!(d.total_ms, 1_852.0);
        let parts: Vec<f64> = d.parts.iter().map(|p| p.ms).collect();
        assert_eq!(parts, [80.0, 1_200.0, 10.0, 25.0, 10.0, 468.0, 49.0]);
        assert_eq!(d.unaccounted_ms, 5.0 + 2.0 + 1.0 + 2.0);
        assert_eq!(parts.iter().sum::<f64>() + d.unaccounted_ms, d.total_ms);
        assert_eq!(d.parts[1].bytes, 300 << 20);
        assert_eq!(d.part_ms(Part::Restore), Some(468.0));
    }

    #[test]
    fn spans_are_clipped_to_the_window_and_never_overlap() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let spans = [
            // Began before the freeze: counts from the freeze on.
            span(Part::Freeze, t0 - Duration::from_millis(500), 0, 600, 0),
            // Overlaps the span before it: counts from its end.
            span(Part::Pages, t0, 50, 900, 0),
            // Runs past the end of the window.
            span(Part::Commit, t0, 950, 2_000, 0),
        ];
        let d = Downtime::from_spans(t0, t0 + Duration::from_millis(1_000), &spans);
        let parts: Vec<f64> = d.parts.iter().map(|p| p.ms).collect();
        assert_eq!(parts, [100.0, 800.0, 50.0]);
        assert_eq!(d.unaccounted_ms, 50.0);
        assert!(parts.iter().sum::<f64>() <= d.total_ms);
    }

    #[test]
    fn destination_and_criu_times_are_attached() {
        let t0 = Instant::now();
        let d = Downtime::from_spans(
            t0,
            t0 + Duration::from_millis(600),
            &[span(Part::Restore, t0, 100, 500, 0)],
        )
        .with_restore(&ferry_proto::RestoreStats {
            restore_us: 350_000,
            forking_us: 1_500,
            pages_restored: 10,
            lazy_remaining_bytes: 0,
            criu_restore_us: 320_250,
            page_server_us: 2_000,
            total_us: 380_000,
            network_staging_us: 40_000,
            memory_warming_us: 150_000,
            memory_warmed_bytes: 64 << 20,
        })
        .with_criu_dump(&crate::criu::CriuDumpStats {
            freezing_time_us: 1_234,
            frozen_time_us: 590_000,
            memdump_time_us: 200_000,
            memwrite_time_us: 150_000,
            pages_written: 9,
            pages_scanned: 11,
            ..Default::default()
        });
        let r = d.restore.unwrap();
        assert_eq!(r.destination_ms, 380.0);
        assert_eq!(r.round_trip_ms, 20.0);
        assert_eq!(r.criu_restore_ms, 320.3);
        assert_eq!(r.network_staged_before_freeze_ms, 40.0);
        assert_eq!(r.memory_warmed_before_freeze_ms, 150.0);
        assert_eq!(r.memory_warmed_bytes, 64 << 20);
        let c = d.criu_dump.unwrap();
        assert_eq!(c.freezing_ms, 1.2);
        assert_eq!(c.pages_written, 9);
    }
}
