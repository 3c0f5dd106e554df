//! Human output: tables and log rendering. `--json` bypasses all of this.

use ferry_core::api::ImageSummary;
use ferry_core::container::ContainerRecord;

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn record_or_name(json: bool, rec: &ContainerRecord) -> anyhow::Result<()> {
    if json {
        print_json(rec)
    } else {
        println!("{}", rec.config.name);
        Ok(())
    }
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn images_table(list: &[ImageSummary]) {
    println!(
        "{:<14} {:<32} {:>7} {:>10}",
        "ID", "NAMES", "LAYERS", "SIZE"
    );
    for i in list {
        let names = if i.names.is_empty() {
            "<none>".to_owned()
        } else {
            i.names.join(",")
        };
        println!(
            "{:<14} {:<32} {:>7} {:>10}",
            short(&i.id),
            names,
            i.layers,
            human_bytes(i.size)
        );
    }
}

pub fn containers_table(list: &[ContainerRecord]) {
    println!(
        "{:<14} {:<16} {:<20} {:<14} {:<8} {:<16} COMMAND",
        "ID", "NAME", "IMAGE", "STATUS", "PID", "IP"
    );
    for r in list {
        let status = match (&r.status, &r.exit) {
            (ferry_core::container::Status::Stopped, Some(e)) => match (e.code, e.signal) {
                (Some(c), _) => format!("exited({c})"),
                (_, Some(s)) => format!("killed({s})"),
                _ => "stopped".to_owned(),
            },
            (s, _) => s.to_string(),
        };
        let mut cmd = r.config.args.join(" ");
        if cmd.len() > 40 {
            cmd.truncate(37);
            cmd.push_str("...");
        }
        println!(
            "{:<14} {:<16} {:<20} {:<14} {:<8} {:<16} {}",
            short(&r.config.id),
            r.config.name,
            r.config.image_ref,
            status,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.config.ip,
            cmd
        );
        if let Some(e) = &r.error {
            println!("{:<14} error: {e}", "");
        }
    }
}

/// The shim's log lines are "TIME STREAM F|P TEXT"; users see TEXT (and, with timestamps,
/// the time and stream). A `P` piece continues on the next entry, so it gets no newline.
pub fn render_log_line(line: &[u8], timestamps: bool) -> Vec<u8> {
    use ferry_core::runtime::shim::log::parse_entry;
    let Ok(entry) = parse_entry(line) else {
        return line.to_vec();
    };
    let mut out = Vec::with_capacity(entry.text.len() + 48);
    if timestamps {
        out.extend_from_slice(
            format!("{} {} ", entry.time.to_rfc3339(), entry.stream.as_str()).as_bytes(),
        );
    }
    out.extend_from_slice(entry.text.as_bytes());
    if entry.complete {
        out.push(b'\n');
    }
    out
}

pub fn checkpoints_table(list: &[ferry_core::container::checkpoint::SnapshotInfo]) {
    println!(
        "{:<16} {:<26} {:<32} {:>10}",
        "CONTAINER", "CHECKPOINT", "CREATED", "SIZE"
    );
    for s in list {
        println!(
            "{:<16} {:<26} {:<32} {:>10}",
            s.container,
            s.snapshot,
            s.created,
            human_bytes(s.bytes)
        );
    }
}

fn ms_us(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

pub fn checkpoint_stats(r: &ferry_core::container::checkpoint::CheckpointReport) {
    let s = &r.stats;
    println!("  freezing time     {}", ms_us(s.freezing_time_us));
    println!("  frozen time       {}", ms_us(s.frozen_time_us));
    println!("  memory dump time  {}", ms_us(s.memdump_time_us));
    println!("  memory write time {}", ms_us(s.memwrite_time_us));
    println!("  pages scanned     {}", s.pages_scanned);
    println!("  pages written     {}", s.pages_written);
    println!("  CRIU image size   {}", human_bytes(r.criu_image_bytes));
    println!("  checkpoint size   {}", human_bytes(r.total_bytes));
    println!("  runc checkpoint   {} ms", r.checkpoint_ms);
    println!("  rootfs + volumes  {} ms", r.files_ms);
    println!("  total             {} ms", r.total_ms);
    println!(
        "  established TCP   {}",
        if r.established_tcp { "yes" } else { "no" }
    );
}

pub fn restore_stats(r: &ferry_core::container::checkpoint::RestoreReport) {
    if let Some(s) = &r.stats {
        println!("  forking time      {}", ms_us(s.forking_time_us));
        println!("  restore time      {}", ms_us(s.restore_time_us));
        if let Some(p) = s.pages_restored {
            println!("  pages restored    {p}");
        }
        println!("  pages compared    {}", s.pages_compared);
    }
    println!("  runc restore      {} ms", r.restore_ms);
    println!("  total             {} ms", r.total_ms);
}

pub fn migrations_table(list: &[ferry_core::migration::record::MigrationRecord]) {
    println!(
        "{:<16} {:<12} {:<12} {:<20} {:<12} UPDATED",
        "ID", "ROLE", "STAGE", "CONTAINER", "PEER"
    );
    for r in list {
        let role = match r.role {
            ferry_core::migration::record::Role::Source => "source",
            ferry_core::migration::record::Role::Destination => "destination",
        };
        println!(
            "{:<16} {:<12} {:<12} {:<20} {:<12} {}",
            r.migration_id,
            role,
            r.stage.to_string(),
            r.container,
            r.peer,
            r.updated_at
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines() {
        assert_eq!(
            render_log_line(b"2026-01-01T00:00:00Z stdout F hello world\n", false),
            b"hello world\n"
        );
        assert_eq!(
            render_log_line(b"2026-01-01T00:00:00Z stderr P part\n", false),
            b"part"
        );
        assert_eq!(render_log_line(b"raw\n", false), b"raw\n");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
