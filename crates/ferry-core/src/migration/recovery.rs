//! A restarted ferryd finishes every migration its records say was interrupted.
//!
//! - Source, claimed but never frozen: the container still runs; release the claim.
//! - Source, frozen: the CRIU hook found ferryd gone and resumed the source (or CRIU is
//!   stuck): resume it, verified, re-attached and announced.
//! - Source, in doubt: the hook keeps the source frozen; rebind its socket and settle with
//!   the destination (or an operator), as the live migration would have.
//! - Destination, receiving: nothing restored yet; discard.
//! - Destination, restored: keep the gated copy and settle with the source.
//! - Post-copy, draining: the source settles like an in-doubt one (the destination knows
//!   whether every page arrived); the destination is complete if its lazy-pages daemon's log
//!   says every page arrived, else its copy is killed and the migration lost (see `drain`).

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::Verdict;

use super::commit::{self, Frozen, SourceDoubt};
use super::hook::HookServer;
use super::record::{self, MigrationRecord, Role, Stage};
use super::resume::CheckpointProcess;
use super::{blocking, MigrationError};
use crate::container::Engine;
use crate::peer::tls::HostIdentity;

/// Runs once at startup, before peers are served.
pub async fn recover(engine: Arc<Engine>, identity: Option<Arc<HostIdentity>>) {
    let records = record::list(engine.paths());
    // An in-doubt source's scratch holds the socket its CRIU hook comes back to: keep it.
    let keep: Vec<std::path::PathBuf> = records
        .iter()
        .filter(|r| r.role == Role::Source && matches!(r.stage, Stage::InDoubt | Stage::Draining))
        .filter_map(|r| r.hook_socket.as_deref().and_then(|s| s.parent()))
        .map(|p| p.to_owned())
        .collect();
    let mut waiting = Vec::new();
    for rec in records.into_iter().filter(|r| !r.stage.is_final()) {
        tracing::warn!(migration = %rec.migration_id, role = ?rec.role, stage = %rec.stage, "finishing an interrupted migration");
        let id = rec.migration_id.clone();
        if let Err(e) = recover_one(&engine, identity.clone(), rec, &mut waiting).await {
            tracing::error!(migration = %id, error = %e, "could not finish an interrupted migration");
        }
    }
    // Containers the records do not explain: an uncommitted arrival with no waiting record is
    // discarded, a departure marked migrating runs here.
    let e = engine.clone();
    let _ = blocking(move || {
        e.recover_migrations(&waiting);
        sweep_scratch(&e, &keep);
        Ok(())
    })
    .await;
}

/// Scratch a killed ferryd left behind (its drop guards never ran): every `incoming-*` dir, and
/// every `migrate-*` dir but those an in-doubt source still needs (its CRIU hook socket).
fn sweep_scratch(engine: &Engine, keep: &[std::path::PathBuf]) {
    let paths = engine.paths();
    for dir in [paths.tmp(), paths.page_scratch()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("incoming-") || name.starts_with("migrate-");
            if !ours || keep.contains(&e.path()) {
                continue;
            }
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "removing a stale migration scratch dir");
            }
        }
    }
}

async fn recover_one(
    engine: &Arc<Engine>,
    identity: Option<Arc<HostIdentity>>,
    rec: MigrationRecord,
    waiting: &mut Vec<String>,
) -> Result<(), MigrationError> {
    let cfg = engine.inspect(&rec.container).ok().map(|r| r.config);
    let cfg = match cfg {
        Some(c) if c.id == rec.container_id => c,
        _ => {
            // The container is gone here: the record can only say so.
            let next = match rec.role {
                Role::Source => Stage::RolledBack,
                Role::Destination => Stage::Discarded,
            };
            record::transition(engine.paths(), &rec.migration_id, next, |r| {
                r.error = Some("the container was gone when ferryd restarted".into())
            })?;
            return Ok(());
        }
    };
    let id = rec.migration_id.clone();
    match (rec.role, rec.stage) {
        (Role::Source, Stage::Claimed) => {
            engine.end_migration(&cfg.name, crate::container::Status::Running);
            record::transition(engine.paths(), &id, Stage::RolledBack, |_| {})?;
        }
        (Role::Source, Stage::Frozen | Stage::Failed) => {
            waiting.push(cfg.id.clone());
            let process = rec.checkpoint.map(CheckpointProcess::Recorded);
            let e = engine.clone();
            blocking(move || {
                commit::resume_source_verified(&e, &cfg, &id, process)
                    .map_err(MigrationError::Internal)
            })
            .await?;
        }
        // A draining post-copy source lost its tunnel with ferryd: only the destination knows
        // whether every page arrived (committed) or not (lost).
        (Role::Source, Stage::InDoubt | Stage::Draining) => {
            waiting.push(cfg.id.clone());
            let Some(identity) = identity else {
                return Err(MigrationError::Internal(
                    "in doubt, but this ferryd has no peer identity to ask the destination".into(),
                ));
            };
            let sock = rec.hook_socket.clone().ok_or_else(|| {
                MigrationError::Internal("in doubt, but the record names no hook socket".into())
            })?;
            if let Some(dir) = sock.parent() {
                std::fs::create_dir_all(dir).map_err(|e| MigrationError::io(dir, e))?;
            }
            let doubt = SourceDoubt {
                engine: engine.clone(),
                identity,
                id: id.clone(),
                peer: rec.peer.clone(),
                cfg,
                frozen: Frozen {
                    hook: HookServer::bind(&sock)?,
                    process: rec.checkpoint.map(CheckpointProcess::Recorded),
                    detached: true,
                    frozen_at: Instant::now(),
                },
                work: None,
            };
            // The scratch of the interrupted migration (kept for the hook socket) goes once
            // the verdict is applied and CRIU has ended.
            let scratch = sock.parent().map(|p| p.to_owned());
            tokio::spawn(async move {
                let r = commit::settle_source(doubt, Verdict::Pending).await;
                tracing::warn!(migration = %id, result = ?r, "in-doubt migration settled after a restart");
                if let Some(dir) = scratch {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(path = %dir.display(), error = %e, "removing the settled migration's scratch");
                    }
                }
            });
        }
        (Role::Destination, Stage::Draining) => {
            waiting.push(cfg.id.clone());
            let e = engine.clone();
            let stage = blocking(move || super::drain::recover_destination(&e, &cfg, &id)).await?;
            tracing::warn!(%stage, "a post-copy destination interrupted while draining");
        }
        (Role::Destination, Stage::Receiving) => {
            let e = engine.clone();
            blocking(move || commit::discard_destination(&e, &id, &cfg)).await?;
        }
        (Role::Destination, Stage::Restored) => {
            waiting.push(cfg.id.clone());
            let engine = engine.clone();
            let source = rec.peer.clone();
            tokio::spawn(async move {
                let mut decisions = commit::register_waiting(&id);
                let r = commit::settle_destination(
                    engine,
                    identity,
                    id.clone(),
                    cfg,
                    source,
                    &mut decisions,
                )
                .await;
                commit::unregister_waiting(&id);
                tracing::warn!(migration = %id, result = ?r, "restored copy settled after a restart");
            });
        }
        (role, stage) => {
            tracing::warn!(?role, %stage, "nothing to do for this record");
        }
    }
    Ok(())
}
