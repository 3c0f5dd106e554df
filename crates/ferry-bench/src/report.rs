//! The markdown report: per workload × method the median and range of every measure, the
//! machine's limit next to it, and issue 7's targets for ferry's stop-and-copy.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::record::{Limit, Record, Run, Workload};

pub fn size_label(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

/// Median, min, max.
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

fn cell(v: &[f64], scale: f64, digits: usize) -> String {
    match stats(v) {
        None => "–".into(),
        Some((m, lo, hi)) if v.len() == 1 || lo == hi => format!("{:.*}", digits, m * scale),
        Some((m, lo, hi)) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits,
            m * scale,
            digits,
            lo * scale,
            digits,
            hi * scale
        ),
    }
}

fn label(r: &Run) -> String {
    crate::suite::label(r.workload, r.size_mib)
}

const METHOD_ORDER: [&str; 3] = ["ferry", "ferry-postcopy", "podman"];

fn method_rank(m: &str) -> usize {
    METHOD_ORDER
        .iter()
        .position(|x| *x == m)
        .unwrap_or(METHOD_ORDER.len())
}

/// A workload at one size.
pub type Case = (Workload, u64);
/// A method, ranked for display.
type RankedMethod = (usize, String);

/// Runs grouped by (workload, size) and method, in a stable order.
pub fn groups(runs: &[&Run]) -> Vec<(Case, String, Vec<Run>)> {
    let mut g: BTreeMap<(Case, RankedMethod), Vec<Run>> = BTreeMap::new();
    for r in runs {
        g.entry((
            (r.workload, r.size_mib),
            (method_rank(&r.method), r.method.clone()),
        ))
        .or_default()
        .push((*r).clone());
    }
    g.into_iter().map(|((k, (_, m)), v)| (k, m, v)).collect()
}

pub fn floors(limits: &[&Limit]) -> BTreeMap<u64, Vec<f64>> {
    let mut f: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for l in limits {
        f.entry(l.size_mib).or_default().push(l.floor_ms);
    }
    f
}

pub fn markdown(records: &[Record], jsonl: &Path, plot_error: Option<&anyhow::Error>) -> String {
    let mut o = String::new();
    let runs: Vec<&Run> = crate::record::runs(records);
    let limits: Vec<&Limit> = crate::record::limits(records);
    let stem = jsonl
        .file_stem()
        .map_or("suite".into(), |s| s.to_string_lossy().into_owned());
    let _ = writeln!(o, "# Benchmark suite `{stem}`\n");
    for r in records {
        if let Record::Machine(m) = r {
            let _ = writeln!(
                o,
                "Machine: {} cores ({}), {} GiB, kernel {}; {}; {}; {}. ferry {} ({} build). Started {}.\n",
                m.cores, m.cpu_model, m.memory_gib, m.kernel, m.criu, m.runc, m.podman,
                m.ferry_commit, m.profile, m.started
            );
            let opt = &m.options;
            let _ = writeln!(
                o,
                "Options: sizes {} MiB, {} repeats, methods {}, counter {}, fabric sample {} MiB.\n",
                opt["sizes"], opt["repeats"], opt["methods"], opt["counter"], opt["fabric_mib"]
            );
        }
    }
    let _ = writeln!(o, "Median (min–max) over the runs of each row. Raw data: `{stem}.jsonl`; plot: `{stem}.png`.\n");
    let _ = writeln!(
        o,
        "| workload | method | ok/runs | gap ms | downtime ms | total ms | wire MiB | wire by category (MiB, median) | CPU s source | CPU s destination | resets | lost writes | writes verified |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let floor = floors(&limits);
    for ((w, _), method, rs) in groups(&runs) {
        let get =
            |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> { rs.iter().filter_map(f).collect() };
        let mut cats: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in &rs {
            for (k, v) in &r.wire_bytes {
                cats.entry(k.clone()).or_default().push(*v as f64);
            }
        }
        let by_cat: Vec<String> = cats
            .iter()
            .filter(|(_, v)| v.iter().any(|b| *b > 0.0))
            .map(|(k, v)| format!("{k} {:.1}", stats(v).map_or(0.0, |s| s.0) / 1048576.0))
            .collect();
        let verified = rs
            .iter()
            .filter(|r| r.writes_verified == Some(true))
            .count();
        let asked = rs.iter().filter(|r| r.writes_verified.is_some()).count();
        let lost: Option<u64> = rs.iter().map(|r| r.lost_writes).sum();
        let gap_kind = if w == Workload::Counter {
            " (ticks)"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "| {} | {method} | {}/{} | {}{gap_kind} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            label(&rs[0]),
            rs.iter().filter(|r| r.ok).count(),
            rs.len(),
            cell(&get(&|r| r.measured_gap().filter(|_| r.ok)), 1.0, 0),
            cell(&get(&|r| r.downtime_ms.filter(|_| r.ok)), 1.0, 0),
            cell(&get(&|r| r.total_ms.filter(|_| r.ok)), 1.0, 0),
            cell(
                &get(&|r| r.ok.then(|| r.wire_bytes.values().sum::<u64>() as f64)),
                1.0 / 1048576.0,
                1
            ),
            if by_cat.is_empty() {
                "–".into()
            } else {
                by_cat.join(", ")
            },
            cell(&get(&|r| r.ok.then_some(r.cpu_s.source)), 1.0, 2),
            cell(&get(&|r| r.ok.then_some(r.cpu_s.destination)), 1.0, 2),
            rs.iter().map(|r| r.resets).sum::<u32>(),
            match (w, lost) {
                (Workload::Counter, _) => "–".into(),
                (_, Some(l)) => l.to_string(),
                (_, None) => "?".into(),
            },
            if asked == 0 {
                "–".into()
            } else {
                format!("{verified}/{asked}")
            },
        );
    }
    let _ = writeln!(
        o,
        "\n- gap: Redis: the writer's longest wait for an acknowledgement (one connection, SET + INCR every 2 ms); counter: the longest interval between two ticks in its log (one every 0.1 s). A run whose client connection broke has no gap (–): its client saw a reset, not a pause, and it counts under resets.\n\
         - downtime: ferry: freeze → running on the destination (its report); Podman: `checkpoint` started → `restore` returned and the address announced (its whole flow; the container is stopped for all of it).\n\
         - wire: bytes between the hosts (ferry: its report's categories; Podman: the archive, zstd as by default, copied over raw TCP, which is cheaper than the `scp` a user would run).\n\
         - CPU: per side, the daemon (ferryd) or CLI (podman) with the runc and CRIU they ran, plus the containers' cgroup (CRIU's parasite and restorer run in the container's tasks) and, for Podman, the copy.\n\
         - resets: client connections that broke; lost writes: acknowledged writes missing afterwards (counted over a new connection when the old one broke)."
    );

    if !limits.is_empty() {
        let _ = writeln!(o, "\n## The machine's limit (measured between the moves)\n");
        let _ = writeln!(
            o,
            "| size | RSS MiB | fresh-memory write of the RSS ms | fresh write GB/s | fabric MB/s (raw TCP) | empty checkpoint ms | empty restore ms | floor ms |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        let mut by: BTreeMap<u64, Vec<&Limit>> = BTreeMap::new();
        for l in &limits {
            by.entry(l.size_mib).or_default().push(l);
        }
        for (size, ls) in &by {
            let v = |f: &dyn Fn(&Limit) -> f64| -> Vec<f64> { ls.iter().map(|l| f(l)).collect() };
            let gbps: Vec<f64> = ls
                .iter()
                .filter(|l| l.fresh_write_ms > 0.0)
                .map(|l| l.rss_bytes as f64 / l.fresh_write_ms / 1e6)
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                if *size == 0 {
                    "counter".into()
                } else {
                    size_label(*size)
                },
                cell(&v(&|l| l.rss_bytes as f64), 1.0 / 1048576.0, 0),
                cell(&v(&|l| l.fresh_write_ms), 1.0, 0),
                cell(&gbps, 1.0, 2),
                cell(&v(&|l| l.fabric_bytes_per_s), 1e-6, 0),
                cell(&v(&|l| l.empty_checkpoint_ms), 1.0, 0),
                cell(&v(&|l| l.empty_restore_ms), 1.0, 0),
                cell(&v(&|l| l.floor_ms), 1.0, 0),
            );
        }
        let _ = writeln!(
            o,
            "\nfloor = empty checkpoint + empty restore + RSS over the fabric + RSS into fresh memory: a stop-and-copy that moves the memory once and writes it once cannot be faster on this machine."
        );
    }

    // Issue 7's targets, for ferry's stop-and-copy.
    let ferry: Vec<&Run> = runs
        .iter()
        .copied()
        .filter(|r| r.method == "ferry" && r.workload == Workload::Redis)
        .collect();
    if !ferry.is_empty() {
        let _ = writeln!(o, "\n## Targets (issue 7) for ferry stop-and-copy\n");
        let _ = writeln!(o, "| size | gap median ms | gap target | ≤ 1.5 × floor | 0 resets | wire ≤ 1.05 × (RSS + fs) |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        let mut by: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
        for r in &ferry {
            by.entry(r.size_mib).or_default().push(r);
        }
        for (size, rs) in by {
            let gaps: Vec<f64> = rs
                .iter()
                .filter(|r| r.ok)
                .filter_map(|r| r.measured_gap())
                .collect();
            let gap = stats(&gaps).map(|s| s.0);
            let target = match size {
                256 => Some(500.0),
                1024 => Some(2000.0),
                _ => None,
            };
            let yes = |b: bool| if b { "yes" } else { "**no**" };
            let fl = floor.get(&size).and_then(|f| stats(f)).map(|s| s.0);
            let ratio: Vec<f64> = rs
                .iter()
                .filter(|r| r.ok)
                .filter_map(|r| {
                    let rss = r.rss_bytes? as f64;
                    let fs = *r.wire_bytes.get("fs").unwrap_or(&0) as f64;
                    Some(r.wire_bytes.values().sum::<u64>() as f64 / (rss + fs))
                })
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                size_label(size),
                gap.map_or("–".into(), |g| format!("{g:.0}")),
                match (target, gap) {
                    (Some(t), Some(g)) => format!("≤ {t:.0}: {}", yes(g <= t)),
                    _ => "–".into(),
                },
                match (fl, gap) {
                    (Some(f), Some(g)) => format!("{:.2}×: {}", g / f, yes(g <= 1.5 * f)),
                    _ => "–".into(),
                },
                yes(rs.iter().all(|r| r.resets == 0)),
                stats(&ratio).map_or("–".into(), |s| format!(
                    "{:.3}: {}",
                    s.2,
                    yes(s.2 <= 1.05)
                )),
            );
        }
    }

    let mut notes = Vec::new();
    for r in records {
        if let Record::Unavailable { method, reason } = r {
            notes.push(format!("- **{method}** did not run: {reason}"));
        }
    }
    for r in &runs {
        if let Some(e) = &r.error {
            notes.push(format!(
                "- {} {} repeat {} failed: {}",
                label(r),
                r.method,
                r.repeat,
                e.replace('\n', " ")
            ));
        }
        if let Some(errs) = r.details.get("client_errors") {
            notes.push(format!(
                "- {} {} repeat {}: client connection broke: {errs}",
                label(r),
                r.method,
                r.repeat
            ));
        }
        if let Some(c) = r.details.get("cleanup_failures") {
            notes.push(format!(
                "- {} {} repeat {}: cleanup failed: {c}",
                label(r),
                r.method,
                r.repeat
            ));
        }
    }
    if let Some(e) = plot_error {
        notes.push(format!("- the plot could not be drawn: {e:#}"));
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "\n## Not run, failures and broken connections\n");
        for n in notes {
            let _ = writeln!(o, "{n}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[]), None);
        assert_eq!(cell(&[1500.0, 1000.0, 2000.0], 1.0, 0), "1500 (1000–2000)");
        assert_eq!(cell(&[5.0], 1.0, 1), "5.0");
        assert_eq!(size_label(4096), "4 GiB");
        assert_eq!(size_label(256), "256 MiB");
    }

    #[test]
    fn floor_is_the_sum_of_the_parts() {
        let mut l = Limit {
            size_mib: 256,
            repeat: 1,
            rss_bytes: 1_000_000_000,
            fresh_write_ms: 400.0,
            fabric_bytes_per_s: 2e9,
            fabric_bytes: 1 << 30,
            empty_checkpoint_ms: 80.0,
            empty_restore_ms: 150.0,
            floor_ms: 0.0,
        };
        l.compute_floor();
        assert!((l.floor_ms - 1130.0).abs() < 1e-6, "{}", l.floor_ms);
    }
}
