//! One suite: every workload × repeat × method in one lab, and the machine's limit next to
//! each size, written as it goes to `suite-<stamp>.jsonl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_core::tool::Tool;
use ferry_lab::{Lab, LabConfig};

use crate::ctx::{longest_tick_gap_ms, Ctx, DESTINATION, SOURCE};
use crate::limits;
use crate::method::ferry::{post_copy_available, Ferry};
use crate::method::podman::{self, Podman};
use crate::method::Method;
use crate::record::{Journal, Limit, Record, Run, Workload};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Options {
    pub sizes: Vec<u64>,
    pub repeats: u32,
    pub methods: Vec<String>,
    pub counter: bool,
    pub out: PathBuf,
    pub fabric_mib: u64,
    pub lab_dir: PathBuf,
    pub prefix: String,
    pub criu: String,
    /// How long the writer keeps going before and after the move.
    pub settle_ms: u64,
    pub keep_work: bool,
}

/// Scratch directory, removed when the suite ends (after Podman's storage is gone).
struct Work(PathBuf, bool);

impl Drop for Work {
    fn drop(&mut self) {
        if !self.1 {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                eprintln!("ferry-bench cleanup: removing {}: {e}", self.0.display());
            }
        }
    }
}

fn say(msg: &str) {
    eprintln!("[suite {}] {msg}", chrono::Local::now().format("%H:%M:%S"));
}

/// Runs the suite; the path of its `.jsonl`.
pub fn run(opts: &Options) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let jsonl = opts.out.join(format!("suite-{stamp}.jsonl"));
    let mut journal = Journal::create(&jsonl)?;
    journal.push(Record::Machine(crate::machine::describe(
        &opts.criu,
        serde_json::to_value(opts)?,
    )))?;

    // Lower case: Podman names an image pulled from an OCI layout after its path.
    let work = Work(
        PathBuf::from(format!("/var/tmp/ferry-bench-{}", stamp.to_lowercase())),
        opts.keep_work,
    );
    std::fs::create_dir_all(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
    let lab_bin = ferry_lab::find_binary("ferry-lab", "FERRY_LAB")?;
    let redis = work.0.join("redis-oci");
    let busybox = work.0.join("busybox-oci");
    for (kind, dir) in [("redis", &redis), ("busybox", &busybox)] {
        Tool::new(&lab_bin).args(["mkimage", kind]).arg(dir).run()?;
    }

    say("bringing the lab up (2 hosts)");
    let mut cfg = LabConfig::new(&opts.lab_dir, 2);
    cfg.prefix = opts.prefix.clone();
    let lab = Lab::up_with(cfg)?;
    let ctx = Ctx {
        lab,
        lab_bin,
        work: work.0.clone(),
    };
    // The image is on both hosts, for every method: Podman's restore needs it there, and a
    // ferry migration then sends no layers.
    for host in [SOURCE, DESTINATION] {
        for dir in [&redis, &busybox] {
            ctx.ferry(host, &["image", "import", &dir.display().to_string()])?;
        }
    }

    let mut methods: Vec<Box<dyn Method>> = Vec::new();
    let modes = post_copy_available();
    for m in &opts.methods {
        match m.as_str() {
            "ferry" => methods.push(Box::new(Ferry::stop_and_copy(modes.is_ok()))),
            "ferry-postcopy" => match modes.clone() {
                Ok(()) => methods.push(Box::new(Ferry::post_copy())),
                Err(reason) => {
                    say(&format!("ferry-postcopy: {reason}"));
                    journal.push(Record::Unavailable {
                        method: m.clone(),
                        reason,
                    })?;
                }
            },
            "podman" => match podman::available() {
                Ok(_) => methods.push(Box::new(Podman::new(&ctx, &redis, &busybox, &opts.criu)?)),
                Err(e) => journal.push(Record::Unavailable {
                    method: m.clone(),
                    reason: format!("{e:#}"),
                })?,
            },
            other => anyhow::bail!("unknown method {other:?}: ferry, ferry-postcopy or podman"),
        }
    }

    let mut plan: Vec<(Workload, u64)> = Vec::new();
    if opts.counter {
        plan.push((Workload::Counter, 0));
    }
    plan.extend(opts.sizes.iter().map(|&s| (Workload::Redis, s)));
    let mut seq = 0u32;
    for &(workload, size) in &plan {
        for rep in 1..=opts.repeats {
            let mut rss = Vec::new();
            // A different method goes first in every repeat: no method always meets the
            // machine right after the same neighbour.
            let n = methods.len();
            for i in 0..n {
                seq += 1;
                let m = methods[(i + rep as usize - 1) % n].as_mut();
                say(&format!(
                    "{} rep {rep}/{}: {}",
                    label(workload, size),
                    opts.repeats,
                    m.name()
                ));
                let run = one_run(&ctx, m, workload, size, rep, seq, opts.settle_ms);
                say(&summary(&run));
                rss.extend(run.rss_bytes);
                journal.push(Record::Run(run))?;
            }
            seq += 1;
            match measure_limit(&ctx, opts, size, rep, median_u64(&rss), seq) {
                Ok(l) => {
                    say(&format!(
                        "limit: fresh write {:.0} ms, fabric {:.0} MB/s, empty checkpoint {:.0} + restore {:.0} ms, floor {:.0} ms",
                        l.fresh_write_ms,
                        l.fabric_bytes_per_s / 1e6,
                        l.empty_checkpoint_ms,
                        l.empty_restore_ms,
                        l.floor_ms
                    ));
                    journal.push(Record::Limit(l))?;
                }
                Err(e) => say(&format!("limit not measured: {e:#}")),
            }
        }
    }
    drop(methods); // Podman's storage and netns go before the lab
    for w in ctx.lab.down() {
        say(&format!("lab teardown: {w}"));
    }
    drop(work);
    Ok(jsonl)
}

fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

pub fn label(w: Workload, size: u64) -> String {
    match w {
        Workload::Counter => "counter".into(),
        Workload::Redis => format!("Redis {}", crate::report::size_label(size)),
    }
}

fn summary(r: &Run) -> String {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    format!(
        "  {}: gap {} ms ({}), downtime {} ms, total {} ms, wire {:.1} MiB, cpu {:.2}/{:.2} s, resets {}, lost {}{}",
        if r.ok { "ok" } else { "FAILED" },
        f(r.gap_ms),
        r.gap_source,
        f(r.downtime_ms),
        f(r.total_ms),
        r.wire_bytes.values().sum::<u64>() as f64 / 1048576.0,
        r.cpu_s.source,
        r.cpu_s.destination,
        r.resets,
        r.lost_writes.map_or("?".into(), |l| l.to_string()),
        r.error.as_ref().map_or(String::new(), |e| format!(" — {e}"))
    )
}

fn one_run(
    ctx: &Ctx,
    m: &mut dyn Method,
    workload: Workload,
    size: u64,
    repeat: u32,
    seq: u32,
    settle_ms: u64,
) -> Run {
    let name = match workload {
        Workload::Counter => format!("counter-{seq}"),
        Workload::Redis => format!("redis-{size}-{seq}"),
    };
    let mut run = Run {
        workload,
        size_mib: size,
        method: m.name().to_owned(),
        repeat,
        ok: false,
        error: None,
        rss_bytes: None,
        gap_ms: None,
        gap_source: match workload {
            Workload::Counter => "ticks".into(),
            Workload::Redis => "client".into(),
        },
        downtime_ms: None,
        total_ms: None,
        wire_bytes: Default::default(),
        cpu_s: Default::default(),
        resets: 0,
        lost_writes: None,
        writes_verified: None,
        details: serde_json::json!({}),
    };
    if let Err(e) = move_once(ctx, m, &name, size, settle_ms, &mut run) {
        run.ok = false;
        run.error = Some(format!("{e:#}"));
    }
    let failures = m.cleanup(ctx, &name);
    if !failures.is_empty() {
        run.details["cleanup_failures"] = serde_json::json!(failures);
    }
    run
}

fn move_once(
    ctx: &Ctx,
    m: &mut dyn Method,
    name: &str,
    size: u64,
    settle_ms: u64,
    run: &mut Run,
) -> Result<()> {
    let settle = Duration::from_millis(settle_ms);
    m.start(ctx, run.workload, name)?;
    let moved = match run.workload {
        Workload::Redis => {
            let ip = m.redis_ip();
            ctx.wait_redis(ip)?;
            run.rss_bytes = Some(ctx.populate(ip, size)?);
            let load = ctx.start_load(ip)?;
            std::thread::sleep(settle);
            let moved = m.migrate(ctx, name);
            std::thread::sleep(settle);
            // The writer stops and reports also when the move failed.
            let seen = load.stop()?;
            run.gap_ms = seen.gap_ms;
            run.resets = seen.resets;
            run.lost_writes = seen.lost;
            run.writes_verified = Some(seen.verified);
            if !seen.errors.is_empty() {
                run.details["client_errors"] = serde_json::json!(seen.errors);
            }
            moved?
        }
        Workload::Counter => {
            std::thread::sleep(settle.max(Duration::from_millis(1500)));
            let moved = m.migrate(ctx, name)?;
            std::thread::sleep(settle.max(Duration::from_millis(1500)));
            if moved.ok {
                run.gap_ms = longest_tick_gap_ms(&m.tick_log(ctx, name)?);
            }
            moved
        }
    };
    run.ok = moved.ok;
    run.error = moved.error;
    run.downtime_ms = moved.downtime_ms;
    run.total_ms = moved.total_ms;
    run.wire_bytes = moved.wire_bytes;
    run.cpu_s = moved.cpu;
    let mut details = moved.details;
    if let (Some(d), Some(extra)) = (details.as_object_mut(), run.details.as_object()) {
        d.extend(extra.clone());
    }
    run.details = details;
    Ok(())
}

fn measure_limit(
    ctx: &Ctx,
    opts: &Options,
    size: u64,
    repeat: u32,
    rss: u64,
    seq: u32,
) -> Result<Limit> {
    let fresh_write_ms = if rss > 0 {
        limits::fresh_write_ms(rss)?
    } else {
        0.0
    };
    let fabric = limits::fabric(ctx, opts.fabric_mib << 20)?;
    let (cp, rs) = limits::empty_checkpoint_restore(ctx, &format!("idle-{seq}"))?;
    let mut l = Limit {
        size_mib: size,
        repeat,
        rss_bytes: rss,
        fresh_write_ms,
        fabric_bytes_per_s: fabric.bytes_per_s(),
        fabric_bytes: fabric.bytes,
        empty_checkpoint_ms: cp,
        empty_restore_ms: rs,
        floor_ms: 0.0,
    };
    l.compute_floor();
    Ok(l)
}

/// `suite-<stamp>.md` and `.png` next to a `.jsonl`.
pub fn siblings(jsonl: &Path) -> (PathBuf, PathBuf) {
    (jsonl.with_extension("md"), jsonl.with_extension("png"))
}
