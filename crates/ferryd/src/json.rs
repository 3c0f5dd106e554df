//! The API's JSON body extractor: axum's `Json`, with every refusal (bad syntax, a missing or
//! unknown field, a wrong type, no JSON content type) answered as 400 in the API's error body,
//! so a client always gets `{"error", "kind": "invalid"}` and a status that says "your input".

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(refusal(&rejection)),
        }
    }
}

fn refusal(r: &JsonRejection) -> ApiError {
    // An oversized body keeps its own status: it is not a mistake in the JSON.
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::with_status(r.status(), "invalid", r.body_text());
    }
    ApiError::invalid(format!("bad request body: {}", r.body_text()))
}

/// axum's `Query`, with a refused query string (an unknown key, a wrong type) answered as 400
/// in the API's error body, like [`ApiJson`].
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::invalid(format!(
                "bad query string: {}",
                rejection.body_text()
            ))),
        }
    }
}
