//! Fault injection at named migration steps, for the fault-matrix tests.
//!
//! A test creates files under `<root>/inject-fault/` on the host it wants to disturb:
//! - `pause-<role>-<step>`: the driver creates `reached-<role>-<step>` when it gets there and
//!   waits while the pause file exists, so the test can kill, stop or cut off a ferryd at
//!   exactly that step, then remove the file;
//! - `fail-<role>-<step>`: the step fails as if the work had failed;
//! - `corrupt-<role>-<step>`: the driver sends a frame with a broken checksum at that step.
//!
//! Compiled in only with the `fault-injection` Cargo feature (CI's ferryd: `scripts/test.sh`
//! builds with `--features ferryd/fault-injection`). Without it [`at`] is a constant
//! `Ok(Injected::None)` and the files are never looked at; with it, a host without the
//! directory pays one failed `stat` per step.

#[cfg(feature = "fault-injection")]
use std::path::PathBuf;
#[cfg(feature = "fault-injection")]
use std::time::Duration;

use super::record::Role;
use super::MigrationError;
use crate::paths::HostPaths;

/// What a step should do about an injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    None,
    /// Send a corrupt frame now.
    Corrupt,
}

#[cfg(feature = "fault-injection")]
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Source => "source",
        Role::Destination => "destination",
    }
}

#[cfg(feature = "fault-injection")]
fn file(paths: &HostPaths, kind: &str, role: Role, step: &str) -> PathBuf {
    paths
        .root()
        .join("inject-fault")
        .join(format!("{kind}-{}-{step}", role_name(role)))
}

/// Called at the start of each named step. Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
pub async fn at(_paths: &HostPaths, _role: Role, _step: &str) -> Result<Injected, MigrationError> {
    Ok(Injected::None)
}

/// Called at the start of each named step.
#[cfg(feature = "fault-injection")]
pub async fn at(paths: &HostPaths, role: Role, step: &str) -> Result<Injected, MigrationError> {
    if !paths.root().join("inject-fault").exists() {
        return Ok(Injected::None);
    }
    let pause = file(paths, "pause", role, step);
    if pause.exists() {
        let reached = file(paths, "reached", role, step);
        std::fs::write(&reached, b"").map_err(|e| MigrationError::io(&reached, e))?;
        tracing::warn!(step, "paused by an injected fault");
        while pause.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if file(paths, "fail", role, step).exists() {
        return Err(MigrationError::Internal(format!(
            "step {step} failed by an injected fault"
        )));
    }
    if file(paths, "corrupt", role, step).exists() {
        return Ok(Injected::Corrupt);
    }
    Ok(Injected::None)
}
