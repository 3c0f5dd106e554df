//! `POST /v1/containers/{name}/attach`: relays an upgraded connection to the container's shim,
//! which holds its pty or stdin (see `ferry_core::runtime::shim::attach`). ferryd adds nothing
//! to the stream but the first resize, so an attach survives nothing but the shim: after a
//! ferryd restart the client attaches again and finds the same terminal.

use axum::extract::{Path, Request, State};
use axum::response::Response;
use ferry_core::api::AttachRequest;
use ferry_core::container::{ContainerError, Engine, Status};
use ferry_core::exec::{self as wire, Frame};
use ferry_core::runtime::shim::{ShimFiles, ShimIo};
use tokio::net::UnixStream;

use crate::api::{ApiResult, S};
use crate::error::ApiError;
use crate::upgrade::{self, Protocol};

static ATTACH: Protocol = Protocol {
    what: "attach",
    name: wire::ATTACH_PROTOCOL,
    body_limit: 1 << 16,
    empty_is_default: true,
};

pub async fn attach(State(s): S, Path(name): Path<String>, req: Request) -> ApiResult<Response> {
    let (request, pending) = upgrade::accept::<AttachRequest>(&ATTACH, req).await?;
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
    let headers = [
        (wire::TTY_HEADER, io.tty.to_string()),
        (wire::STDIN_HEADER, io.stdin.to_string()),
    ];
    let relay = |mut client: upgrade::Client, (mut shim, cname): (UnixStream, String)| async move {
        // Ends when either side closes: the client detached, or the shim exited.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut shim).await;
        tracing::debug!(container = %cname, "attach session ended");
    };
    pending.switch(&headers, (shim, cname), relay, |_| async {})
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
