//! The registry routes: pull and push (streamed progress), tag, inspect, login and logout.
//! ferryd does every registry call and reads the credentials itself (see
//! `ferry_core::image::registry::auth`).

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::api::*;
use ferry_core::image::registry::{
    self, Credentials, ImageRef, RegistryConfig, RegistryError, TransferEvent, TransferProgress,
    TransferResult,
};
use ferry_core::image::Image;

use crate::api::AppState;
use crate::error::ApiError;
use crate::json::ApiJson;

type S = State<Arc<AppState>>;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/images/pull", post(pull))
        .route("/v1/images/push", post(push))
        .route("/v1/images/tag", post(tag))
        .route("/v1/images/{reference}/json", get(inspect))
        .route("/v1/registries/login", post(login))
        .route("/v1/registries/logout", post(logout))
}

/// `--insecure-registry` comes in through `set_daemon_insecure` (at startup), for migrations
/// too.
fn config(s: &AppState) -> RegistryConfig {
    RegistryConfig::new(s.engine.paths().root(), Vec::new())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let msg = e.to_string();
        match e {
            RegistryError::Image(ie) => ApiError::from(ie),
            RegistryError::BadReference { .. } => ApiError::invalid(msg),
            RegistryError::NotFound { .. } => ApiError::not_found(msg),
            RegistryError::AuthFailed { .. } => {
                ApiError::with_status(StatusCode::UNAUTHORIZED, "unauthorized", msg)
            }
            RegistryError::Network { .. } => {
                ApiError::with_status(StatusCode::BAD_GATEWAY, "unavailable", msg)
            }
            RegistryError::Refused { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::NoPlatform { .. }
            | RegistryError::Unsupported { .. } => {
                ApiError::with_status(StatusCode::BAD_GATEWAY, "registry", msg)
            }
            RegistryError::Config { .. } | RegistryError::Io { .. } => ApiError::internal(msg),
        }
    }
}

/// Runs a transfer and answers with its events as NDJSON, one per line, the last one `done`
/// or `failed` (the style of the migration stream).
fn transfer_stream<F, Fut>(f: F) -> Response
where
    F: FnOnce(TransferProgress) -> Fut,
    Fut: Future<Output = Result<TransferResult, RegistryError>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TransferEvent>();
    let fut = f(TransferProgress::new(tx.clone()));
    tokio::spawn(async move {
        let ev = match fut.await {
            Ok(result) => TransferEvent::Done { result },
            Err(e) => {
                tracing::warn!(error = %e, "registry transfer failed");
                TransferEvent::Failed {
                    error: e.to_string(),
                }
            }
        };
        let _ = tx.send(ev);
    });
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| {
            o.map(|ev| {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                Ok::<_, std::io::Error>(line)
            })
        })
    });
    Body::from_stream(stream).into_response()
}

async fn pull(State(s): S, ApiJson(req): ApiJson<PullRequest>) -> Result<Response, ApiError> {
    ImageRef::parse(&req.reference)?;
    let cfg = config(&s);
    let store = s.engine.images().clone();
    tracing::info!(reference = %req.reference, insecure = req.insecure, "pull");
    Ok(transfer_stream(move |progress| async move {
        registry::pull(&store, &cfg, &req.reference, req.insecure, &progress)
            .await
            .map(|(_, r)| r)
    }))
}

async fn push(State(s): S, ApiJson(req): ApiJson<PushRequest>) -> Result<Response, ApiError> {
    let store = s.engine.images().clone();
    // Checked before the stream starts, so a typo is a plain 404/400.
    let st = store.clone();
    let image = req.image.clone();
    tokio::task::spawn_blocking(move || st.resolve(&image)).await??;
    ImageRef::parse(req.reference.as_deref().unwrap_or(&req.image))?;
    let cfg = config(&s);
    tracing::info!(image = %req.image, reference = ?req.reference, "push");
    Ok(transfer_stream(move |progress| async move {
        registry::push(
            &store,
            &cfg,
            &req.image,
            req.reference.as_deref(),
            req.insecure,
            &progress,
        )
        .await
        .map(|(_, r)| r)
    }))
}

async fn tag(State(s): S, ApiJson(req): ApiJson<TagRequest>) -> Result<Json<Image>, ApiError> {
    let store = s.engine.images().clone();
    let img = tokio::task::spawn_blocking(move || store.tag(&req.image, &req.name)).await??;
    Ok(Json(img))
}

async fn inspect(State(s): S, Path(reference): Path<String>) -> Result<Json<Image>, ApiError> {
    let store = s.engine.images().clone();
    let img = tokio::task::spawn_blocking(move || store.resolve(&reference)).await??;
    Ok(Json(img))
}

async fn login(
    State(s): S,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    if req.username.is_empty() || req.username.contains(':') {
        return Err(ApiError::invalid(
            "a user name must be non-empty and without ':'",
        ));
    }
    let cfg = config(&s);
    let creds = Credentials {
        username: req.username.clone(),
        password: req.password,
    };
    let file = registry::login(&cfg, &req.registry, &creds, req.insecure).await?;
    tracing::info!(registry = %req.registry, user = %req.username, "login");
    Ok(Json(LoginResponse {
        registry: registry::reference::registry_key(&req.registry)?,
        username: req.username,
        stored_in: file.display().to_string(),
    }))
}

async fn logout(
    State(s): S,
    ApiJson(req): ApiJson<LogoutRequest>,
) -> Result<Json<LogoutResponse>, ApiError> {
    let cfg = config(&s);
    let removed = registry::logout(&cfg, &req.registry)?;
    Ok(Json(LogoutResponse {
        registry: registry::reference::registry_key(&req.registry)?,
        removed,
    }))
}
