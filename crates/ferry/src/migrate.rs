//! `ferry migrate`: follows the daemon's progress stream and ends with the stats table.

use anyhow::{bail, Result};
use ferry_core::migration::report::{Downtime, MigrationEvent, MigrationReport, Outcome, Part};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::json;

use crate::client::{api_error, Client};
use crate::output::human_bytes;

pub async fn run(c: &Client, name: &str, to: &str, mode: &str, json_out: bool) -> Result<()> {
    let resp = c
        .send(
            Method::POST,
            &format!("/v1/containers/{}/migrate", crate::enc(name)),
            Some(json!({ "container": name, "to": to, "mode": mode })),
        )
        .await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(api_error(&bytes, status));
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Option<MigrationEvent> = None;
    let mut phase_start = std::time::Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: MigrationEvent = serde_json::from_slice(&line)?;
            if json_out {
                // Progress goes to stderr so stdout holds only the final report.
                if !matches!(
                    ev,
                    MigrationEvent::Done { .. } | MigrationEvent::Failed { .. }
                ) {
                    eprintln!("{}", String::from_utf8_lossy(&line).trim_end());
                }
            } else {
                render(&ev, &mut phase_start);
            }
            last = Some(ev);
        }
    }
    match last {
        Some(MigrationEvent::Done { report }) => {
            if json_out {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                table(&report);
            }
            Ok(())
        }
        Some(MigrationEvent::Failed { error, report }) => {
            if json_out {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                table(&report);
            }
            let where_ = match report.outcome {
                Some(Outcome::RolledBack) => {
                    "rolled back: the container keeps running on the source"
                }
                Some(Outcome::Lost) => {
                    "lost: post-copy failed after the container resumed on the destination"
                }
                Some(Outcome::InDoubt) => {
                    "in doubt: the container stays frozen on the source until the verdict"
                }
                Some(Outcome::RollbackFailed) => {
                    "the container could not be verified running on the source"
                }
                _ => "the container was not touched and keeps running on the source",
            };
            if json_out {
                // stdout holds the report (with its error) as the one JSON document; the
                // summary goes to stderr, and the exit code says it failed.
                eprintln!("ferry: error: migration failed ({where_}): {error}");
                return Err(crate::error::Reported(1).into());
            }
            bail!("migration failed ({where_}): {error}")
        }
        _ => bail!(
            "ferryd ended the migration stream without a result; check `ferry ps` on both hosts"
        ),
    }
}

/// Live progress on stderr: on a terminal one line per phase, updated in place; otherwise only
/// finished phases, so logs stay readable.
fn render(ev: &MigrationEvent, phase_start: &mut std::time::Instant) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let clear = if tty { "\r\x1b[2K" } else { "" };
    match ev {
        MigrationEvent::PhaseStart { phase } => {
            *phase_start = std::time::Instant::now();
            if tty {
                eprint!("{clear}  {:<32}", phase.label());
            }
        }
        MigrationEvent::Bytes {
            phase,
            bytes,
            total,
        } => {
            if tty {
                let secs = phase_start.elapsed().as_secs_f64().max(0.001);
                let to_go = total
                    .map(|t| format!("  {} to go", human_bytes(t.saturating_sub(*bytes))))
                    .unwrap_or_default();
                eprint!(
                    "{clear}  {:<32}{:>10}  {:>10}/s{to_go}",
                    phase.label(),
                    human_bytes(*bytes),
                    human_bytes((*bytes as f64 / secs) as u64)
                );
            }
        }
        MigrationEvent::PhaseDone { phase, ms, bytes } => {
            let rate = if *ms > 0 && *bytes > 0 {
                format!("{}/s", human_bytes(bytes * 1000 / ms))
            } else {
                String::new()
            };
            let size = if *bytes > 0 {
                human_bytes(*bytes)
            } else {
                String::new()
            };
            eprintln!(
                "{clear}  {:<32}{ms:>7} ms {size:>10}  {rate:>12}",
                phase.label()
            );
        }
        MigrationEvent::Note { message } => eprintln!("{clear}  · {message}"),
        MigrationEvent::Done { .. } | MigrationEvent::Failed { .. } => {}
    }
    let _ = std::io::stderr().flush();
}

/// Where the frozen window went: its parts, each with what explains it.
fn window(w: &Downtime, to: &str) {
    outln!("  where the frozen window went:");
    let line = |label: &str, ms: f64, bytes: u64| {
        let (size, rate) = if bytes > 0 && ms > 0.0 {
            (
                human_bytes(bytes),
                format!("{}/s", human_bytes((bytes as f64 * 1000.0 / ms) as u64)),
            )
        } else {
            (String::new(), String::new())
        };
        outln!("    {label:<30}{ms:>9.1} ms{size:>12}{rate:>14}");
    };
    for p in &w.parts {
        let label = match p.part {
            Part::Restore => format!("restore on {to}"),
            other => other.label().to_owned(),
        };
        line(&label, p.ms, p.bytes);
        match (p.part, &w.criu_dump, &w.restore) {
            (Part::Pages, Some(c), _) => outln!(
                "      CRIU: freezing {:.1} ms, memdump {:.1} ms, memwrite {:.1} ms, \
                 {} of {} pages written, frozen {:.1} ms in all",
                c.freezing_ms,
                c.memdump_ms,
                c.memwrite_ms,
                c.pages_written,
                c.pages_scanned,
                c.frozen_ms
            ),
            (Part::Restore, _, Some(d)) => outln!(
                "      {to}: {:.1} ms: last page in {:.1}, runc restore {:.1} (CRIU forking {:.1}, \
                 restore {:.1}), {} pages; wire {:.1} ms; before the freeze: network staged \
                 ({:.1} ms), {} MiB of memory warmed ({:.1} ms)",
                d.destination_ms,
                d.page_server_ms,
                d.runc_restore_ms,
                d.criu_forking_ms,
                d.criu_restore_ms,
                d.pages_restored,
                d.round_trip_ms,
                d.network_staged_before_freeze_ms,
                d.memory_warmed_bytes >> 20,
                d.memory_warmed_before_freeze_ms
            ),
            _ => {}
        }
    }
    line("between the parts", w.unaccounted_ms, 0);
    line("total", w.total_ms, 0);
}

pub fn table(r: &MigrationReport) {
    outln!();
    outln!(
        "migration {} of {}: {} → {} ({})",
        r.migration_id,
        r.container,
        r.from,
        r.to,
        r.mode
    );
    outln!("  {:<32}{:>10}{:>14}", "phase", "time", "bytes");
    for p in &r.phases {
        let label = p.phase.map(|ph| ph.label()).unwrap_or("?");
        outln!(
            "  {:<32}{:>7} ms{:>14}",
            label,
            p.ms,
            if p.bytes > 0 {
                human_bytes(p.bytes)
            } else {
                "-".into()
            }
        );
    }
    let on_wire = if r.bytes.pages_on_wire > 0 && r.bytes.pages_on_wire < r.bytes.pages {
        format!(" ({} on the wire, LZ4)", human_bytes(r.bytes.pages_on_wire))
    } else {
        String::new()
    };
    outln!(
        "  bytes: layers {}, filesystem {}, memory pages {}{on_wire}, other CRIU images {}",
        human_bytes(r.bytes.layers),
        human_bytes(r.bytes.fs),
        human_bytes(r.bytes.pages),
        human_bytes(r.bytes.images)
    );
    let from = |o: &str| r.layer_origins.iter().filter(|l| l.from == o).count();
    outln!(
        "  image blobs: {} sent by {}, {} from the registry{}, {} already on {}",
        from("source"),
        r.from,
        from("registry"),
        r.image_registry
            .as_deref()
            .map(|g| format!(" ({g})"))
            .unwrap_or_default(),
        from("destination"),
        r.to
    );
    match r.downtime_ms {
        Some(d) => outln!("  downtime (freeze → running on {}): {d} ms", r.to),
        None => outln!("  downtime: -"),
    }
    if let Some(w) = &r.downtime_breakdown {
        window(w, &r.to);
    }
    if let Some(l) = &r.lazy {
        outln!(
            "  post-copy: {} pulled after the resume in {} ms ({:.0} MB/s); fully copied {} ms \
             after the freeze",
            human_bytes(l.bytes),
            l.drain_ms,
            l.pull_mb_s,
            l.fully_copied_ms
        );
        outln!(
            "  pages: {} in all, {} asked for by page faults, {} pushed in the background",
            l.pages,
            l.pages_on_demand,
            l.pages_pushed
        );
    }
    if let Some(ms) = r.source_cleanup_ms {
        outln!("  after the commit, the source let go of its copy in {ms} ms");
    }
    outln!("  total: {} ms", r.total_ms);
    let outcome = match r.outcome {
        Some(Outcome::Committed) => "committed: the container runs on the destination",
        Some(Outcome::RolledBack) => "rolled back: the container runs on the source",
        Some(Outcome::Refused) => "refused: nothing was moved",
        Some(Outcome::InDoubt) => {
            "in doubt: the container stays frozen on the source until the destination answers \
             (see `ferry migration ls` and `ferry migration resolve`)"
        }
        Some(Outcome::RollbackFailed) => {
            "rollback failed: the container could not be verified running on the source"
        }
        Some(Outcome::Lost) => {
            "lost: post-copy failed after the container resumed on the destination (see error)"
        }
        None => "unknown",
    };
    outln!("  outcome: {outcome}");
    if let Some(e) = &r.error {
        outln!("  error: {e}");
    }
    for f in &r.cleanup_failures {
        outln!("  cleanup failed: {f}");
    }
}
