//! The fenced commit: two-phase, with an in-doubt state instead of a guess.
//!
//! - The destination records `Committed` durably before it opens its gate, and a recorded
//!   verdict never changes ([`record::transition`]).
//! - The source records `InDoubt` before it sends `Commit`. If `Committed` does not come back,
//!   it stays frozen and asks the destination (`Inquire`, on fresh connections) until the answer
//!   is definite; it resumes only on `NotCommitted`.
//! - A destination whose restored copy never got `Commit` asks the source, and discards the copy
//!   only on the source's `NotCommitted` (it resumed).
//! - If the peer stays away, an operator decides: [`resolve`] (`ferry migration resolve`).
//!
//! The waiting itself runs in a task that outlives the API call, and a restarted ferryd starts
//! it again from the records (see `recovery`).

use std::collections::HashMap;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proto::{Message, MigrationMode, SenderMachine, Verdict};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::hook::HookServer;
use super::record::{self, RecordError, Role, Stage};
use super::report::{Downtime, MigrationReport, Outcome, Part, Phase};
use super::resume::{self, CheckpointProcess};
use super::source::{Outgoing, REPLY};
use super::wire::{Machine, Wire};
use super::{blocking, MigrationError};
use crate::container::{ContainerConfig, Engine};
use crate::peer::channel::{Demux, PeerConn};
use crate::peer::registry::Peers;
use crate::peer::tls::HostIdentity;

/// How long `ferry migrate` waits for an in-doubt verdict before it returns (the wait goes on).
const IN_DOUBT_GRACE: Duration = Duration::from_secs(30);
/// Between two inquiries.
const INQUIRE_EVERY: Duration = Duration::from_secs(2);

/// The source's held checkpoint: CRIU waits at `post-dump` for the hook's verdict.
pub(crate) struct Frozen {
    pub hook: HookServer,
    pub process: Option<CheckpointProcess>,
    /// The source veth is off the bridge.
    pub detached: bool,
    pub frozen_at: Instant,
}

impl Frozen {
    /// The checkpoint's exit status, if it ended (only known for our own child).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.process.as_mut() {
            Some(CheckpointProcess::Child(c)) => c.try_wait().ok().flatten(),
            _ => None,
        }
    }
}

/// An operator's choice for an in-doubt migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// The container keeps running on the source; the destination copy is discarded.
    ResumeSource,
    /// The container lives on the destination; the source copy is discarded.
    KeepDestination,
}

impl Decision {
    /// The verdict this decision stands for.
    pub fn verdict(self) -> Verdict {
        match self {
            Decision::KeepDestination => Verdict::Committed,
            Decision::ResumeSource => Verdict::NotCommitted,
        }
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Stage, String>>;

/// Tells the operator's `resolve` how its decision ended (it may have stopped listening).
pub(crate) fn answer(reply: Reply, result: &Result<Stage, MigrationError>) {
    let _ = reply.send(result.as_ref().map(|s| *s).map_err(|e| e.to_string()));
}
/// Where a waiting migration receives an operator's decision.
pub(crate) type Decisions = mpsc::UnboundedReceiver<(Decision, Reply)>;

/// Migrations waiting for a verdict in this process, by id: where an operator's decision goes.
type DecisionSender = mpsc::UnboundedSender<(Decision, Reply)>;
static WAITING: Mutex<Option<HashMap<String, DecisionSender>>> = Mutex::new(None);

pub(crate) fn register_waiting(id: &str) -> Decisions {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut w = WAITING.lock().unwrap_or_else(|p| p.into_inner());
    w.get_or_insert_with(HashMap::new).insert(id.to_owned(), tx);
    rx
}

pub(crate) fn unregister_waiting(id: &str) {
    let mut w = WAITING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = w.as_mut() {
        m.remove(id);
    }
}

/// `ferry migration resolve ID`: hands the decision to the task waiting on that migration.
pub async fn resolve(
    engine: &Engine,
    id: &str,
    decision: Decision,
) -> Result<Stage, MigrationError> {
    let rec = record::load(engine.paths(), id)?
        .ok_or_else(|| MigrationError::Record(RecordError::Unknown(id.to_owned())))?;
    if rec.stage.is_final() {
        return Err(MigrationError::Internal(format!(
            "migration {id} is already {}; nothing to resolve",
            rec.stage
        )));
    }
    let tx = {
        let w = WAITING.lock().unwrap_or_else(|p| p.into_inner());
        w.as_ref().and_then(|m| m.get(id).cloned())
    };
    let Some(tx) = tx else {
        return Err(MigrationError::Internal(format!(
            "migration {id} is {} but nothing here waits on it; is it still running?",
            rec.stage
        )));
    };
    let (reply, answer) = oneshot::channel();
    tx.send((decision, reply))
        .map_err(|_| MigrationError::Internal("the migration stopped waiting".into()))?;
    answer
        .await
        .map_err(|_| MigrationError::Internal("the migration stopped waiting".into()))?
        .map_err(MigrationError::Internal)
}

/// Asks `peer` what became of migration `id` on its side.
pub async fn inquire(
    identity: &HostIdentity,
    engine: &Engine,
    peer: &str,
    id: &str,
) -> Result<Verdict, MigrationError> {
    let peers = Peers::load(engine.paths())?;
    let entry = peers
        .get(peer)
        .cloned()
        .ok_or_else(|| MigrationError::UnknownPeer(peer.to_owned()))?;
    let ask = async {
        let conn = PeerConn::connect(identity, &entry.name, entry.addr).await?;
        let (sink, source) = conn.split();
        let (demux, control) = Demux::spawn(source);
        let mut wire = Wire::new(sink, demux, control, Machine::Sender(SenderMachine::new()));
        let question = Message::Inquire {
            migration_id: id.to_owned(),
        };
        let verdict = wire
            .request(question, "a verdict", REPLY, |m| match m {
                Message::Verdict {
                    migration_id,
                    verdict,
                } if migration_id == id => Some(verdict),
                _ => None,
            })
            .await;
        wire.close().await;
        verdict
    };
    super::wire::within("the peer's verdict", REPLY, ask).await
}

/// Answers a peer's `Inquire` from this host's record (the first message of a connection).
pub async fn answer_inquiry(engine: Arc<Engine>, mut wire: Wire, id: String) {
    let e = engine.clone();
    let i = id.clone();
    let verdict = blocking(move || Ok(verdict_for_peer(&e, &i)))
        .await
        .unwrap_or(Verdict::Pending);
    tracing::info!(migration = %id, ?verdict, "answered a verdict inquiry");
    let answer = Message::Verdict {
        migration_id: id,
        verdict,
    };
    if let Err(e) = wire.send(answer).await {
        tracing::warn!(error = %e, "answering a verdict inquiry");
    }
    wire.close().await;
}

/// This host's definite answer, deciding where it is still this host's to decide: a waiting
/// destination copy is committed (the source only asks once it sent `Commit`), a destination
/// still receiving is discarded.
fn verdict_for_peer(engine: &Arc<Engine>, id: &str) -> Verdict {
    let rec = match record::load(engine.paths(), id) {
        Ok(Some(r)) => r,
        // Never recorded here: nothing of it ever ran here.
        Ok(None) => return Verdict::NotCommitted,
        Err(e) => {
            tracing::warn!(error = %e, "reading a migration record for an inquiry");
            return Verdict::Pending;
        }
    };
    match (rec.role, rec.stage) {
        (Role::Destination, Stage::Restored) => {
            match commit_destination(engine, id, &rec.container) {
                Ok(_) => Verdict::Committed,
                Err(e) => {
                    tracing::warn!(error = %e, "committing on an inquiry");
                    stage_verdict(engine, id, rec.role)
                }
            }
        }
        (Role::Destination, Stage::Receiving) => {
            match record::transition(engine.paths(), id, Stage::Discarded, |_| {}) {
                Ok(_) => Verdict::NotCommitted,
                Err(_) => stage_verdict(engine, id, rec.role),
            }
        }
        (role, stage) => stage.verdict(role),
    }
}

fn stage_verdict(engine: &Engine, id: &str, role: Role) -> Verdict {
    match record::load(engine.paths(), id) {
        Ok(Some(r)) => r.stage.verdict(role),
        _ => Verdict::Pending,
    }
}

/// Destination: records `Committed` (post-copy: `Draining`, the pages still to come), then
/// opens the gate. Idempotent; refuses a discarded copy. Returns the stage recorded.
pub fn commit_destination(
    engine: &Arc<Engine>,
    id: &str,
    name: &str,
) -> Result<Stage, MigrationError> {
    let post_copy = record::load(engine.paths(), id)?.is_some_and(|r| r.post_copy);
    let target = if post_copy {
        Stage::Draining
    } else {
        Stage::Committed
    };
    match record::transition(engine.paths(), id, target, |_| {}) {
        Ok(_) => {}
        Err(RecordError::Stale {
            stage: stage @ (Stage::Committed | Stage::Draining),
            ..
        }) => return Ok(stage),
        Err(e) => return Err(e.into()),
    }
    // The verdict is durable: from here on this copy is the container, whatever happens.
    engine.commit_incoming(name).map_err(|e| {
        let msg = format!("opening the gate after the commit: {e}");
        record::note_cleanup_failure(engine.paths(), id, &msg);
        MigrationError::Container(e)
    })?;
    settle_later(engine.clone(), id.to_owned(), name.to_owned());
    Ok(target)
}

/// The rest of the commit ([`Engine::settle_incoming`]) on a thread of its own, so that the
/// reply does not wait for it.
fn settle_later(engine: Arc<Engine>, id: String, name: String) {
    let (paths, failed_id) = (engine.paths().clone(), id.clone());
    let spawned = std::thread::Builder::new()
        .name("ferry-settle".into())
        .spawn(move || {
            if let Err(e) = engine.settle_incoming(&name) {
                let msg = format!("removing the opened gates after the commit: {e}");
                record::note_cleanup_failure(engine.paths(), &id, &msg);
            }
        });
    if let Err(e) = spawned {
        let msg = format!("starting the removal of the opened gates: {e}");
        record::note_cleanup_failure(&paths, &failed_id, &msg);
    }
}

/// Destination: records `Discarded`, then removes the copy. Refuses a committed one.
pub fn discard_destination(
    engine: &Engine,
    id: &str,
    cfg: &ContainerConfig,
) -> Result<(), MigrationError> {
    match record::transition(engine.paths(), id, Stage::Discarded, |_| {}) {
        Ok(_)
        | Err(RecordError::Stale {
            stage: Stage::Discarded,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    engine.abort_incoming(cfg);
    Ok(())
}

/// Source: records `InDoubt`, sends `Commit`, and settles on the destination's verdict.
pub(crate) async fn commit_source(out: &mut Outgoing) -> Result<(), MigrationError> {
    out.step(Phase::Commit, "commit").await?;
    out.detach_source().await?;
    record::transition(out.engine.paths(), out.id(), Stage::InDoubt, |_| {})?;
    // From here the source must not resume on its own: the destination may already serve.
    let commit_sent = Instant::now();
    let sent = out
        .wire()?
        .request(
            Message::Commit {},
            "the destination's commit",
            REPLY,
            |m| match m {
                Message::Committed {} => Some(()),
                _ => None,
            },
        )
        .await;
    // The destination opens its gate before it answers: the downtime ends here.
    let committed_at = sent.as_ref().ok().map(|()| Instant::now());
    if let Some(at) = committed_at {
        out.span_since(Part::Commit, commit_sent, 0);
        if out.mode == MigrationMode::PostCopy {
            drain_source(out, at).await?;
        }
    }
    let frozen = out
        .frozen
        .take()
        .ok_or_else(|| MigrationError::Internal("commit without a frozen source".into()))?;
    let downtime_from = frozen_at(&frozen);
    let doubt = SourceDoubt {
        engine: out.engine.clone(),
        identity: out.identity.clone(),
        id: out.id().to_owned(),
        peer: out.report.to.clone(),
        cfg: out.cfg.clone(),
        frozen,
        work: Some(out.work.clone()),
    };
    let verdict = match sent {
        Ok(()) => Verdict::Committed,
        Err(e) => {
            tracing::warn!(error = %e, "no reply to Commit: in doubt, asking the destination");
            out.progress.note(format!(
                "in doubt ({e}): asking the destination for its verdict"
            ));
            Verdict::Pending
        }
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let stage = settle_source(doubt, verdict).await;
        let _ = tx.send(stage);
    });
    let stage = match tokio::time::timeout(IN_DOUBT_GRACE, rx).await {
        Ok(Ok(stage)) => stage,
        Ok(Err(_)) => Err("the in-doubt task ended without a verdict".into()),
        Err(_) => {
            return Err(MigrationError::InDoubt(format!(
                "no verdict from {} within {IN_DOUBT_GRACE:?}; the container stays frozen here \
                 until {} answers, or until `ferry migration resolve {}` decides",
                out.report.to,
                out.report.to,
                out.id()
            )))
        }
    };
    match stage {
        Ok(Stage::Committed) => {
            // In doubt first: the downtime lasted until the verdict was known.
            let end = committed_at.unwrap_or_else(Instant::now);
            out.report.downtime_ms = Some(end.duration_since(downtime_from).as_millis() as u64);
            // Post-copy: the source lets go after the last page, not at the commit.
            let let_go_from = match &out.report.lazy {
                Some(l) => end + Duration::from_millis(l.drain_ms),
                None => end,
            };
            out.report.source_cleanup_ms = Some(let_go_from.elapsed().as_millis() as u64);
            let crit = out.work.path().join("criu-work");
            // A lazy dump's statistics come from its page server at the end and hold no
            // page counts (and a bogus frozen time): only stop-and-copy's describe the freeze.
            let dump_stats = crate::criu::read_dump_stats(&crit)
                .ok()
                .filter(|_| out.mode == MigrationMode::StopAndCopy);
            out.report.criu_dump = dump_stats
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok());
            let mut window = Downtime::from_spans(downtime_from, end, &out.spans);
            if let Some(r) = &out.restored {
                window = window.with_restore(r);
            }
            if let Some(s) = &dump_stats {
                window = window.with_criu_dump(s);
            }
            out.report.downtime_breakdown = Some(window);
            out.close_tunnel(true).await;
            out.progress.done(&mut out.report, 0);
            Ok(())
        }
        Ok(Stage::RolledBack) => Err(MigrationError::PeerAborted(
            "the destination did not commit; the container runs here again".into(),
        )),
        Ok(other) => Err(MigrationError::Internal(format!(
            "the migration ended {other}; see `ferry migration ls`"
        ))),
        Err(e) => Err(MigrationError::Internal(e)),
    }
}

/// Post-copy after `Committed`: the source serves the rest of its memory; the migration is
/// complete only with the last page (see [`super::drain`]).
async fn drain_source(out: &mut Outgoing, committed_at: Instant) -> Result<(), MigrationError> {
    record::transition(out.engine.paths(), out.id(), Stage::Draining, |_| {})?;
    out.progress.done(&mut out.report, 0);
    out.progress.start(Phase::Drain);
    let (engine, cfg, id) = (out.engine.clone(), out.cfg.clone(), out.id().to_owned());
    let mut process = out.frozen.as_mut().and_then(|f| f.process.take());
    let (Some(tunnel), Some(wire)) = (out.tunnel.as_ref(), out.wire.as_mut()) else {
        return Err(MigrationError::Internal(
            "post-copy without its tunnel".into(),
        ));
    };
    let drained = super::drain::source(
        &engine,
        wire,
        tunnel,
        &mut process,
        &cfg,
        &id,
        &out.progress,
        committed_at,
        out.lazy_total,
    )
    .await;
    if let Some(f) = out.frozen.as_mut() {
        f.process = process;
    }
    let mut lazy = drained?;
    if let Some(f) = out.frozen.as_ref() {
        lazy.fully_copied_ms = frozen_at(f).elapsed().as_millis() as u64;
    }
    out.report.bytes.pages = lazy.bytes;
    out.progress.done(&mut out.report, lazy.bytes);
    out.report.lazy = Some(lazy);
    if let Some(guard) = out.lazy_port.take() {
        if let Err(e) = guard.remove() {
            out.report
                .cleanup_failures
                .push(format!("removing the lazy page port's guard: {e}"));
        }
    }
    Ok(())
}

/// Downtime runs from CRIU's pre-dump action (just before it freezes the tasks).
pub(crate) fn frozen_at(f: &Frozen) -> Instant {
    f.hook
        .seen()
        .iter()
        .find(|e| e.action == "pre-dump")
        .map(|e| e.at)
        .unwrap_or(f.frozen_at)
}

/// A source held frozen until the verdict is known.
pub(crate) struct SourceDoubt {
    pub engine: Arc<Engine>,
    pub identity: Arc<HostIdentity>,
    pub id: String,
    pub peer: String,
    pub cfg: ContainerConfig,
    pub frozen: Frozen,
    /// The migration's scratch (CRIU still writes there until it exits).
    pub work: Option<Arc<tempfile::TempDir>>,
}

/// Waits for a definite verdict (the destination's, or an operator's) and applies it.
pub(crate) async fn settle_source(doubt: SourceDoubt, known: Verdict) -> Result<Stage, String> {
    let mut decisions = register_waiting(&doubt.id);
    let mut verdict = known;
    let mut reply: Option<Reply> = None;
    let mut first = true;
    while verdict == Verdict::Pending {
        tokio::select! {
            d = decisions.recv() => {
                if let Some((d, r)) = d {
                    tracing::warn!(migration = %doubt.id, ?d, "operator resolved an in-doubt migration");
                    verdict = d.verdict();
                    reply = Some(r);
                }
            }
            _ = tokio::time::sleep(if first { Duration::ZERO } else { INQUIRE_EVERY }) => {
                first = false;
                match inquire(&doubt.identity, &doubt.engine, &doubt.peer, &doubt.id).await {
                    Ok(v) => verdict = v,
                    Err(e) => tracing::info!(migration = %doubt.id, error = %e, "in doubt: destination unreachable"),
                }
                // The source asks only after `Commit`; `Pending` from a destination is odd.
            }
        }
    }
    unregister_waiting(&doubt.id);
    let result = blocking(move || Ok(apply_source_verdict(doubt, verdict)))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Some(r) = reply {
        let _ = r.send(result.clone());
    }
    result
}

/// Committed: CRIU lets the source go and its traces go. Not committed: resume, verified.
fn apply_source_verdict(mut doubt: SourceDoubt, verdict: Verdict) -> Result<Stage, String> {
    let paths = doubt.engine.paths().clone();
    let id = doubt.id.clone();
    let note = |msg: String| {
        tracing::warn!(migration = %id, "{msg}");
        if let Err(e) = record::update(&paths, &id, |r| r.cleanup_failures.push(msg.clone())) {
            tracing::warn!(error = %e, "recording a cleanup failure");
        }
    };
    if verdict == Verdict::Committed {
        record::transition(&paths, &id, Stage::Committed, |_| {}).map_err(|e| e.to_string())?;
        doubt.frozen.hook.verdict(true);
        if let Some(p) = doubt.frozen.process.take() {
            if let Err(e) = resume::wait_gone(p, Duration::from_secs(60)) {
                note(format!("the source's checkpoint did not end: {e}"));
            }
        }
        if let Err(e) = doubt
            .engine
            .finish_migration_out(&doubt.cfg.name, &doubt.cfg.id)
        {
            note(format!("removing the source copy: {e}"));
        }
        drop(doubt.work.take());
        return Ok(Stage::Committed);
    }
    if verdict == Verdict::Lost {
        // Post-copy died after the resume: there is nothing to resume to (see `drain`).
        let process = doubt.frozen.process.take();
        let why = "the destination reports the post-copy migration lost";
        super::drain::lost_on_source(&doubt.engine, process, &doubt.cfg, &id, why);
        return Ok(Stage::Lost);
    }
    doubt.frozen.hook.verdict(false);
    resume_source_verified(&doubt.engine, &doubt.cfg, &id, doubt.frozen.process.take())
}

/// Resumes the source (the hook has said `fail` or is gone) and records what is true.
pub(crate) fn resume_source_verified(
    engine: &Engine,
    cfg: &ContainerConfig,
    id: &str,
    process: Option<CheckpointProcess>,
) -> Result<Stage, String> {
    match resume::resume_source(engine, cfg, process) {
        Ok(report) => {
            record::transition(engine.paths(), id, Stage::RolledBack, |r| {
                r.rollback = serde_json::to_value(&report).ok();
            })
            .map_err(|e| e.to_string())?;
            Ok(Stage::RolledBack)
        }
        Err(e) => {
            let msg = e.to_string();
            let report = e.report().and_then(|r| serde_json::to_value(r).ok());
            if let Err(re) = record::transition(engine.paths(), id, Stage::Failed, |r| {
                r.error = Some(msg.clone());
                r.rollback = report;
            }) {
                tracing::warn!(error = %re, "recording a failed rollback");
            }
            Err(msg)
        }
    }
}

fn settled_as(out: &Outgoing, stage: Stage) -> bool {
    matches!(record::load(out.engine.paths(), out.id()), Ok(Some(r)) if r.stage == stage)
}

/// Ends an outgoing migration: on error, abort the destination and put the source back,
/// verified; then the report, in the record and to the caller.
pub(crate) async fn finish_source(
    mut out: Outgoing,
    result: Result<(), MigrationError>,
    t0: Instant,
) -> Result<MigrationReport, (MigrationError, MigrationReport)> {
    let result = match result {
        Ok(()) => {
            out.report.outcome = Some(Outcome::Committed);
            Ok(())
        }
        Err(err @ MigrationError::InDoubt(_)) => {
            out.report.outcome = Some(Outcome::InDoubt);
            Err(err)
        }
        Err(err @ MigrationError::PostCopyLost(_)) => {
            // Nothing to roll back to: the source stays frozen as the error says.
            out.close_tunnel(false).await;
            out.keep_logs();
            out.frozen.take();
            out.report.outcome = Some(Outcome::Lost);
            out.report.error = Some(err.to_string());
            Err(err)
        }
        Err(err) => {
            out.progress.start(Phase::Rollback);
            if let Some(w) = out.wire.as_mut() {
                w.abort(&err.to_string()).await;
            }
            // Post-copy: CRIU serves the lazy pages through the tunnel, and would thaw the
            // source with its sockets still in repair mode the moment the tunnel closed; the
            // rollback below stops CRIU first, so the tunnel goes after it.
            let lazy = out.mode == MigrationMode::PostCopy;
            if !lazy {
                out.close_tunnel(false).await;
            }
            out.keep_logs();
            let outcome = match out.frozen.take() {
                Some(mut f) => {
                    f.hook.verdict(false);
                    let (e, cfg, id) = (out.engine.clone(), out.cfg.clone(), out.id().to_owned());
                    let process = f.process.take();
                    let resumed = blocking(move || {
                        let r = resume_source_verified(&e, &cfg, &id, process);
                        drop(f);
                        Ok(r)
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    let outcome = match resumed {
                        Ok(_) => Outcome::RolledBack,
                        Err(why) => {
                            out.report.cleanup_failures.push(why);
                            Outcome::RollbackFailed
                        }
                    };
                    out.close_tunnel(false).await;
                    outcome
                }
                // Settled while in doubt (the destination said not committed, or an operator).
                None if settled_as(&out, Stage::RolledBack) => Outcome::RolledBack,
                None => {
                    // Never frozen: the container ran all along; only the claim goes.
                    if let Err(e) = out
                        .engine
                        .try_end_migration(&out.cfg.name, crate::container::Status::Running)
                    {
                        out.report
                            .cleanup_failures
                            .push(format!("releasing the claim: {e}"));
                    }
                    if let Err(e) =
                        record::transition(out.engine.paths(), out.id(), Stage::RolledBack, |_| {})
                    {
                        out.report.cleanup_failures.push(e.to_string());
                    }
                    Outcome::Refused
                }
            };
            out.progress.done(&mut out.report, 0);
            out.report.outcome = Some(outcome);
            out.report.error = Some(err.to_string());
            Err(err)
        }
    };
    if let Some(w) = out.wire.as_ref() {
        w.close().await;
    }
    out.report.total_ms = t0.elapsed().as_millis() as u64;
    let report = out.report.clone();
    if let Err(e) = record::update(out.engine.paths(), out.id(), |r| {
        r.report = serde_json::to_value(&report).ok();
        r.error = report.error.clone();
    }) {
        tracing::warn!(error = %e, "recording the migration report");
    }
    match result {
        Ok(()) => Ok(report),
        Err(e) => Err((e, report)),
    }
}

/// Destination: a restored copy whose connection is gone waits for a definite verdict: the
/// source's answer to our inquiries, the source's own inquiry (which commits through the
/// record), or an operator. It never discards on a guess.
pub(crate) async fn settle_destination(
    engine: Arc<Engine>,
    identity: Option<Arc<HostIdentity>>,
    id: String,
    cfg: ContainerConfig,
    source: String,
    decisions: &mut Decisions,
) -> Result<Stage, MigrationError> {
    loop {
        if let Some(r) = record::load(engine.paths(), &id)? {
            if r.stage.is_final() {
                return Ok(r.stage);
            }
        }
        let verdict = tokio::select! {
            d = decisions.recv() => match d {
                Some((d, reply)) => {
                    let r = apply_destination_verdict(&engine, &id, &cfg, d.verdict()).await;
                    answer(reply, &r);
                    return r;
                }
                None => Verdict::Pending,
            },
            _ = tokio::time::sleep(INQUIRE_EVERY) => match identity.as_deref() {
                Some(identity) => match inquire(identity, &engine, &source, &id).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::info!(migration = %id, error = %e, "restored copy waits: the source is unreachable");
                        Verdict::Pending
                    }
                },
                None => Verdict::Pending,
            },
        };
        if verdict != Verdict::Pending {
            return apply_destination_verdict(&engine, &id, &cfg, verdict).await;
        }
    }
}

async fn apply_destination_verdict(
    engine: &Arc<Engine>,
    id: &str,
    cfg: &ContainerConfig,
    verdict: Verdict,
) -> Result<Stage, MigrationError> {
    let (e, i, c) = (engine.clone(), id.to_owned(), cfg.clone());
    blocking(move || match verdict {
        Verdict::Committed => commit_destination(&e, &i, &c.name),
        _ => discard_destination(&e, &i, &c).map(|()| Stage::Discarded),
    })
    .await
}
