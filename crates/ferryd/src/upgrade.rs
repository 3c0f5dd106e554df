//! The HTTP upgrade that `attach` and `exec` share: the client asks to switch the connection to
//! one of ferry's stream protocols and sends a JSON request as the body; ferryd checks it, does
//! its part (the handler's), answers 101, and relays the switched connection.
//!
//! Everything before the 101 fails as an ordinary JSON error.

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::api::ApiResult;
use crate::error::ApiError;

/// The switched connection, as the relay sees it.
pub type Client = TokioIo<Upgraded>;

/// One kind of upgrade: what it is called and how its request is read.
pub struct Protocol {
    /// `attach` or `exec`, for messages.
    pub what: &'static str,
    /// The `Upgrade:` value the client must ask for.
    pub name: &'static str,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// An empty body means the request's defaults (else it is a bad request).
    pub empty_is_default: bool,
}

/// An accepted upgrade whose 101 is not sent yet.
pub struct Pending {
    protocol: &'static Protocol,
    on_upgrade: OnUpgrade,
}

/// Checks that `req` asks for `protocol` and reads its JSON body.
pub async fn accept<T: DeserializeOwned + Default>(
    protocol: &'static Protocol,
    mut req: Request,
) -> ApiResult<(T, Pending)> {
    let what = protocol.what;
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(protocol.name));
    if !wants_upgrade {
        return Err(ApiError::invalid(format!(
            "{what} needs a connection upgrade to {:?} (use `ferry {what}`)",
            protocol.name
        )));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), protocol.body_limit)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the {what} request: {e}")))?;
    let request = if body.is_empty() && protocol.empty_is_default {
        T::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("bad {what} request: {e}")))?
    };
    Ok((
        request,
        Pending {
            protocol,
            on_upgrade,
        },
    ))
}

impl Pending {
    /// Answers 101 (with `headers`) and, once the client has switched, hands the connection
    /// and `session` to `relay`; if the client never switches, `session` goes to `abandon`.
    pub fn switch<St, R, A>(
        self,
        headers: &[(&'static str, String)],
        session: St,
        relay: impl FnOnce(Client, St) -> R + Send + 'static,
        abandon: impl FnOnce(St) -> A + Send + 'static,
    ) -> ApiResult<Response>
    where
        St: Send + 'static,
        R: Future<Output = ()> + Send + 'static,
        A: Future<Output = ()> + Send + 'static,
    {
        let what = self.protocol.what;
        tokio::spawn(async move {
            match self.on_upgrade.await {
                Ok(upgraded) => relay(TokioIo::new(upgraded), session).await,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: the client did not upgrade");
                    abandon(session).await;
                }
            }
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, self.protocol.name);
        for (name, value) in headers {
            response = response.header(*name, value);
        }
        response
            .body(Body::empty())
            .map_err(|e| ApiError::internal(format!("{what} response: {e}")))
    }
}
