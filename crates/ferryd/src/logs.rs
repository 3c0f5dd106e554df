//! `GET /v1/containers/{name}/logs`: streams the shim's log file (the entry format of
//! `ferry_core::runtime::shim::log`), filtered here so only what the client asked for crosses
//! the socket: `tail=N` (the last N entries), `since`/`until` (RFC3339, inclusive bounds on
//! each entry's time) and `follow` (keep streaming until the container stops, or until the
//! `until` time has passed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::runtime::shim::log::parse_entry;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::Sender;

use crate::api::AppState;
use crate::error::ApiError;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    /// Only the last N entries (of those within since/until).
    pub tail: Option<usize>,
    /// RFC3339: entries at or after this time.
    pub since: Option<String>,
    /// RFC3339: entries at or before this time.
    pub until: Option<String>,
}

/// What to send of a log: a time window and how many of the last entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFilter {
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl LogFilter {
    pub fn from_query(q: &LogsQuery) -> Result<Self, ApiError> {
        let time = |what: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
            v.as_deref()
                .map(|s| {
                    DateTime::parse_from_rfc3339(s)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| {
                            ApiError::invalid(format!(
                                "logs {what}={s:?} is not an RFC3339 time: {e}"
                            ))
                        })
                })
                .transpose()
        };
        Ok(LogFilter {
            tail: q.tail,
            since: time("since", &q.since)?,
            until: time("until", &q.until)?,
        })
    }

    /// Whether an entry is inside the time window. A line that is not an entry (a damaged
    /// log) has no time: it is sent unless a window was asked for.
    pub fn in_window(&self, line: &[u8]) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(e) = parse_entry(line) else {
            return false;
        };
        self.since.is_none_or(|s| e.time >= s) && self.until.is_none_or(|u| e.time <= u)
    }

    /// Whether an entry comes after the window (nothing later can be in it).
    fn past_window(&self, line: &[u8]) -> bool {
        match (self.until, parse_entry(line)) {
            (Some(u), Ok(e)) => e.time > u,
            _ => false,
        }
    }
}

/// Splits a byte stream into lines (newline kept); the unfinished rest waits for more.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            out.push(self.pending.drain(..=pos).collect());
        }
        out
    }

    /// The unfinished rest, at the end of the stream.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// How many entries in the window the log holds now; with `tail`, that many minus the tail
/// are skipped. Entries appended meanwhile come after those counted, so they are sent.
async fn count_in_window(path: &PathBuf, filter: &LogFilter) -> std::io::Result<usize> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let got = file.read(&mut buf).await?;
        if got == 0 {
            break;
        }
        n += lines
            .push(&buf[..got])
            .iter()
            .filter(|l| filter.in_window(l))
            .count();
    }
    Ok(n)
}

/// Sends the log at `path` through `tx`, filtered; see the module doc.
pub async fn stream(
    state: Arc<AppState>,
    name: String,
    path: PathBuf,
    follow: bool,
    filter: LogFilter,
    tx: Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let mut skip = match filter.tail {
        Some(t) => match count_in_window(&path, &filter).await {
            Ok(n) => n.saturating_sub(t),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        },
        None => 0,
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle_checks = 0u32;
    // Sends what passes the filter; false once the client is gone or the window is over.
    let mut send = |chunk: Vec<Vec<u8>>| {
        let mut out = Vec::new();
        let mut over = false;
        for line in chunk {
            if filter.past_window(&line) {
                over = true;
                break;
            }
            if !filter.in_window(&line) {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.extend_from_slice(&line);
        }
        (out, over)
    };
    loop {
        match file.read(&mut buf).await {
            Ok(0) => {
                let window_over = filter.until.is_some_and(|u| u < Utc::now());
                if !follow || window_over {
                    break;
                }
                idle_checks += 1;
                // Every ~second, stop following once the container is gone or stopped.
                if idle_checks.is_multiple_of(10) {
                    let s2 = state.clone();
                    let n2 = name.clone();
                    let running = tokio::task::spawn_blocking(move || s2.engine.is_running(&n2))
                        .await
                        .unwrap_or(false);
                    if !running {
                        // Drain what the shim wrote last, then end.
                        if let Ok(n) = file.read(&mut buf).await {
                            let (out, _) = send(lines.push(&buf[..n]));
                            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(n) => {
                idle_checks = 0;
                let (out, over) = send(lines.push(&buf[..n]));
                if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                    return;
                }
                if over {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
    // A last line without its newline (the shim is writing it): sent as it is.
    if let Some(rest) = lines.finish() {
        let (out, _) = send(vec![rest]);
        if !out.is_empty() {
            let _ = tx.send(Ok(out)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: &str, text: &str) -> Vec<u8> {
        format!("{t} stdout F {text}\n").into_bytes()
    }

    #[test]
    fn window_and_lines() {
        let q = LogsQuery {
            since: Some("2026-01-01T00:00:10Z".into()),
            until: Some("2026-01-01T00:00:20Z".into()),
            ..Default::default()
        };
        let Ok(f) = LogFilter::from_query(&q) else {
            panic!("a valid window is refused");
        };
        assert!(!f.in_window(&entry("2026-01-01T00:00:05Z", "early")));
        assert!(f.in_window(&entry("2026-01-01T00:00:10Z", "edge")));
        assert!(f.in_window(&entry("2026-01-01T00:00:20Z", "edge")));
        assert!(f.past_window(&entry("2026-01-01T00:00:21Z", "late")));
        assert!(!f.in_window(b"garbage\n"));
        assert!(LogFilter::default().in_window(b"garbage\n"));
        let bad = LogsQuery {
            since: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(LogFilter::from_query(&bad).is_err());

        let mut l = Lines::default();
        assert_eq!(l.push(b"a\nb"), vec![b"a\n".to_vec()]);
        assert_eq!(l.push(b"c\n\n"), vec![b"bc\n".to_vec(), b"\n".to_vec()]);
        assert_eq!(l.finish(), None);
        l.push(b"tail");
        assert_eq!(l.finish(), Some(b"tail".to_vec()));
    }
}
