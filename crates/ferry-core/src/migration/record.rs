//! The durable record of each migration this host takes part in (`migrations/ID.json`).
//!
//! The record is the truth a restarted ferryd, the CRIU hook and a peer's `Inquire` all read,
//! so each change of stage is written (fsync, rename, fsync of the directory) *before* the
//! action it allows: the destination records `Committed` before it opens its gate, the source
//! records `InDoubt` before it sends `Commit`. Stages only move forward, and the final ones
//! never change: [`transition`] refuses anything else, under one lock for the whole host.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_proto::Verdict;
use serde::{Deserialize, Serialize};

use crate::paths::HostPaths;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("migration record {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("migration record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no migration {0} on this host")]
    Unknown(String),
    #[error("migration {id} is {stage}; it cannot become {wanted}")]
    Stale {
        id: String,
        stage: Stage,
        wanted: Stage,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Source,
    Destination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Source: the container is claimed and still runs; nothing frozen yet.
    Claimed,
    /// Source: `runc checkpoint` was started, so the container may be frozen.
    Frozen,
    /// Source: `Commit` is (being) sent; only the destination's verdict may end this.
    InDoubt,
    /// Destination: receiving; no copy that could run yet.
    Receiving,
    /// Destination: a restored copy waits, gated, for the verdict.
    Restored,
    /// Post-copy, both sides: committed (the copy runs on the destination), its memory still
    /// moving from the source, which stays frozen until the last page has arrived.
    Draining,
    /// Final: the container lives on the destination.
    Committed,
    /// Final, source: the container was verified running here again.
    RolledBack,
    /// Final, destination: the copy was removed (or never restored).
    Discarded,
    /// Source: resuming could not be verified; `ferry ps` shows the container in error.
    Failed,
    /// Final, post-copy: the source or the link died after the destination resumed, before the
    /// last page. The destination's copy was killed; what the source still holds is the state
    /// at the freeze, without what changed on the destination since.
    Lost,
}

impl Stage {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Stage::Committed | Stage::RolledBack | Stage::Discarded | Stage::Lost
        )
    }

    /// Whether `self` may become `next`: forward only, finals never change. `Failed` may still
    /// be resolved (an operator or a later rollback that verifies). Staying put is refused too,
    /// so of two racing callers exactly one acts (the other sees `Stale` with the stage).
    fn may_become(self, next: Stage) -> bool {
        use Stage::*;
        matches!(
            (self, next),
            (Claimed, Frozen | RolledBack | Failed)
                | (Frozen, InDoubt | RolledBack | Failed)
                | (InDoubt, Committed | Draining | Lost | RolledBack | Failed)
                | (Receiving, Restored | Discarded)
                | (Restored, Committed | Draining | Discarded)
                | (Draining, Committed | Lost)
                | (Failed, RolledBack | Committed)
        )
    }

    /// What this side answers a peer's `Inquire` with, given its role.
    pub fn verdict(self, role: Role) -> Verdict {
        match (role, self) {
            (_, Stage::Committed) => Verdict::Committed,
            // Post-copy: committed, but complete only with the last page.
            (_, Stage::Draining) => Verdict::Pending,
            (_, Stage::Lost) => Verdict::Lost,
            // The source decided to commit: the destination should commit too.
            (Role::Source, Stage::InDoubt) => Verdict::Committed,
            (Role::Source, Stage::RolledBack) => Verdict::NotCommitted,
            (Role::Source, _) => Verdict::Pending,
            (Role::Destination, Stage::Discarded) => Verdict::NotCommitted,
            (Role::Destination, _) => Verdict::Pending,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub migration_id: String,
    pub role: Role,
    pub stage: Stage,
    /// The container's name and id on this host.
    pub container: String,
    pub container_id: String,
    /// The other host (its certificate name).
    pub peer: String,
    /// Post-copy: committing means draining the memory first (see [`Stage::Draining`]).
    #[serde(default)]
    pub post_copy: bool,
    /// Source: the process group of `runc checkpoint` (and its CRIU), to kill it if stuck,
    /// with its leader's start time so a reused number is never taken for it.
    #[serde(default)]
    pub checkpoint: Option<super::resume::GroupRecord>,
    /// Source: what the rollback did and verified.
    #[serde(default)]
    pub rollback: Option<serde_json::Value>,
    /// Source: the socket the CRIU hook reports to, rebound by a restarted ferryd.
    #[serde(default)]
    pub hook_socket: Option<PathBuf>,
    /// Where CRIU's logs of this migration are kept for diagnosis.
    #[serde(default)]
    pub logs_dir: Option<PathBuf>,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// Cleanup steps that failed: recorded, never ignored.
    #[serde(default)]
    pub cleanup_failures: Vec<String>,
    /// The source's final report (phases, bytes, downtime).
    #[serde(default)]
    pub report: Option<serde_json::Value>,
    #[serde(default)]
    pub updated_at: String,
}

impl MigrationRecord {
    pub fn new(id: &str, role: Role, stage: Stage, container: &str, ctr_id: &str) -> Self {
        MigrationRecord {
            migration_id: id.to_owned(),
            role,
            stage,
            container: container.to_owned(),
            container_id: ctr_id.to_owned(),
            peer: String::new(),
            post_copy: false,
            checkpoint: None,
            rollback: None,
            hook_socket: None,
            logs_dir: None,
            error: None,
            cleanup_failures: Vec::new(),
            report: None,
            updated_at: String::new(),
        }
    }
}

/// One lock for every record of this process: stage changes are compare-and-set.
static RECORDS: Mutex<()> = Mutex::new(());

fn guard() -> std::sync::MutexGuard<'static, ()> {
    RECORDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Migration ids are ours (`m` + hex) or a peer's: never let one name a path elsewhere.
/// One rule for migration ids, wherever they come from (see `crate::ids`).
pub fn valid_id(id: &str) -> bool {
    crate::ids::MigrationId::new(id).is_ok()
}

pub fn path(paths: &HostPaths, id: &str) -> PathBuf {
    paths.migrations().join(format!("{id}.json"))
}

/// Reads a record; `None` if this host never recorded that migration.
pub fn load(paths: &HostPaths, id: &str) -> Result<Option<MigrationRecord>, RecordError> {
    if !valid_id(id) {
        return Ok(None);
    }
    read(&path(paths, id))
}

fn read(p: &Path) -> Result<Option<MigrationRecord>, RecordError> {
    match std::fs::read(p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RecordError::Corrupt {
                path: p.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecordError::Io {
            path: p.to_owned(),
            source: e,
        }),
    }
}

/// Every record on this host (unreadable ones are logged and skipped).
pub fn list(paths: &HostPaths) -> Vec<MigrationRecord> {
    let Ok(dir) = std::fs::read_dir(paths.migrations()) else {
        return Vec::new();
    };
    let mut out: Vec<MigrationRecord> = dir
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| match read(&e.path()) {
            Ok(r) => r,
            Err(err) => {
                tracing::warn!(error = %err, "skipping a migration record");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| a.updated_at.cmp(&b.updated_at));
    out
}

/// Writes a new record (or replaces one in the same stage).
pub fn create(paths: &HostPaths, rec: &MigrationRecord) -> Result<(), RecordError> {
    let _g = guard();
    write(paths, rec)
}

/// Moves a record to `next` (durably) and applies `edit`, unless the current stage forbids it.
/// Returns the record as written.
pub fn transition(
    paths: &HostPaths,
    id: &str,
    next: Stage,
    edit: impl FnOnce(&mut MigrationRecord),
) -> Result<MigrationRecord, RecordError> {
    let _g = guard();
    let mut rec = read(&path(paths, id))?.ok_or_else(|| RecordError::Unknown(id.to_owned()))?;
    if !rec.stage.may_become(next) {
        return Err(RecordError::Stale {
            id: id.to_owned(),
            stage: rec.stage,
            wanted: next,
        });
    }
    rec.stage = next;
    edit(&mut rec);
    write(paths, &rec)?;
    Ok(rec)
}

/// Changes fields other than the stage.
pub fn update(
    paths: &HostPaths,
    id: &str,
    edit: impl FnOnce(&mut MigrationRecord),
) -> Result<MigrationRecord, RecordError> {
    let _g = guard();
    let mut rec = read(&path(paths, id))?.ok_or_else(|| RecordError::Unknown(id.to_owned()))?;
    edit(&mut rec);
    write(paths, &rec)?;
    Ok(rec)
}

/// Logs a cleanup that failed and keeps it in the record (`ferry migration ls` shows it).
pub fn note_cleanup_failure(paths: &HostPaths, id: &str, msg: &str) {
    tracing::warn!(migration = %id, "{msg}");
    if let Err(e) = update(paths, id, |r| r.cleanup_failures.push(msg.to_owned())) {
        tracing::warn!(error = %e, "recording a cleanup failure");
    }
}

fn write(paths: &HostPaths, rec: &MigrationRecord) -> Result<(), RecordError> {
    let mut rec = rec.clone();
    rec.updated_at = chrono::Utc::now().to_rfc3339();
    let p = path(paths, &rec.migration_id);
    let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| RecordError::Corrupt {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    crate::fsutil::write_atomic(&p, &bytes, 0o600).map_err(|source| RecordError::Io {
        path: p.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_move_forward_and_finals_stick() {
        let t = tempfile::tempdir().unwrap();
        let paths = HostPaths::new(t.path());
        let rec = MigrationRecord::new("m1", Role::Destination, Stage::Receiving, "r", "id1");
        create(&paths, &rec).unwrap();
        transition(&paths, "m1", Stage::Restored, |_| {}).unwrap();
        transition(&paths, "m1", Stage::Committed, |_| {}).unwrap();
        let e = transition(&paths, "m1", Stage::Discarded, |_| {}).unwrap_err();
        assert!(matches!(e, RecordError::Stale { .. }), "{e}");
        let back = load(&paths, "m1").unwrap().unwrap();
        assert_eq!(back.stage, Stage::Committed);
        assert_eq!(back.stage.verdict(Role::Destination), Verdict::Committed);
        assert!(load(&paths, "../../etc/passwd").unwrap().is_none());
        assert!(load(&paths, "m2").unwrap().is_none());
    }

    /// Post-copy: committed, then complete with the last page, or lost; never back.
    #[test]
    fn post_copy_stages() {
        let t = tempfile::tempdir().unwrap();
        let paths = HostPaths::new(t.path());
        let rec = MigrationRecord::new("m1", Role::Destination, Stage::Receiving, "r", "id1");
        create(&paths, &rec).unwrap();
        transition(&paths, "m1", Stage::Restored, |_| {}).unwrap();
        transition(&paths, "m1", Stage::Draining, |_| {}).unwrap();
        assert_eq!(Stage::Draining.verdict(Role::Destination), Verdict::Pending);
        assert!(!Stage::Draining.is_final());
        assert!(transition(&paths, "m1", Stage::Discarded, |_| {}).is_err());
        transition(&paths, "m1", Stage::Lost, |_| {}).unwrap();
        assert!(transition(&paths, "m1", Stage::Committed, |_| {}).is_err());
        assert_eq!(Stage::Lost.verdict(Role::Source), Verdict::Lost);
        assert!(Stage::Lost.is_final());
        assert!(Stage::InDoubt.may_become(Stage::Draining));
        assert!(Stage::Draining.may_become(Stage::Committed));
    }

    #[test]
    fn source_verdicts() {
        assert_eq!(Stage::InDoubt.verdict(Role::Source), Verdict::Committed);
        assert_eq!(Stage::Frozen.verdict(Role::Source), Verdict::Pending);
        assert_eq!(Stage::Failed.verdict(Role::Source), Verdict::Pending);
        assert_eq!(
            Stage::RolledBack.verdict(Role::Source),
            Verdict::NotCommitted
        );
        assert!(!Stage::InDoubt.may_become(Stage::Frozen));
        assert!(
            !Stage::Committed.may_become(Stage::Committed),
            "one caller acts"
        );
    }
}
