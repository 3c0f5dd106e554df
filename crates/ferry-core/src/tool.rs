//! The one way ferry runs external tools (runc, criu, iptables-restore, ...).
//!
//! Every failure carries the tool's name, its arguments and what it wrote to stderr, so an
//! error shown to a user says what went wrong without a trip to the logs.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    // The io error is part of the message (not a #[source]) so it is shown exactly once.
    #[error("could not start {tool}: {error}")]
    Spawn { tool: String, error: std::io::Error },
    #[error("{tool} {args} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl ToolError {
    /// The tool's stderr, when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ToolError::Failed { stderr, .. } => Some(stderr),
            ToolError::Spawn { .. } => None,
        }
    }
}

/// A command line for an external tool, with ferry's conventions: stdin closed, stdout and
/// stderr captured, the command logged at debug level.
#[derive(Debug)]
pub struct Tool {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<std::path::PathBuf>,
}

impl Tool {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Tool {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    pub fn name(&self) -> String {
        Path::new(&self.program)
            .file_name()
            .unwrap_or(self.program.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    pub fn display_args(&self) -> String {
        self.args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A std Command with everything set except stdio, for callers that need to wire
    /// descriptors themselves (the shim, `--status-fd`). Use [`check_status`] on the result.
    pub fn command(&self) -> Command {
        // The one place a std Command is made: everything else builds a Tool.
        #[allow(clippy::disallowed_methods)]
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    /// Runs to completion; returns stdout on success.
    pub fn run(&self) -> Result<Vec<u8>, ToolError> {
        tracing::debug!(tool = %self.name(), args = %self.display_args(), "run");
        let out = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|error| ToolError::Spawn {
                tool: self.name(),
                error,
            })?;
        self.check_output(out)
    }

    /// Runs to completion and returns stdout as trimmed text.
    pub fn run_text(&self) -> Result<String, ToolError> {
        Ok(String::from_utf8_lossy(&self.run()?).trim().to_owned())
    }

    /// Turns a finished process's output into ferry's result convention.
    pub fn check_output(&self, out: Output) -> Result<Vec<u8>, ToolError> {
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(self.failure(out.status, &out.stderr))
        }
    }

    pub fn failure(&self, status: ExitStatus, stderr: &[u8]) -> ToolError {
        ToolError::Failed {
            tool: self.name(),
            args: self.display_args(),
            status,
            stderr: String::from_utf8_lossy(stderr).trim().to_owned(),
        }
    }

    pub fn spawn_error(&self, error: std::io::Error) -> ToolError {
        ToolError::Spawn {
            tool: self.name(),
            error,
        }
    }
}

/// Async version of [`Tool::run`] for use inside the daemon.
pub async fn run_async(tool: &Tool) -> Result<Vec<u8>, ToolError> {
    tracing::debug!(tool = %tool.name(), args = %tool.display_args(), "run");
    let out = tokio::process::Command::from(tool.command())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| tool.spawn_error(e))?;
    tool.check_output(out)
}

/// Lets the child of `cmd` (and only it) inherit `fd` at the same number: `fd` stays
/// close-on-exec in this process, so no other child spawned meanwhile gets a copy.
pub fn inherit_fd(cmd: &mut Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr() {
        let err = Tool::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("sh"), "{msg}");
        assert_eq!(err.stderr(), Some("boom"));
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let err = Tool::new("/nonexistent/ferry-tool").run().unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }));
    }

    #[test]
    fn stdout_returned() {
        assert_eq!(Tool::new("echo").arg("hi").run_text().unwrap(), "hi");
    }
}
