//! `GET /v1/events`: container and migration events, streamed as NDJSON ([`Event`]).
//!
//! Each subscriber gets its own watcher, which compares this host's container records and
//! migration records every [`TICK`] and sends what changed. Watching the records, not the
//! handlers, catches every change whatever made it (a command, an exit, a restart policy, a
//! migration from a peer, a ferryd restart); a change undone within one tick is not seen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ferry_core::api::Event;
use ferry_core::container::{ContainerRecord, Status};
use ferry_core::migration::record::MigrationRecord;

use crate::api::{ApiResult, AppState, S};

/// How often records are compared.
const TICK: Duration = Duration::from_millis(250);

/// What a watcher remembers of the host between ticks.
#[derive(Default)]
pub struct Snapshot {
    containers: BTreeMap<String, ContainerRecord>,
    migrations: BTreeMap<String, String>,
}

impl Snapshot {
    /// The host's records now (blocking: runc and files), with the migration records whole.
    fn take(state: &AppState) -> (Snapshot, Vec<MigrationRecord>) {
        let containers = state
            .engine
            .list()
            .into_iter()
            .map(|r| (r.config.id.clone(), r))
            .collect();
        let records = ferry_core::migration::record::list(state.engine.paths());
        let migrations = records
            .iter()
            .map(|m| (m.migration_id.clone(), m.stage.to_string()))
            .collect();
        (
            Snapshot {
                containers,
                migrations,
            },
            records,
        )
    }
}

/// The events that lead from `old` to `new`, in order: containers first, then migrations.
pub fn diff(old: &Snapshot, new: &Snapshot, migrations: &[MigrationRecord]) -> Vec<Event> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut out = Vec::new();
    let ev = |action: &str, r: &ContainerRecord, detail: Option<String>| Event {
        time: now.clone(),
        kind: "container".into(),
        action: action.into(),
        name: r.config.name.clone(),
        id: r.config.id.clone(),
        detail,
    };
    for (id, r) in &new.containers {
        match old.containers.get(id) {
            None => {
                out.push(ev("create", r, None));
                if r.status != Status::Created {
                    out.push(ev(arrival(Status::Created, r), r, detail(r)));
                }
            }
            Some(prev) if prev.status != r.status => {
                out.push(ev(arrival(prev.status, r), r, detail(r)));
            }
            // Running then and now, but a different run: it exited and started again.
            Some(prev) if r.status == Status::Running && prev.started_at != r.started_at => {
                out.push(ev("restart", r, None));
            }
            Some(_) => {}
        }
    }
    for (id, r) in &old.containers {
        if !new.containers.contains_key(id) {
            // Stopped and removed within one tick: its end still comes before its removal.
            if matches!(r.status, Status::Running | Status::Migrating) {
                out.push(ev("die", r, None));
            }
            out.push(ev("destroy", r, None));
        }
    }
    for m in migrations {
        if old.migrations.get(&m.migration_id) != Some(&m.stage.to_string()) {
            let role = match m.role {
                ferry_core::migration::record::Role::Source => "to",
                ferry_core::migration::record::Role::Destination => "from",
            };
            out.push(Event {
                time: now.clone(),
                kind: "migration".into(),
                action: m.stage.to_string(),
                name: m.container.clone(),
                id: m.migration_id.clone(),
                detail: Some(format!("{role} {}", m.peer)),
            });
        }
    }
    out
}

/// The action of a container that reached its current status from `from`.
fn arrival(from: Status, r: &ContainerRecord) -> &'static str {
    match r.status {
        Status::Running if from == Status::Checkpointed => "restore",
        Status::Running => "start",
        Status::Stopped => "die",
        Status::Checkpointed => "checkpoint",
        Status::Migrating => "migrating",
        Status::Error => "error",
        Status::Created => "create",
    }
}

fn detail(r: &ContainerRecord) -> Option<String> {
    match r.status {
        Status::Stopped => r.exit.as_ref().map(|e| match (e.code, e.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".to_owned(),
        }),
        Status::Error => r.error.clone(),
        _ => None,
    }
}

/// An event about `r` that no record change shows (see `AppState::notes`).
pub fn note(r: &ContainerRecord, action: &str, detail: &str) -> Event {
    Event {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        kind: "container".into(),
        action: action.into(),
        name: r.config.name.clone(),
        id: r.config.id.clone(),
        detail: Some(detail.to_owned()),
    }
}

pub async fn stream(State(s): S) -> ApiResult<Response> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    let mut notes = s.notes.subscribe();
    tokio::spawn(async move {
        let take = |s: Arc<AppState>| async move {
            tokio::task::spawn_blocking(move || Snapshot::take(&s))
                .await
                .ok()
        };
        let Some((mut last, _)) = take(s.clone()).await else {
            return;
        };
        loop {
            tokio::time::sleep(TICK).await;
            if tx.is_closed() {
                return;
            }
            let Some((now, migrations)) = take(s.clone()).await else {
                return;
            };
            let mut out = Vec::new();
            // After the record changes of the tick: a note about a new container follows
            // its `create`. A subscriber too slow for the notes' buffer loses the oldest.
            let mut noted = Vec::new();
            loop {
                match notes.try_recv() {
                    Ok(e) => noted.push(e),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
            for e in diff(&last, &now, &migrations).into_iter().chain(noted) {
                if let Ok(mut line) = serde_json::to_vec(&e) {
                    line.push(b'\n');
                    out.extend(line);
                }
            }
            last = now;
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(Body::from_stream(stream).into_response())
}
