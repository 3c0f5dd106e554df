//! Maps library errors to HTTP status codes and the API's error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_core::api::ApiErrorBody;
use ferry_core::checkpoint::archive::ArchiveError;
use ferry_core::container::ContainerError;
use ferry_core::error_chain as chain;
use ferry_core::image::ImageError;
use ferry_core::network::dns::DnsError;
use ferry_core::network::ports::PortError;
use ferry_core::network::NetError;
use ferry_core::peer::PeerError;

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

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> Self {
        let msg = chain(&e);
        match &e {
            ContainerError::NotFound(_) | ContainerError::Missing(_) => ApiError::not_found(msg),
            ContainerError::Ambiguous { .. } => {
                ApiError::with_status(StatusCode::BAD_REQUEST, "ambiguous", msg)
            }
            ContainerError::NameInUse(_) | ContainerError::WrongState { .. } => {
                ApiError::conflict(msg)
            }
            ContainerError::InvalidId(_) | ContainerError::Invalid(_) => ApiError::invalid(msg),
            // A damaged or hostile archive is the caller's input; a failed write is ours.
            ContainerError::Archive(ArchiveError::Io { .. }) => ApiError::internal(msg),
            ContainerError::Archive(_) | ContainerError::Podman(_) => ApiError::invalid(msg),
            ContainerError::Image(ie) => ApiError::from_image(ie, msg),
            // A bad --hostname, --dns, --add-host or -p is the caller's.
            ContainerError::Dns(
                DnsError::BadHostname(_) | DnsError::BadAddHost(_) | DnsError::BadServer(_),
            )
            | ContainerError::Ports(PortError::Bad(_)) => ApiError::invalid(msg),
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

impl From<ferry_core::container::VolumeError> for ApiError {
    fn from(e: ferry_core::container::VolumeError) -> Self {
        use ferry_core::container::VolumeError;
        let msg = chain(&e);
        match e {
            VolumeError::NotFound(_) => ApiError::not_found(msg),
            VolumeError::InUse { .. } => ApiError::conflict(msg),
            VolumeError::InvalidName(_) => ApiError::invalid(msg),
            VolumeError::Io { .. } => ApiError::internal(msg),
        }
    }
}

/// Whose fault a peer error is: the caller's input (400, 404, 409), the peer's, or the way to
/// it (502, or 504 when it timed out), else ours (500).
impl From<PeerError> for ApiError {
    fn from(e: PeerError) -> Self {
        let msg = chain(&e);
        let timed_out = |io: &std::io::Error| io.kind() == std::io::ErrorKind::TimedOut;
        match &e {
            PeerError::BadName { .. } => ApiError::invalid(msg),
            PeerError::UnknownPeer(_) => ApiError::not_found(msg),
            PeerError::PeerExists(_) => ApiError::conflict(msg),
            PeerError::Connect { source, .. }
            | PeerError::Handshake { source, .. }
            | PeerError::Net(source)
                if timed_out(source) =>
            {
                ApiError::with_status(StatusCode::GATEWAY_TIMEOUT, "unavailable", msg)
            }
            PeerError::Connect { .. }
            | PeerError::Handshake { .. }
            | PeerError::Net(_)
            | PeerError::Closed => {
                ApiError::with_status(StatusCode::BAD_GATEWAY, "unavailable", msg)
            }
            // The peer said no, or said something it should not have.
            PeerError::NoPeerName(_)
            | PeerError::Proto(_)
            | PeerError::Refused(_)
            | PeerError::WeRefused(_)
            | PeerError::Aborted(_)
            | PeerError::UnexpectedMessage { .. }
            | PeerError::StreamCheck { .. } => {
                ApiError::with_status(StatusCode::BAD_GATEWAY, "peer", msg)
            }
            // Our key material, peer registry or local files.
            PeerError::Io { .. }
            | PeerError::Exists { .. }
            | PeerError::Cert(_)
            | PeerError::BadPem { .. }
            | PeerError::TlsConfig(_)
            | PeerError::Registry { .. }
            | PeerError::StreamTaken(_)
            | PeerError::StreamIo { .. }
            | PeerError::Zstd { .. } => ApiError::internal(msg),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("internal task failed: {e}"))
    }
}
