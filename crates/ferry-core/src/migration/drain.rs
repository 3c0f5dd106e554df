//! Post-copy after the commit: the container already runs on the destination, and the memory
//! it has not touched yet still moves from the frozen source (page faults first, the rest in the
//! background, both by CRIU's lazy-pages daemon through the tunnel).
//!
//! The migration is done only when the last page has arrived: then the source's CRIU lets the
//! source go, and both sides record `Committed`. If the source, the destination or the link
//! dies before that, the container cannot be completed anywhere:
//! - the destination kills its copy *before* its lazy-pages daemon learns that the source is
//!   gone (a daemon that exits lets the process read zeroes for the missing pages; the tunnel
//!   holds the daemon's connection open until then), and records `Lost`;
//! - the source kills its CRIU before it learns that the destination is gone (CRIU would thaw
//!   the source with its network still locked), keeps the source frozen at the freeze's state,
//!   marks the container in error with what was lost, and records `Lost`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::Message;

use super::record::{self, Stage};
use super::report::{LazyReport, Phase, Progress};
use super::resume::{self, CheckpointProcess};
use super::wire::Wire;
use super::{blocking, MigrationError};
use crate::container::{ContainerConfig, Engine};
use crate::criu::{LazyPagesDaemon, LazyTransfer};
use crate::peer::tunnel::Tunnel;

/// How often the drain looks at the daemon, the tunnel and the wire.
const POLL: Duration = Duration::from_millis(20);
/// No page bytes and no message for this long while pages are still due: the other side is
/// gone (both sides send heartbeats while they work).
const STALL: Duration = Duration::from_secs(15);
/// After the daemon finished: for the tunnel's last bytes (CRIU's goodbye) to pass.
const TUNNEL_END: Duration = Duration::from_secs(5);
/// After `LazyComplete`: for the source's CRIU to see its connection end and let go.
const LINGER: Duration = Duration::from_secs(10);

/// The destination's drain: waits for its lazy-pages daemon to finish, then says so.
pub(super) async fn destination(
    engine: Arc<Engine>,
    wire: &mut Wire,
    tunnel: Option<Tunnel>,
    daemon: Option<LazyPagesDaemon>,
    cfg: ContainerConfig,
    id: &str,
) -> Result<Stage, MigrationError> {
    let (Some(tunnel), Some(mut daemon)) = (tunnel, daemon) else {
        let why = "post-copy without a lazy-pages daemon or its tunnel".to_owned();
        return lose_destination(&engine, wire, None, None, &cfg, id, why).await;
    };
    let log = daemon.log_path().to_owned();
    let _alive = wire.heartbeat("drain");
    let mut last = (tunnel.stats(), Instant::now());
    let failure = loop {
        match daemon.try_wait() {
            Ok(Some(())) => break None,
            Ok(None) => {}
            Err(e) => break Some(format!("the lazy-pages daemon failed: {e}")),
        }
        if let Some(why) = tunnel.broken() {
            break Some(format!("the page stream from the source broke: {why}"));
        }
        match tokio::time::timeout(POLL, wire.recv()).await {
            Err(_) | Ok(Ok(Message::Progress { .. })) => {}
            Ok(Ok(other)) => break Some(format!("the source sent {}", other.name())),
            Ok(Err(e)) => break Some(format!("lost the source: {e}")),
        }
        let now = tunnel.stats();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            break Some(format!("no page bytes from the source for {STALL:?}"));
        }
    };
    if let Some(why) = failure {
        return lose_destination(&engine, wire, Some(tunnel), Some(daemon), &cfg, id, why).await;
    }
    let bytes = match tokio::time::timeout(TUNNEL_END, tunnel.wait()).await {
        Ok(Ok(stats)) => stats.from_peer,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the page tunnel ended badly after the last page");
            last.0.from_peer
        }
        Err(_) => last.0.from_peer,
    };
    let moved = LazyTransfer::read(&log);
    record::transition(engine.paths(), id, Stage::Committed, |_| {})?;
    wire.send(Message::LazyComplete {
        bytes,
        pages: moved.copied_pages,
        faults: moved.faults,
    })
    .await?;
    tracing::info!(migration = %id, bytes, pages = moved.copied_pages, faults = moved.faults, "post-copy complete");
    Ok(Stage::Committed)
}

/// Kills the copy first, then lets the daemon and the tunnel go, then records and tells.
async fn lose_destination(
    engine: &Arc<Engine>,
    wire: &mut Wire,
    tunnel: Option<Tunnel>,
    daemon: Option<LazyPagesDaemon>,
    cfg: &ContainerConfig,
    id: &str,
    why: String,
) -> Result<Stage, MigrationError> {
    tracing::error!(migration = %id, %why, "post-copy lost its source; killing the copy");
    let (e, c) = (engine.clone(), cfg.clone());
    let killed = blocking(move || Ok(e.destroy_lost_copy(&c)?)).await;
    drop(daemon);
    if let Some(t) = tunnel {
        t.abort();
    }
    let msg = format!(
        "post-copy migration failed after the container resumed here: {why}. The copy was \
         killed, since part of its memory never arrived; what changed in it since the commit \
         is lost"
    );
    record::transition(engine.paths(), id, Stage::Lost, |r| {
        r.error = Some(msg.clone());
        if let Err(e) = &killed {
            r.cleanup_failures.push(format!("killing the copy: {e}"));
        }
    })?;
    wire.abort(&msg).await;
    Ok(Stage::Lost)
}

/// The source's drain: serves pages (CRIU does, through the tunnel) until the destination
/// says it has them all and the checkpoint ends. On failure the source is kept frozen (see the
/// module docs) and the error says what was lost.
#[allow(clippy::too_many_arguments)]
pub(super) async fn source(
    engine: &Arc<Engine>,
    wire: &mut Wire,
    tunnel: &Tunnel,
    process: &mut Option<CheckpointProcess>,
    cfg: &ContainerConfig,
    id: &str,
    progress: &Progress,
    committed_at: Instant,
    total: Option<u64>,
) -> Result<LazyReport, MigrationError> {
    let mut last = (tunnel.stats(), Instant::now());
    let mut complete: Option<(u64, u64, u64)> = None;
    let mut complete_at: Option<Instant> = None;
    let failure = loop {
        // Once the destination has every page, a closed stream is only the goodbye.
        if let (Some(why), None) = (tunnel.broken(), complete) {
            break Some(format!("the page stream to the destination broke: {why}"));
        }
        let exited = match process.as_mut() {
            Some(CheckpointProcess::Child(c)) => c.try_wait().ok().flatten(),
            _ => None,
        };
        match (exited, complete) {
            (Some(s), Some(_)) if s.success() => break None,
            (Some(s), _) if !s.success() => {
                break Some(format!("CRIU's lazy page server failed ({s})"))
            }
            _ => {}
        }
        if let Some(at) = complete_at {
            // Every page arrived: CRIU only waits for its connection to close. Close it (CRIU
            // takes that for the end); whatever still lingers is the verdict's to clean up.
            if at.elapsed() > LINGER {
                tunnel.abort();
            }
            if at.elapsed() > 2 * LINGER {
                break None;
            }
        }
        match tokio::time::timeout(POLL, wire.recv()).await {
            Err(_) | Ok(Ok(Message::Progress { .. })) => {}
            Ok(Ok(Message::LazyComplete {
                bytes,
                pages,
                faults,
            })) => {
                complete = Some((bytes, pages, faults));
                complete_at = Some(Instant::now());
            }
            Ok(Ok(other)) => break Some(format!("the destination sent {}", other.name())),
            // The destination closes once it sent `LazyComplete`; only then is that fine.
            Ok(Err(_)) if complete.is_some() => tokio::time::sleep(POLL).await,
            Ok(Err(e)) => break Some(format!("lost the destination: {e}")),
        }
        let now = tunnel.stats();
        if now != last.0 {
            match total {
                Some(t) => progress.bytes_of(Phase::Drain, now.to_peer, t),
                None => progress.bytes(Phase::Drain, now.to_peer),
            }
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL && complete.is_none() {
            break Some(format!("the destination asked for no page for {STALL:?}"));
        }
    };
    if let Some(why) = failure {
        return Err(lose_source(engine, process.take(), cfg, id, why).await);
    }
    let (bytes, pages, faults) = complete.unwrap_or_default();
    let drain = committed_at.elapsed();
    Ok(LazyReport {
        bytes,
        drain_ms: drain.as_millis() as u64,
        fully_copied_ms: 0,
        pull_mb_s: bytes as f64 / 1e6 / drain.as_secs_f64().max(1e-3),
        pages,
        pages_on_demand: faults,
        pages_pushed: pages.saturating_sub(faults),
    })
}

/// Kills CRIU at once (the tasks stay frozen), records `Lost`, and marks the container.
async fn lose_source(
    engine: &Arc<Engine>,
    process: Option<CheckpointProcess>,
    cfg: &ContainerConfig,
    id: &str,
    why: String,
) -> MigrationError {
    tracing::error!(migration = %id, %why, "post-copy lost its destination; holding the source frozen");
    let (e, c, i) = (engine.clone(), cfg.clone(), id.to_owned());
    let msg = blocking(move || Ok(lost_on_source(&e, process, &c, &i, &why)))
        .await
        .unwrap_or_else(|e| e.to_string());
    MigrationError::PostCopyLost(msg)
}

/// The source's side of a lost post-copy migration: CRIU is stopped before it can thaw the
/// source (the tasks, if CRIU has not already ended them, stay frozen as at the freeze), the
/// record says `Lost`, and the container is marked in error with what was lost (returned).
pub(super) fn lost_on_source(
    engine: &Engine,
    process: Option<CheckpointProcess>,
    cfg: &ContainerConfig,
    id: &str,
    why: &str,
) -> String {
    let held = resume::hold_frozen(engine, cfg, process);
    let freezer =
        crate::runtime::freezer::Freezer::for_container(&engine.config().cgroup_parent, &cfg.id);
    let kept = freezer.tasks().is_ok_and(|t| !t.is_empty());
    let what_is_left = if kept {
        "This host holds the container frozen as it was at the freeze; what it did on the \
         destination since the commit is lost"
    } else {
        // CRIU takes a closed page connection for the end of the transfer and ends the
        // source: with ferryd gone, nothing could stop it.
        "Its processes are gone here too: CRIU ended them when its page connection closed. \
         The container's state is lost; its filesystem and volumes remain"
    };
    let msg = format!(
        "post-copy migration {id} failed after the container resumed on the destination: \
         {why}. The destination kills its copy, since part of its memory never arrived. \
         {what_is_left}"
    );
    if let Err(e) = record::transition(engine.paths(), id, Stage::Lost, |r| {
        r.error = Some(msg.clone());
        if let (Err(e), true) = (&held, kept) {
            r.cleanup_failures
                .push(format!("holding the source frozen: {e}"));
        }
    }) {
        tracing::warn!(error = %e, "recording a lost post-copy migration");
    }
    if let Err(e) = engine.fail_migration(&cfg.name, &msg) {
        tracing::warn!(error = %e, "marking the source container");
    }
    msg
}

/// A restarted ferryd finds a destination copy that was draining when it died: complete if
/// its lazy-pages daemon's log says every page arrived; otherwise the copy is killed (pages
/// are missing) and the migration recorded lost.
pub(super) fn recover_destination(
    engine: &Engine,
    cfg: &ContainerConfig,
    id: &str,
) -> Result<Stage, MigrationError> {
    let log = engine
        .container_dir(&cfg.id)
        .join("criu-work")
        .join(crate::container::LAZY_PAGES_LOG);
    let moved = LazyTransfer::read(&log);
    if moved.total_pages > 0 && moved.copied_pages == moved.total_pages {
        record::transition(engine.paths(), id, Stage::Committed, |_| {})?;
        return Ok(Stage::Committed);
    }
    let killed = engine.destroy_lost_copy(cfg);
    let msg = format!(
        "post-copy migration {id} was interrupted on this host (ferryd stopped) before the last \
         page arrived ({} of {} pages): the copy was killed; what changed in it since the \
         commit is lost",
        moved.copied_pages, moved.total_pages
    );
    record::transition(engine.paths(), id, Stage::Lost, |r| {
        r.error = Some(msg.clone());
        if let Err(e) = &killed {
            r.cleanup_failures.push(format!("killing the copy: {e}"));
        }
    })?;
    Ok(Stage::Lost)
}
