//! Human output: tables and log rendering. `--json` bypasses all of this.

use ferry_core::api::ImageSummary;
use ferry_core::runtime::shim::log::LogStream;

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// One compact JSON value on one line (log entries, error objects).
pub fn print_json_line(v: &serde_json::Value) {
    outln!("{v}");
}

/// Columns sized to their widest cell, three spaces apart (Docker's tabwriter look).
pub struct Table {
    rows: Vec<Vec<String>>,
    /// Lines printed after a row, outside the columns (a container's error).
    notes: Vec<(usize, String)>,
}

impl Table {
    pub fn new(header: Vec<String>) -> Self {
        Table {
            rows: vec![header],
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A line printed below the last row added.
    pub fn note(&mut self, line: String) {
        self.notes.push((self.rows.len() - 1, line));
    }

    pub fn print(&self) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (n, r) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < r.len() {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            outln!("{line}");
            for (_, note) in self.notes.iter().filter(|(at, _)| *at == n) {
                outln!("{note}");
            }
        }
    }
}

/// `ferry info` for people: one fact a line.
pub fn info(i: &ferry_core::api::Info) {
    outln!("Host:           {}", i.host);
    outln!("Version:        ferry {}", i.version);
    outln!("Root:           {}", i.root);
    outln!("Runtime:        {}", i.runc_version);
    outln!("Network:        bridge {} ({})", i.bridge, i.subnet);
    outln!(
        "Peer listen:    {}",
        i.peer_listen
            .as_deref()
            .unwrap_or("off (no live migration to or from this host)")
    );
    outln!("Containers:     {}", i.containers);
    outln!("Images:         {}", i.images);
    let criu = &i.criu;
    if let Some(e) = criu.get("error").and_then(|e| e.as_str()) {
        outln!("CRIU:           unusable: {e}");
        return;
    }
    let v = &criu["version"];
    outln!(
        "CRIU:           {}.{}.{} ({})",
        v["major"],
        v["minor"],
        v["sublevel"],
        criu["check_message"].as_str().unwrap_or("not checked")
    );
    if let Some(features) = criu.get("features").and_then(|f| f.as_object()) {
        let (have, lack): (Vec<_>, Vec<_>) = features
            .iter()
            .partition(|(_, v)| v.as_bool() == Some(true));
        let names = |l: &[(&String, &serde_json::Value)]| {
            l.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        outln!("CRIU features:  {}", names(&have));
        if !lack.is_empty() {
            outln!("CRIU lacks:     {}", names(&lack));
            if let Some(reasons) = criu.get("reasons").and_then(|r| r.as_object()) {
                for (k, why) in reasons {
                    outln!("  {k}: {}", why.as_str().unwrap_or_default());
                }
            }
        }
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
    outln!(
        "{:<14} {:<32} {:>7} {:>10}",
        "ID",
        "NAMES",
        "LAYERS",
        "SIZE"
    );
    for i in list {
        let names = if i.names.is_empty() {
            "<none>".to_owned()
        } else {
            i.names.join(",")
        };
        outln!(
            "{:<14} {:<32} {:>7} {:>10}",
            short(&i.id),
            names,
            i.layers,
            human_bytes(i.size)
        );
    }
}

/// The shim's log lines are "TIME STREAM F|P TEXT"; users see TEXT (and, with timestamps,
/// the time and stream), on the stream it came from. A `P` piece continues on the next entry,
/// so it gets no newline. A line that is not an entry (a damaged log) goes to stdout as it is.
pub fn render_log_line(line: &[u8], timestamps: bool) -> (LogStream, Vec<u8>) {
    use ferry_core::runtime::shim::log::parse_entry;
    let Ok(entry) = parse_entry(line) else {
        return (LogStream::Stdout, line.to_vec());
    };
    let mut out = Vec::with_capacity(entry.text.len() + 48);
    if timestamps {
        out.extend_from_slice(
            format!(
                "{} {} ",
                entry
                    .time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                entry.stream.as_str()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(entry.text.as_bytes());
    if entry.complete {
        out.push(b'\n');
    }
    (entry.stream, out)
}

pub fn checkpoints_table(list: &[ferry_core::api::SnapshotInfo]) {
    let mut t = Table::new(
        ["CONTAINER", "CHECKPOINT", "CREATED", "SIZE"]
            .map(str::to_owned)
            .to_vec(),
    );
    for s in list {
        t.row(vec![
            s.container.clone(),
            s.snapshot.clone(),
            s.created.clone(),
            human_bytes(s.bytes),
        ]);
    }
    t.print();
}

fn ms_us(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

pub fn checkpoint_stats(r: &ferry_core::api::CheckpointReport) {
    let s = &r.stats;
    outln!("  freezing time     {}", ms_us(s.freezing_time_us));
    outln!("  frozen time       {}", ms_us(s.frozen_time_us));
    outln!("  memory dump time  {}", ms_us(s.memdump_time_us));
    outln!("  memory write time {}", ms_us(s.memwrite_time_us));
    outln!("  pages scanned     {}", s.pages_scanned);
    outln!("  pages written     {}", s.pages_written);
    outln!("  CRIU image size   {}", human_bytes(r.criu_image_bytes));
    outln!("  checkpoint size   {}", human_bytes(r.total_bytes));
    outln!("  runc checkpoint   {} ms", r.checkpoint_ms);
    outln!("  rootfs + volumes  {} ms", r.files_ms);
    outln!("  total             {} ms", r.total_ms);
    outln!(
        "  established TCP   {}",
        if r.established_tcp { "yes" } else { "no" }
    );
}

pub fn restore_stats(r: &ferry_core::api::RestoreReport) {
    if let Some(s) = &r.stats {
        outln!("  forking time      {}", ms_us(s.forking_time_us));
        outln!("  restore time      {}", ms_us(s.restore_time_us));
        if let Some(p) = s.pages_restored {
            outln!("  pages restored    {p}");
        }
        outln!("  pages compared    {}", s.pages_compared);
    }
    outln!("  runc restore      {} ms", r.restore_ms);
    outln!("  total             {} ms", r.total_ms);
}

pub fn migrations_table(list: &[ferry_core::migration::record::MigrationRecord]) {
    outln!(
        "{:<16} {:<12} {:<12} {:<20} {:<12} UPDATED",
        "ID",
        "ROLE",
        "STAGE",
        "CONTAINER",
        "PEER"
    );
    for r in list {
        let role = match r.role {
            ferry_core::migration::record::Role::Source => "source",
            ferry_core::migration::record::Role::Destination => "destination",
        };
        outln!(
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
        let line = |l: &[u8]| {
            let (s, b) = render_log_line(l, false);
            (s, String::from_utf8(b).unwrap())
        };
        assert_eq!(
            line(b"2026-01-01T00:00:00Z stdout F hello world\n"),
            (LogStream::Stdout, "hello world\n".into())
        );
        assert_eq!(
            line(b"2026-01-01T00:00:00Z stderr P part\n"),
            (LogStream::Stderr, "part".into())
        );
        assert_eq!(line(b"raw\n"), (LogStream::Stdout, "raw\n".into()));
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
