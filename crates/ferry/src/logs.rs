//! `ferry logs`: a container's output, with Docker's `--tail`, `--since`, `--until`,
//! `-t` and `-f`. ferryd does the filtering (query parameters of the logs route); this side
//! turns relative times into absolute ones and renders the entries: the text, or with
//! `--json` one object a line: `{"time": RFC3339, "stream": "stdout"|"stderr", "line": TEXT}`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use ferry_core::runtime::shim::log::{parse_entry, LogStream};
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::{self, Client};
use crate::enc;
use crate::error::CliError;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The container (name, ID or ID prefix).
    pub name: String,
    /// Keep printing new output until the container stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Prefix each line with its time and stream.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only the last N lines ("all" for every line).
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<String>,
    /// Only lines written at or after TIME: RFC3339 (2026-11-30T20:00:00Z), a date
    /// (2026-11-30), Unix seconds, or a duration ago (10m, 1h30m, 45s, 2d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only lines written at or before TIME (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

/// What to ask ferryd for and how to show it.
#[derive(Debug, Default)]
pub struct Options {
    pub follow: bool,
    pub timestamps: bool,
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub json: bool,
}

impl LogsArgs {
    pub fn options(&self, json: bool) -> Result<Options, CliError> {
        let now = Utc::now();
        let tail = match self.tail.as_deref() {
            None | Some("all") => None,
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                CliError::new(
                    "usage",
                    format!("--tail {n:?}: expected a number of lines or \"all\""),
                )
            })?),
        };
        Ok(Options {
            follow: self.follow,
            timestamps: self.timestamps,
            tail,
            since: self
                .since
                .as_deref()
                .map(|s| parse_time(s, now, "--since"))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|s| parse_time(s, now, "--until"))
                .transpose()?,
            json,
        })
    }
}

/// RFC3339, a date, Unix seconds, or a duration before `now`.
pub fn parse_time(s: &str, now: DateTime<Utc>, flag: &str) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            let ms = (secs * 1000.0) as i64;
            if let Some(t) = DateTime::from_timestamp_millis(ms) {
                return Ok(t);
            }
        }
    }
    if let Some(d) = parse_duration(s) {
        return Ok(now - d);
    }
    Err(CliError::new(
        "usage",
        format!("{flag} {s:?}: expected an RFC3339 time, a date (YYYY-MM-DD), Unix seconds or a duration like 10m, 1h30m, 45s"),
    ))
}

/// "1h30m", "10m", "45s", "2d", "500ms".
fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let d = match &rest[..unit_len] {
            "ms" => chrono::Duration::try_milliseconds(n)?,
            "s" => chrono::Duration::try_seconds(n)?,
            "m" => chrono::Duration::try_minutes(n)?,
            "h" => chrono::Duration::try_hours(n)?,
            "d" => chrono::Duration::try_days(n)?,
            _ => return None,
        };
        total = total.checked_add(&d)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Streams the log of `name` to stdout.
pub async fn print(c: &Client, name: &str, o: &Options) -> Result<()> {
    let mut q = format!("follow={}", o.follow);
    if let Some(t) = o.tail {
        q.push_str(&format!("&tail={t}"));
    }
    let time = |t: &DateTime<Utc>| enc(&t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    if let Some(t) = &o.since {
        q.push_str(&format!("&since={}", time(t)));
    }
    if let Some(t) = &o.until {
        q.push_str(&format!("&until={}", time(t)));
    }
    let resp = c
        .send(
            Method::GET,
            &format!("/v1/containers/{}/logs?{q}", enc(name)),
            None,
        )
        .await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(client::api_error(&bytes, status));
    }
    let mut render = Renderer::new(o.timestamps, o.json);
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        let mut out = Split::default();
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            out.push(render.line(&line));
        }
        out.write();
    }
    let mut out = Split::default();
    if !pending.is_empty() {
        out.push(render.line(&pending));
    }
    out.push((LogStream::Stdout, render.finish()));
    out.write();
    Ok(())
}

/// Output gathered per stream: the container's stdout to ours, its stderr to ours.
#[derive(Default)]
struct Split {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Split {
    fn push(&mut self, (stream, bytes): (LogStream, Vec<u8>)) {
        match stream {
            LogStream::Stdout => self.stdout.extend(bytes),
            LogStream::Stderr => self.stderr.extend(bytes),
        }
    }

    fn write(self) {
        if !self.stdout.is_empty() {
            crate::out::write_bytes(&self.stdout);
        }
        if !self.stderr.is_empty() {
            crate::out::write_err_bytes(&self.stderr);
        }
    }
}

/// Turns log entries into output. For `--json`, a line split into pieces (`P` entries) is
/// joined first, so each object holds one whole line.
struct Renderer {
    timestamps: bool,
    json: bool,
    /// Per stream: the pieces of a line not finished yet, and the time of its first piece.
    partial: [Option<(DateTime<Utc>, String)>; 2],
}

impl Renderer {
    fn new(timestamps: bool, json: bool) -> Self {
        Renderer {
            timestamps,
            json,
            partial: [None, None],
        }
    }

    /// The output for one log line, and the stream it goes to (JSON lines all go to stdout).
    fn line(&mut self, raw: &[u8]) -> (LogStream, Vec<u8>) {
        if !self.json {
            return crate::output::render_log_line(raw, self.timestamps);
        }
        (LogStream::Stdout, self.json_line(raw))
    }

    fn json_line(&mut self, raw: &[u8]) -> Vec<u8> {
        let Ok(e) = parse_entry(raw) else {
            // Not an entry (a damaged log): shown as it is, as a line of unknown origin.
            let text = String::from_utf8_lossy(raw)
                .trim_end_matches('\n')
                .to_owned();
            return json_line(None, None, &text);
        };
        let slot = &mut self.partial[stream_index(e.stream)];
        let (time, mut text) = slot.take().unwrap_or((e.time, String::new()));
        text.push_str(&e.text);
        if e.complete {
            json_line(Some(time), Some(e.stream), &text)
        } else {
            *slot = Some((time, text));
            Vec::new()
        }
    }

    /// Lines left unfinished at the end (the container's last output without a newline).
    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, stream) in [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .enumerate()
        {
            if let Some((time, text)) = self.partial[i].take() {
                out.extend(json_line(Some(time), Some(stream), &text));
            }
        }
        out
    }
}

fn stream_index(s: LogStream) -> usize {
    match s {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
    }
}

fn json_line(time: Option<DateTime<Utc>>, stream: Option<LogStream>, text: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "time": time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
        "stream": stream.map(LogStream::as_str),
        "line": text,
    });
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T21:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = |s| parse_time(s, now, "--since").unwrap().to_rfc3339();
        assert_eq!(t("10m"), "2026-11-30T20:50:00+00:00");
        assert_eq!(t("1h30m"), "2026-11-30T19:30:00+00:00");
        assert_eq!(t("2026-11-30T20:00:00Z"), "2026-11-30T20:00:00+00:00");
        assert_eq!(t("2026-11-29"), "2026-11-29T00:00:00+00:00");
        assert_eq!(t("0"), "1970-01-01T00:00:00+00:00");
        let e = parse_time("soon", now, "--until").unwrap_err();
        assert!(
            e.message.contains("--until") && e.message.contains("soon"),
            "{e}"
        );
        assert!(parse_time("10x", now, "--since").is_err());
        assert!(parse_time("m", now, "--since").is_err());
    }

    #[test]
    fn json_joins_pieces() {
        let mut r = Renderer::new(false, true);
        assert!(r
            .json_line(b"2026-01-01T00:00:00Z stderr P par\n")
            .is_empty());
        let (stream, out) = r.line(b"2026-01-01T00:00:01Z stdout F other\n");
        assert_eq!(stream, LogStream::Stdout, "JSON lines all go to stdout");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream"], "stdout");
        let (stream, out) = r.line(b"2026-01-01T00:00:02Z stderr F tial\n");
        assert_eq!(stream, LogStream::Stdout, "JSON lines all go to stdout");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["line"].as_str(), v["stream"].as_str()),
            (Some("partial"), Some("stderr"))
        );
        assert_eq!(v["time"], "2026-01-01T00:00:00.000000000Z");
        assert!(r.json_line(b"2026-01-01T00:00:03Z stdout P end").is_empty());
        let v: serde_json::Value = serde_json::from_slice(&r.finish()).unwrap();
        assert_eq!(v["line"], "end");
    }
}
