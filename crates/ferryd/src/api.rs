//! The HTTP/JSON API on the unix socket. Handlers are thin: they parse, hand the work to the
//! engine on the blocking pool, and map errors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferry_core::api::*;
use ferry_core::container::{Cancel, ContainerRecord, Engine, RunOptions};
use serde::Deserialize;

use crate::error::ApiError;
use crate::json::{ApiJson, ApiQuery};
use crate::DaemonArgs;

pub struct AppState {
    pub engine: Arc<Engine>,
    pub host_name: String,
    pub args: DaemonArgs,
    /// CRIU's capabilities, probed once at startup (a probe runs several CRIU checks).
    pub criu: serde_json::Value,
    /// This host's peer identity, when `--peer-listen` is set up.
    pub identity: Option<Arc<ferry_core::peer::tls::HostIdentity>>,
    /// Events no record change shows (a warning of `run`), for every `/v1/events` stream.
    pub notes: tokio::sync::broadcast::Sender<Event>,
}

pub(crate) type S = State<Arc<AppState>>;
pub(crate) type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/images", get(images_list))
        .route("/v1/images/import", post(images_import))
        .route("/v1/images/{reference}", delete(images_rm))
        .route("/v1/images/{reference}/save", post(images_save))
        .route("/v1/containers", get(containers_list).post(containers_run))
        .route(
            "/v1/containers/{name}",
            get(containers_inspect).delete(containers_rm),
        )
        .route("/v1/containers/{name}/start", post(containers_start))
        .route("/v1/containers/{name}/stop", post(containers_stop))
        .route("/v1/containers/{name}/kill", post(containers_kill))
        .route("/v1/containers/{name}/logs", get(containers_logs))
        .route("/v1/containers/{name}/exec", post(crate::exec::exec))
        .route("/v1/containers/{name}/attach", post(crate::attach::attach))
        .route("/v1/containers/{name}/checkpoint", post(checkpoint))
        .route("/v1/containers/{name}/restore", post(restore_named))
        .route(
            "/v1/containers/{name}/checkpoints/{snapshot}",
            delete(checkpoint_rm),
        )
        .route("/v1/checkpoints", get(checkpoint_ls))
        .route("/v1/restore", post(restore_import))
        .route("/v1/containers/{name}/migrate", post(migrate))
        .route("/v1/migrations", get(migrations_ls))
        .route("/v1/migrations/{id}/resolve", post(migrations_resolve))
        .route("/v1/events", get(crate::events::stream))
        .route("/v1/stats", get(crate::stats::all))
        .route("/v1/volumes", get(crate::volumes::list))
        .route("/v1/volumes/prune", post(crate::volumes::prune))
        .route(
            "/v1/volumes/{name}",
            get(crate::volumes::inspect).delete(crate::volumes::remove),
        )
        .route("/v1/hosts", get(hosts_ls).post(hosts_add))
        .route("/v1/hosts/{name}", delete(hosts_rm))
        .merge(crate::registry::routes())
        .with_state(state)
}

/// Runs blocking engine work off the async workers.
pub(crate) async fn blocking<T, F>(state: &Arc<AppState>, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
{
    let s = state.clone();
    tokio::task::spawn_blocking(move || f(&s.engine)).await?
}

async fn info(State(s): S) -> ApiResult<Json<Info>> {
    let s2 = s.clone();
    let info = blocking(&s, move |e| {
        let runc_version = e.runc_version();
        let cfg = e.config();
        Ok(Info {
            host: s2.host_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            root: cfg.paths.root().display().to_string(),
            runc_version,
            criu: s2.criu.clone(),
            bridge: cfg.bridge.name.clone(),
            subnet: format!("{}/{}", cfg.bridge.address, cfg.bridge.prefix),
            peer_listen: s2.args.peer_listen.clone(),
            containers: e.list().len(),
            images: e.images().list().map(|l| l.len()).unwrap_or(0),
        })
    })
    .await?;
    Ok(Json(info))
}

pub fn image_summary(i: &ferry_core::image::Image) -> ImageSummary {
    ImageSummary {
        id: i.digest.to_string(),
        names: i.names.clone(),
        layers: i.layers.len(),
        size: i.size,
        created: i.created.clone(),
    }
}

async fn images_list(State(s): S) -> ApiResult<Json<Vec<ImageSummary>>> {
    let list = blocking(&s, |e| Ok(e.images().list()?)).await?;
    Ok(Json(list.iter().map(image_summary).collect()))
}

async fn images_import(
    State(s): S,
    ApiJson(req): ApiJson<ImportImageRequest>,
) -> ApiResult<Json<ImageSummary>> {
    // The client going away (Ctrl-C) drops this future, and with it the guard: the import
    // sees the flag, stops and cleans up.
    let cancel = Cancel::new();
    let guard = cancel.on_drop();
    let img = blocking(&s, move |e| {
        let path = std::path::PathBuf::from(&req.path);
        if !path.is_absolute() {
            return Err(ApiError::invalid(format!(
                "import path {:?} must be absolute",
                req.path
            )));
        }
        if !path.exists() {
            return Err(ApiError::not_found(format!(
                "import source {} does not exist",
                path.display()
            )));
        }
        let img = e.images().import_cancellable(
            &path,
            req.name.as_deref(),
            ferry_core::image::IMPORT_DEADLINE,
            &cancel,
        );
        if let Err(err) = &img {
            if cancel.is_cancelled() {
                tracing::info!(path = %path.display(), error = %err, "image import cancelled");
            }
        }
        Ok(img?)
    })
    .await;
    guard.disarm();
    Ok(Json(image_summary(&img?)))
}

async fn images_rm(State(s): S, Path(reference): Path<String>) -> ApiResult<Json<ImageSummary>> {
    let img = blocking(&s, move |e| {
        let img = e.images().resolve(&reference)?;
        let digest = img.digest.to_string();
        if e.images_in_use().contains(&digest) {
            return Err(ApiError::conflict(format!(
                "image {reference} is used by a container; remove the container first"
            )));
        }
        Ok(e.images().remove(&reference)?)
    })
    .await?;
    Ok(Json(image_summary(&img)))
}

async fn images_save(
    State(s): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<SaveImageRequest>,
) -> ApiResult<Json<SaveImageReport>> {
    let rep = blocking(&s, move |e| {
        let path = std::path::PathBuf::from(&req.path);
        if !path.is_absolute() {
            return Err(ApiError::invalid(format!(
                "save path {:?} must be absolute",
                req.path
            )));
        }
        let img = e.images().resolve(&reference)?;
        // The name it is saved under: the one asked for if the image has it, else its first.
        let asked = ferry_core::image::normalize_name(&reference).ok();
        let name = img
            .names
            .iter()
            .find(|n| asked.as_ref() == Some(*n))
            .or(img.names.first())
            .cloned()
            .unwrap_or_else(|| img.digest.to_string());
        let bytes = ferry_core::image::save(e.images(), &img, &name, &path)?;
        Ok(SaveImageReport {
            id: img.digest.to_string(),
            reference: name,
            path: req.path,
            bytes,
        })
    })
    .await?;
    Ok(Json(rep))
}

async fn containers_list(State(s): S) -> ApiResult<Json<Vec<ContainerRecord>>> {
    Ok(Json(blocking(&s, |e| Ok(e.list())).await?))
}

async fn containers_run(
    State(s): S,
    ApiJson(req): ApiJson<RunRequest>,
) -> ApiResult<(StatusCode, Json<RunReply>)> {
    // The peers are asked about `--ip` while the container starts: a slow peer costs `run`
    // at most the question's timeout, and only a warning.
    let opts = RunOptions::try_from(&req)?;
    let check = tokio::spawn(crate::ipcheck::ask_peers(s.clone(), opts.ip));
    let rec = blocking(&s, move |e| Ok(e.run(&opts)?)).await;
    let record = match rec {
        Ok(r) => r,
        Err(e) => {
            check.abort();
            return Err(e);
        }
    };
    let ip_check = check.await.unwrap_or_default();
    let warnings: Vec<String> = ip_check.iter().filter_map(|r| r.warning()).collect();
    for w in &warnings {
        tracing::warn!(container = %record.config.name, "{w}");
        // Nobody listening is fine: the warning is in the answer and the log too.
        let _ = s.notes.send(crate::events::note(&record, "warning", w));
    }
    Ok((
        StatusCode::CREATED,
        Json(RunReply {
            record,
            warnings,
            ip_check,
        }),
    ))
}

async fn containers_inspect(
    State(s): S,
    Path(name): Path<String>,
) -> ApiResult<Json<ContainerRecord>> {
    Ok(Json(blocking(&s, move |e| Ok(e.inspect(&name)?)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RmQuery {
    #[serde(default)]
    force: bool,
}

async fn containers_rm(
    State(s): S,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<RmQuery>,
) -> ApiResult<Json<ContainerRecord>> {
    Ok(Json(
        blocking(&s, move |e| Ok(e.remove(&name, q.force)?)).await?,
    ))
}

async fn containers_start(
    State(s): S,
    Path(name): Path<String>,
) -> ApiResult<Json<ContainerRecord>> {
    Ok(Json(blocking(&s, move |e| Ok(e.start(&name)?)).await?))
}

async fn containers_stop(
    State(s): S,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<StopRequest>,
) -> ApiResult<Json<ContainerRecord>> {
    let timeout = Duration::from_secs(req.timeout.unwrap_or(10));
    Ok(Json(
        blocking(&s, move |e| Ok(e.stop(&name, timeout)?)).await?,
    ))
}

async fn containers_kill(
    State(s): S,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<KillRequest>,
) -> ApiResult<StatusCode> {
    let sig = req.signal.unwrap_or_else(|| "SIGKILL".to_owned());
    blocking(&s, move |e| Ok(e.kill(&name, &sig, req.all)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams the shim's log file, filtered (see [`crate::logs`]).
async fn containers_logs(
    State(s): S,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<crate::logs::LogsQuery>,
) -> ApiResult<Response> {
    let filter = crate::logs::LogFilter::from_query(&q)?;
    let n = name.clone();
    let path = blocking(&s, move |e| Ok(e.log_path(&n)?)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(crate::logs::stream(s, name, path, q.follow, filter, tx));
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(Body::from_stream(stream).into_response())
}

async fn checkpoint(
    State(s): S,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CheckpointRequest>,
) -> ApiResult<Json<CheckpointReport>> {
    Ok(Json(
        blocking(&s, move |e| Ok(e.checkpoint(&name, &req)?)).await?,
    ))
}

async fn restore_named(
    State(s): S,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<Json<RestoreReport>> {
    Ok(Json(
        blocking(&s, move |e| Ok(e.restore(Some(&name), &req)?)).await?,
    ))
}

async fn restore_import(
    State(s): S,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<Json<RestoreReport>> {
    // As for an image import: a client that goes away cancels the import.
    let cancel = Cancel::new();
    let guard = cancel.on_drop();
    let report = blocking(&s, move |e| {
        let r = e.restore_cancellable(None, &req, &cancel);
        if let (Err(err), true) = (&r, cancel.is_cancelled()) {
            tracing::info!(error = %err, "restore --import cancelled");
        }
        Ok(r?)
    })
    .await;
    guard.disarm();
    Ok(Json(report?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLsQuery {
    container: Option<String>,
}

async fn checkpoint_ls(
    State(s): S,
    ApiQuery(q): ApiQuery<CheckpointLsQuery>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    Ok(Json(
        blocking(&s, move |e| Ok(e.list_checkpoints(q.container.as_deref())?)).await?,
    ))
}

async fn checkpoint_rm(
    State(s): S,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(&s, move |e| Ok(e.remove_checkpoint(&name, &snapshot)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn migrate(
    State(s): S,
    Path(name): Path<String>,
    ApiJson(mut req): ApiJson<MigrateRequest>,
) -> ApiResult<Response> {
    use ferry_core::migration::report::{MigrationEvent, Progress};
    req.container = name;
    let identity = s.identity.clone().ok_or_else(|| {
        ApiError::invalid(
            "this host has no peer identity: start ferryd with --peer-listen and TLS material in <root>/tls",
        )
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MigrationEvent>();
    let engine = s.engine.clone();
    let progress = Progress::new(tx.clone());
    tokio::spawn(async move {
        let ev = match ferry_core::migration::source::migrate_out(engine, identity, req, progress)
            .await
        {
            Ok(report) => MigrationEvent::Done { report },
            Err((e, report)) => MigrationEvent::Failed {
                error: e.to_string(),
                report,
            },
        };
        let _ = tx.send(ev);
    });
    // NDJSON: one event per line, so the CLI can show progress as it happens.
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| {
            o.map(|ev| {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                Ok::<_, std::io::Error>(line)
            })
        })
    });
    Ok(Body::from_stream(stream).into_response())
}

async fn migrations_ls(
    State(s): S,
) -> ApiResult<Json<Vec<ferry_core::migration::record::MigrationRecord>>> {
    blocking(&s, |e| Ok(ferry_core::migration::record::list(e.paths())))
        .await
        .map(Json)
}

async fn migrations_resolve(
    State(s): S,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ferry_core::api::ResolveRequest>,
) -> ApiResult<Json<ferry_core::migration::record::MigrationRecord>> {
    use ferry_core::migration::{commit, record};
    let id = ferry_core::ids::MigrationId::new(id)
        .map_err(|e| ApiError::invalid(e.to_string()))?
        .into_string();
    if record::load(s.engine.paths(), &id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no migration {id} on this host"
        )));
    }
    commit::resolve(&s.engine, &id, req.decision)
        .await
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    let rec = record::load(s.engine.paths(), &id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::internal("the record vanished"))?;
    Ok(Json(rec))
}

async fn hosts_ls(State(s): S) -> ApiResult<Json<Vec<HostEntry>>> {
    let list = blocking(&s, |e| {
        let peers = ferry_core::peer::registry::Peers::load(e.paths())?;
        Ok(peers
            .list()
            .into_iter()
            .map(|p| HostEntry {
                name: p.name.clone(),
                addr: p.addr.to_string(),
            })
            .collect())
    })
    .await?;
    Ok(Json(list))
}

async fn hosts_add(
    State(s): S,
    ApiJson(req): ApiJson<HostAddRequest>,
) -> ApiResult<Json<HostEntry>> {
    let entry = blocking(&s, move |e| {
        let addr: std::net::SocketAddr = req.addr.parse().map_err(|_| {
            ApiError::invalid(format!(
                "invalid peer address {:?}: expected IP:PORT",
                req.addr
            ))
        })?;
        let mut peers = ferry_core::peer::registry::Peers::load(e.paths())?;
        peers.add(&req.name, addr)?;
        Ok(HostEntry {
            name: req.name,
            addr: addr.to_string(),
        })
    })
    .await?;
    Ok(Json(entry))
}

async fn hosts_rm(State(s): S, Path(name): Path<String>) -> ApiResult<StatusCode> {
    blocking(&s, move |e| {
        let mut peers = ferry_core::peer::registry::Peers::load(e.paths())?;
        peers.remove(&name)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
