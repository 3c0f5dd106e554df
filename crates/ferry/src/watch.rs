//! `ferry events` (container and migration events as they happen) and `ferry stats` (CPU,
//! memory, network and tasks per running container).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use ferry_core::api::Event;
use ferry_core::container::ContainerStats;
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::{self, Client};
use crate::enc;
use crate::output::{human_bytes, Table};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Only events of these containers (names).
    #[arg(short, long = "filter-name", value_name = "NAME")]
    pub name: Vec<String>,
}

/// Streams events until interrupted: one line each, or one JSON object a line with --json.
pub async fn events(c: &Client, a: EventsArgs, json: bool) -> Result<()> {
    let resp = c.send(Method::GET, "/v1/events", None).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(client::api_error(&bytes, status));
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let ev: Event = serde_json::from_slice(&line)?;
            if !a.name.is_empty() && !a.name.contains(&ev.name) {
                continue;
            }
            if json {
                outln!("{}", serde_json::to_string(&ev)?);
            } else {
                let detail = ev.detail.map(|d| format!(" ({d})")).unwrap_or_default();
                outln!(
                    "{} {} {} {} {}{detail}",
                    ev.time,
                    ev.kind,
                    ev.action,
                    ev.name,
                    ev.id
                );
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Containers (names, IDs or ID prefixes); all running ones when none is given.
    pub names: Vec<String>,
    /// Print one sample and exit, instead of one a second.
    #[arg(long)]
    pub no_stream: bool,
}

/// One container's usage between two samples.
#[derive(serde::Serialize)]
struct Usage {
    name: String,
    id: String,
    time: String,
    /// Percent of one CPU over the interval (200 = two CPUs busy).
    cpu_percent: Option<f64>,
    memory_bytes: Option<u64>,
    memory_limit: Option<u64>,
    net_rx_bytes: Option<u64>,
    net_tx_bytes: Option<u64>,
    pids: Option<u64>,
}

pub async fn stats(c: &Client, a: StatsArgs, json: bool) -> Result<()> {
    use std::io::IsTerminal;
    let path = if a.names.is_empty() {
        "/v1/stats".to_owned()
    } else {
        format!("/v1/stats?names={}", enc(&a.names.join(",")))
    };
    let tty = std::io::stdout().is_terminal();
    let mut last: BTreeMap<String, ContainerStats> = sample(c, &path).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sample(c, &path).await?;
        let rows: Vec<Usage> = now.values().map(|s| usage(last.get(&s.id), s)).collect();
        if json {
            for r in &rows {
                outln!("{}", serde_json::to_string(r)?);
            }
        } else {
            if tty && !a.no_stream {
                // Redraw in place, as `docker stats` does.
                crate::out::write_bytes(b"\x1b[2J\x1b[H");
            }
            table(&rows);
        }
        if a.no_stream {
            return Ok(());
        }
        last = now;
    }
}

async fn sample(c: &Client, path: &str) -> Result<BTreeMap<String, ContainerStats>> {
    let list: Vec<ContainerStats> = c.call(Method::GET, path, None::<()>).await?;
    Ok(list.into_iter().map(|s| (s.id.clone(), s)).collect())
}

fn usage(before: Option<&ContainerStats>, now: &ContainerStats) -> Usage {
    let t = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let cpu_percent = before.and_then(|b| {
        let wall = (t(&now.time)? - t(&b.time)?).num_nanoseconds()? as f64;
        let used = now.cpu_ns?.checked_sub(b.cpu_ns?)? as f64;
        (wall > 0.0).then(|| (used / wall * 1000.0).round() / 10.0)
    });
    Usage {
        name: now.name.clone(),
        id: now.id.clone(),
        time: now.time.clone(),
        cpu_percent,
        memory_bytes: now.memory_bytes,
        memory_limit: now.memory_limit,
        net_rx_bytes: now.net_rx_bytes,
        net_tx_bytes: now.net_tx_bytes,
        pids: now.pids,
    }
}

fn table(rows: &[Usage]) {
    let mut t = Table::new(
        [
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "PIDS",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), human_bytes);
    for r in rows {
        let mem_pct = match (r.memory_bytes, r.memory_limit) {
            (Some(u), Some(l)) if l > 0 => format!("{:.1}%", u as f64 * 100.0 / l as f64),
            _ => "-".to_owned(),
        };
        t.row(vec![
            r.name.clone(),
            r.cpu_percent
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
            format!(
                "{} / {}",
                bytes(r.memory_bytes),
                r.memory_limit
                    .map_or_else(|| "no limit".to_owned(), human_bytes)
            ),
            mem_pct,
            format!("{} / {}", bytes(r.net_rx_bytes), bytes(r.net_tx_bytes)),
            r.pids.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        ]);
    }
    t.print();
}
