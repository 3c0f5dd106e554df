//! `POST /v1/containers/{name}/attach`: relays an upgraded connection to the container's shim,
//! which holds its pty or stdin (see `ferry_core::runtime::shim::attach`). ferryd adds nothing
//! to the stream but the first resize, so an attach survives nothing but the shim: after a
//! ferryd restart the client attaches again and finds the same terminal.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use ferry_core::container::{ContainerError, Engine, Status};
use ferry_core::exec::{self as wire, AttachRequest, Frame};
use ferry_core::runtime::shim::{ShimFiles, ShimIo};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::api::{ApiResult, S};
use crate::error::ApiError;

pub async fn attach(
    State(s): S,
    Path(name): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(wire::ATTACH_PROTOCOL));
    if !wants_upgrade {
        return Err(ApiError::invalid(format!(
            "attach needs a connection upgrade to {:?} (use `ferry attach`)",
            wire::ATTACH_PROTOCOL
        )));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 1 << 16)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the attach request: {e}")))?;
    let request: AttachRequest = if body.is_empty() {
        AttachRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("bad attach request: {e}")))?
    };
    let engine = s.engine.clone();
    let (cname, files, io) = tokio::task::spawn_blocking(move || target(&engine, &name)).await??;
    let mut shim = UnixStream::connect(files.attach_socket())
        .await
        .map_err(|e| {
            ApiError::conflict(format!(
                "cannot attach to {cname}: its shim does not answer on {} ({e}); a container \
                 started by an older ferry takes attach connections after its next start",
                files.attach_socket().display()
            ))
        })?;
    if let (true, Some(size)) = (io.tty, request.size) {
        wire::write_frame(&mut shim, &Frame::Resize(size))
            .await
            .map_err(|e| ApiError::internal(format!("attach to {cname}: {e}")))?;
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                // Ends when either side closes: the client detached, or the shim exited.
                let _ = tokio::io::copy_bidirectional(&mut client, &mut shim).await;
                tracing::debug!(container = %cname, "attach session ended");
            }
            Err(e) => tracing::warn!(error = %e, "attach: the client did not upgrade"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, wire::ATTACH_PROTOCOL)
        .header(wire::TTY_HEADER, io.tty.to_string())
        .header(wire::STDIN_HEADER, io.stdin.to_string())
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("attach response: {e}")))
}

/// The running container's name, shim files and stdio settings.
fn target(engine: &Engine, name: &str) -> ApiResult<(String, ShimFiles, ShimIo)> {
    let rec = engine.inspect(name)?;
    if rec.status != Status::Running {
        return Err(ContainerError::WrongState {
            name: rec.config.name.clone(),
            status: rec.status,
            why: "attach needs a running container".into(),
        }
        .into());
    }
    let dir = engine.container_dir(&rec.config.id);
    let io = ShimIo::load(&dir).map_err(|e| ApiError::internal(ferry_core::error_chain(&e)))?;
    Ok((rec.config.name, ShimFiles::new(dir), io))
}
