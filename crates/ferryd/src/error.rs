//! Maps library errors to HTTP status codes and the API's error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_core::api::ApiErrorBody;
use ferry_core::checkpoint::archive::ArchiveError;
use ferry_core::container::ContainerError;
use ferry_core::image::ImageError;
use ferry_core::network::NetError;

pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid",
            message: msg.into(),
        }
    }

    pub fn with_status(status: StatusCode, kind: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: msg.into(),
        }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: msg.into(),
        }
    }

    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            kind: "conflict",
            message: msg.into(),
        }
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: msg.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiErrorBody {
                error: self.message,
                kind: self.kind.to_owned(),
            }),
        )
            .into_response()
    }
}

/// Full error chain, so the CLI shows the root cause (e.g. runc's stderr).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> Self {
        let msg = chain(&e);
        match &e {
            ContainerError::NotFound(_) => ApiError::not_found(msg),
            ContainerError::NameInUse(_) | ContainerError::WrongState { .. } => {
                ApiError::conflict(msg)
            }
            ContainerError::InvalidName(_)
            | ContainerError::InvalidId(_)
            | ContainerError::Invalid(_) => ApiError::invalid(msg),
            // A damaged or hostile archive is the caller's input; a failed write is ours.
            ContainerError::Archive(ArchiveError::Io { .. }) => ApiError::internal(msg),
            ContainerError::Archive(_) | ContainerError::Podman(_) => ApiError::invalid(msg),
            ContainerError::Image(ie) => ApiError::from_image(ie, msg),
            ContainerError::Network(NetError::InUse { .. }) => ApiError::conflict(msg),
            ContainerError::Network(
                NetError::OutsideSubnet { .. }
                | NetError::Reserved { .. }
                | NetError::Exhausted { .. },
            ) => ApiError::invalid(msg),
            _ => ApiError::internal(msg),
        }
    }
}

impl ApiError {
    fn from_image(e: &ImageError, msg: String) -> Self {
        match e {
            ImageError::NotFound(_) => ApiError::not_found(msg),
            ImageError::Io { .. } | ImageError::Tool(_) => ApiError::internal(msg),
            // Everything else is about the input: a bad name, archive, digest or media type.
            _ => ApiError::invalid(msg),
        }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let msg = chain(&e);
        ApiError::from_image(&e, msg)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("internal task failed: {e}"))
    }
}
