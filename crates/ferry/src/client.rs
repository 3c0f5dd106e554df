//! A small HTTP/1.1 client for ferryd's unix socket.

use std::path::PathBuf;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CliError;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Client { socket }
    }

    /// Sends one request and returns the raw response (for streaming bodies).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                CliError::new(
                    "unreachable",
                    format!(
                        "cannot reach ferryd at {}: {e}. Is ferryd running? (set --socket or FERRY_SOCKET)",
                        self.socket.display()
                    ),
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with ferryd")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://ferryd{path}"))
            .header("host", "ferryd")
            .header("content-type", "application/json")
            .body(Full::new(bytes))?;
        Ok(sender.send_request(req).await?)
    }

    /// A JSON call; a non-2xx answer becomes an error carrying the daemon's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<impl Serialize>,
    ) -> Result<T> {
        let body = body.map(|b| serde_json::to_value(b)).transpose()?;
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(api_error(&bytes, status));
        }
        if bytes.is_empty() {
            return Ok(serde_json::from_str("null")?);
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "unexpected answer from ferryd: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }
}

/// The daemon's error body as a [`CliError`] with the daemon's kind.
pub fn api_error(bytes: &[u8], status: hyper::StatusCode) -> anyhow::Error {
    match serde_json::from_slice::<ferry_core::api::ApiErrorBody>(bytes) {
        Ok(b) => CliError::new(&b.kind, b.error).into(),
        Err(_) => CliError::new(
            "internal",
            format!(
                "ferryd answered {status}: {}",
                String::from_utf8_lossy(bytes)
            ),
        )
        .into(),
    }
}
