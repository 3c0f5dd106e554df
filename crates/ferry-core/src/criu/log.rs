//! Turning a CRIU log into the one line a person needs: where the log is and what went wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors CRIU logs on every run on a host without CAP_SYS_RESOURCE (it cannot raise its own
/// rlimits); they never explain a failure.
const HARMLESS_ERRORS: &[&str] = &["rlimit: Can't setup RLIMIT_"];

/// Where a CRIU log is and its first real error line, shown with every checkpoint/restore error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuLogExcerpt {
    pub log_path: PathBuf,
    pub first_error: Option<String>,
}

/// "see <path>: <first error>", or just "see <path>" when the log has no error line.
impl fmt::Display for CriuLogExcerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "see {}", self.log_path.display())?;
        if let Some(e) = &self.first_error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// Finds the first `Error (…)` line of a CRIU log, skipping the known-harmless ones. A missing
/// or unreadable log gives an excerpt without an error line: the path is still worth showing.
pub fn explain_log(log_path: &Path) -> CriuLogExcerpt {
    let first_error = std::fs::read(log_path).ok().and_then(|bytes| {
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(strip_timestamp)
            .find(|l| is_real_error(l))
            .map(str::to_owned)
    });
    CriuLogExcerpt {
        log_path: log_path.to_owned(),
        first_error,
    }
}

/// The last `keep` real error lines of a CRIU log (timestamps stripped, oldest first), for a
/// message that lists them. Empty when the log is missing or has none.
pub fn error_lines(log_path: &Path, keep: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(log_path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let errors: Vec<&str> = text
        .lines()
        .map(strip_timestamp)
        .filter(|l| is_real_error(l))
        .collect();
    errors[errors.len().saturating_sub(keep)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// CRIU prefixes lines with "(SS.uuuuuu) " at verbosity 4 and above.
fn strip_timestamp(line: &str) -> &str {
    let l = line.trim();
    if let Some(rest) = l.strip_prefix('(') {
        if let Some((ts, after)) = rest.split_once(") ") {
            if ts
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == ' ')
            {
                return after.trim();
            }
        }
    }
    l
}

fn is_real_error(line: &str) -> bool {
    line.starts_with("Error (") && !HARMLESS_ERRORS.iter().any(|h| line.contains(h))
}

/// Lines of CRIU's stderr worth showing, without source locations: "Warn  (criu/cr-check.c:824):
/// Dirty tracking is OFF." becomes "Dirty tracking is OFF.".
pub(crate) fn plain_messages(text: &str) -> String {
    text.lines()
        .map(strip_timestamp)
        .filter(|l| !l.is_empty() && !HARMLESS_ERRORS.iter().any(|h| l.contains(h)))
        .map(strip_location)
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_location(line: &str) -> &str {
    for level in ["Error", "Warn"] {
        if let Some(rest) = line.strip_prefix(level) {
            if let Some(rest) = rest.trim_start().strip_prefix('(') {
                if let Some((_, msg)) = rest.split_once("): ") {
                    return msg.trim();
                }
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_real_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.000010) Version: 4.2.1\n\
             (00.000020) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.100000) Warn  (criu/sk-inet.c:99): something odd\n\
             (00.200000) Error (criu/files-reg.c:1234): Can't lookup mount=22 for fd=1 path=/tmp/out\n\
             (00.300000) Error (criu/cr-dump.c:2000): Dumping FAILED.\n",
        )
        .unwrap();
        let ex = explain_log(&log);
        assert_eq!(
            ex.first_error.as_deref(),
            Some("Error (criu/files-reg.c:1234): Can't lookup mount=22 for fd=1 path=/tmp/out")
        );
        assert_eq!(
            ex.to_string(),
            format!(
                "see {}: Error (criu/files-reg.c:1234): Can't lookup mount=22 for fd=1 path=/tmp/out",
                log.display()
            )
        );
    }

    #[test]
    fn log_without_errors_or_missing_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("restore.log");
        std::fs::write(
            &log,
            "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: EPERM\n",
        )
        .unwrap();
        assert_eq!(explain_log(&log).first_error, None);
        let missing = dir.path().join("nope.log");
        assert_eq!(
            explain_log(&missing).to_string(),
            format!("see {}", missing.display())
        );
    }

    #[test]
    fn plain_messages_drop_locations() {
        assert_eq!(
            plain_messages("Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work.\n"),
            "Dirty tracking is OFF. Memory snapshot will not work."
        );
        assert_eq!(
            plain_messages("Error (criu/cr-check.c:1226): UFFD is not supported\n"),
            "UFFD is not supported"
        );
    }
}

/// Bytes a lazy dump left to be served on demand: the sum of CRIU's `Pagemap generated: N pages
/// (M lazy)` lines (verbosity 4) times the page size.
pub fn lazy_bytes_in_dump_log(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let pages: u64 = text
        .lines()
        .filter(|l| l.contains("Pagemap generated:"))
        .filter_map(|l| {
            let open = l.rfind('(')?;
            l[open + 1..].split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Some(pages * 4096)
}

#[cfg(test)]
mod lazy_tests {
    #[test]
    fn lazy_bytes_add_up_from_the_dump_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.20) Pagemap generated: 0 pages (0 lazy) 0 holes\n\
             (00.20) Pagemap generated: 2 pages (2 lazy) 0 holes\n\
             (00.21) Pagemap generated: 9 pages (5 lazy) 1 holes\n\
             (00.22) Running post-dump scripts\n",
        )
        .unwrap();
        assert_eq!(super::lazy_bytes_in_dump_log(&log), Some(7 * 4096));
        assert_eq!(
            super::lazy_bytes_in_dump_log(&dir.path().join("none")),
            None
        );
    }
}
