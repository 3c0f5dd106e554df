//! The container log file (`ctr.log`): one entry per line,
//!
//! ```text
//! <RFC3339 time, UTC, nanoseconds> <stdout|stderr> <F|P> <text>
//! ```
//!
//! `F` ends a line of the container's output; `P` is a piece of a longer line (or a last line
//! without a newline) that continues in the next entry of the same stream. The shim writes it,
//! `ferry logs` reads it with [`read_log`].

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{ShimError, EXIT_FILE};

/// Longest text in one entry; longer output lines are split into `P` pieces.
pub const MAX_ENTRY_TEXT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub time: DateTime<Utc>,
    pub stream: LogStream,
    /// False for a `P` piece: the line continues in the next entry of this stream.
    pub complete: bool,
    /// The text without its newline (invalid UTF-8 replaced).
    pub text: String,
}

/// Formats one entry, newline included.
pub fn format_entry(
    time: DateTime<Utc>,
    stream: LogStream,
    complete: bool,
    text: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 48);
    out.extend_from_slice(time.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if complete { b" F " } else { b" P " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// Parses one line of `ctr.log` (with or without its trailing newline).
pub fn parse_entry(line: &[u8]) -> Result<LogEntry, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(stream), Some(tag), Some(text)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected `<time> <stream> <F|P> <text>`".to_owned());
    };
    let time = std::str::from_utf8(time)
        .ok()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| format!("bad time {:?}", String::from_utf8_lossy(time)))?
        .with_timezone(&Utc);
    let stream = match stream {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        other => return Err(format!("bad stream {:?}", String::from_utf8_lossy(other))),
    };
    let complete = match tag {
        b"F" => true,
        b"P" => false,
        other => return Err(format!("bad tag {:?}", String::from_utf8_lossy(other))),
    };
    Ok(LogEntry {
        time,
        stream,
        complete,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// Splits one stream's bytes into log entries, keeping an unfinished line for the next chunk.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    stream: LogStream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn new(stream: LogStream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Formatted entries for every line completed by `chunk`.
    pub(crate) fn push(&mut self, chunk: &[u8], now: DateTime<Utc>) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            if let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
                if nl <= MAX_ENTRY_TEXT {
                    out.extend(format_entry(now, self.stream, true, &self.pending[..nl]));
                    self.pending.drain(..=nl);
                    continue;
                }
            }
            if self.pending.len() > MAX_ENTRY_TEXT {
                out.extend(format_entry(
                    now,
                    self.stream,
                    false,
                    &self.pending[..MAX_ENTRY_TEXT],
                ));
                self.pending.drain(..MAX_ENTRY_TEXT);
                continue;
            }
            return out;
        }
    }

    /// At end of stream: the last line if it had no newline, as a `P` entry.
    pub(crate) fn finish(&mut self, now: DateTime<Utc>) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let out = format_entry(now, self.stream, false, &self.pending);
        self.pending.clear();
        out
    }
}

/// Reads a container log. With `follow`, waits for new entries at the end of the file and stops
/// once the container has exited (`exit.json` appears next to the log) and everything is read.
pub fn read_log(path: &Path, follow: bool) -> Result<LogReader, ShimError> {
    let file = File::open(path).map_err(|source| ShimError::Io {
        what: "open the container log",
        path: path.to_owned(),
        source,
    })?;
    let exit_file = path
        .parent()
        .map_or_else(|| PathBuf::from(EXIT_FILE), |d| d.join(EXIT_FILE));
    Ok(LogReader {
        path: path.to_owned(),
        reader: BufReader::new(file),
        follow,
        exit_file,
        line: Vec::new(),
        line_no: 0,
        done: false,
    })
}

/// Iterator over the entries of a container log; see [`read_log`].
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    reader: BufReader<File>,
    follow: bool,
    exit_file: PathBuf,
    line: Vec<u8>,
    line_no: usize,
    done: bool,
}

const FOLLOW_POLL: Duration = Duration::from_millis(100);

impl LogReader {
    /// Reads until a full line is buffered in `self.line`. `Ok(false)` at end of file.
    fn fill_line(&mut self) -> std::io::Result<bool> {
        self.reader.read_until(b'\n', &mut self.line)?;
        if self.line.ends_with(b"\n") {
            return Ok(true);
        }
        // At end of file. A fragment read so far (a line being written right now) stays in
        // `self.line` and is completed by the next read.
        Ok(false)
    }
}

impl Iterator for LogReader {
    type Item = Result<LogEntry, ShimError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut saw_exit = false;
        loop {
            match self.fill_line() {
                Err(source) => {
                    self.done = true;
                    return Some(Err(ShimError::Io {
                        what: "read the container log",
                        path: self.path.clone(),
                        source,
                    }));
                }
                Ok(true) => break,
                Ok(false) if !self.follow || saw_exit => {
                    // A trailing fragment without newline cannot be a whole entry; stop.
                    self.done = true;
                    return None;
                }
                Ok(false) => {
                    // The shim writes exit.json only after the last log line, so one more
                    // read after seeing it is enough.
                    saw_exit = self.exit_file.exists();
                    if !saw_exit {
                        std::thread::sleep(FOLLOW_POLL);
                    }
                }
            }
        }
        self.line_no += 1;
        let line = std::mem::take(&mut self.line);
        Some(parse_entry(&line).map_err(|problem| ShimError::BadLogLine {
            path: self.path.clone(),
            line: self.line_no,
            problem,
        }))
    }
}

/// Appends formatted entries to the log file in one write, so entries of the two streams never
/// interleave mid-line.
pub(crate) fn append(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-05-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn entry_round_trip() {
        let line = format_entry(t0(), LogStream::Stderr, true, b"hello world");
        assert_eq!(
            String::from_utf8_lossy(&line),
            "2024-05-01T10:00:00.500000000Z stderr F hello world\n"
        );
        let e = parse_entry(&line).unwrap();
        assert_eq!(e.time, t0());
        assert_eq!(e.stream, LogStream::Stderr);
        assert!(e.complete);
        assert_eq!(e.text, "hello world");
        let empty = parse_entry(&format_entry(t0(), LogStream::Stdout, true, b"")).unwrap();
        assert_eq!(empty.text, "");
        assert!(parse_entry(b"garbage").is_err());
        assert!(parse_entry(b"2024-05-01T10:00:00Z stdin F x").is_err());
    }

    #[test]
    fn splitter_handles_chunks_long_lines_and_eof() {
        let mut s = LineSplitter::new(LogStream::Stdout);
        assert!(s.push(b"par", t0()).is_empty());
        let out = s.push(b"tial\nnext\nlast", t0());
        let lines: Vec<LogEntry> = out
            .split_inclusive(|b| *b == b'\n')
            .map(|l| parse_entry(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "partial");
        assert_eq!(lines[1].text, "next");
        let tail = parse_entry(&s.finish(t0())).unwrap();
        assert_eq!((tail.text.as_str(), tail.complete), ("last", false));

        let long = vec![b'x'; MAX_ENTRY_TEXT * 2 + 10];
        let mut out = s.push(&long, t0());
        out.extend(s.push(b"\n", t0()));
        let pieces: Vec<LogEntry> = out
            .split_inclusive(|b| *b == b'\n')
            .map(|l| parse_entry(l).unwrap())
            .collect();
        assert_eq!(pieces.len(), 3);
        assert!(!pieces[0].complete && !pieces[1].complete && pieces[2].complete);
        let total: usize = pieces.iter().map(|p| p.text.len()).sum();
        assert_eq!(total, long.len());
    }

    #[test]
    fn follow_stops_after_exit_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ctr.log");
        let mut f = File::create(&log).unwrap();
        f.write_all(&format_entry(t0(), LogStream::Stdout, true, b"one"))
            .unwrap();
        let reader = read_log(&log, true).unwrap();
        let writer = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(250));
                // A line arriving in two writes must come out whole.
                let line = format_entry(t0(), LogStream::Stderr, true, b"two");
                f.write_all(&line[..10]).unwrap();
                std::thread::sleep(Duration::from_millis(150));
                f.write_all(&line[10..]).unwrap();
                std::fs::write(dir.join(EXIT_FILE), "{}").unwrap();
            })
        };
        let texts: Vec<String> = reader.map(|e| e.unwrap().text).collect();
        writer.join().unwrap();
        assert_eq!(texts, ["one", "two"]);

        let texts: Vec<String> = read_log(&log, false)
            .unwrap()
            .map(|e| e.unwrap().text)
            .collect();
        assert_eq!(texts, ["one", "two"]);
    }
}
