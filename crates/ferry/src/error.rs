//! How the CLI fails. Every error has a stable `kind`; it is printed as `ferry: error: MESSAGE`
//! on stderr, or with `--json` as one object on stdout:
//!
//! ```json
//! {"error": {"kind": "not_found", "message": "no such container: web"}}
//! ```
//!
//! Kinds: the daemon's (`not_found`, `conflict`, `invalid`, `unavailable`, `internal`), plus
//! `usage` (a bad command line, exit 2), `unreachable` (no ferryd at the socket) and `failed`
//! (anything else on this side). The exit code is 1, or 2 for `usage`.

use std::fmt;

/// An error with its kind, for the JSON error object and the exit code.
#[derive(Debug, Clone)]
pub struct CliError {
    pub kind: String,
    pub message: String,
}

impl CliError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        CliError {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The command already printed its outcome (a batch over several names where some failed):
/// exit with this code and print nothing more.
#[derive(Debug)]
pub struct Reported(pub i32);

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed (reported above, exit {})", self.0)
    }
}

impl std::error::Error for Reported {}

/// The kind of any error: a [`CliError`]'s own, else `failed`.
pub fn kind_of(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|c| c.downcast_ref::<CliError>())
        .map_or_else(|| "failed".to_owned(), |c| c.kind.clone())
}

/// The JSON error object for `e` (also used per item in a batch).
pub fn json_error(e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({"error": {"kind": kind_of(e), "message": format!("{e:#}")}})
}

/// Whether `e` comes from writing to a pipe whose reader is gone (`ferry ps | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints `e` as the command's failure and returns the exit code.
pub fn report(e: &anyhow::Error, json: bool) -> i32 {
    if let Some(Reported(code)) = e.downcast_ref::<Reported>() {
        return *code;
    }
    if is_broken_pipe(e) {
        // The reader has what it wanted; nothing to say, and nowhere to say it.
        return 0;
    }
    let code = if kind_of(e) == "usage" { 2 } else { 1 };
    if json {
        crate::output::print_json_line(&json_error(e));
    } else {
        eprintln!("ferry: error: {e:#}");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_json_shape() {
        let e = anyhow::Error::new(CliError::new("not_found", "no such container: web"));
        assert_eq!(kind_of(&e), "not_found");
        let v = json_error(&e);
        assert_eq!(v["error"]["kind"], "not_found");
        assert_eq!(v["error"]["message"], "no such container: web");
        let other = anyhow::anyhow!("boom");
        assert_eq!(kind_of(&other), "failed");
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe));
        assert!(!is_broken_pipe(&other));
    }
}
