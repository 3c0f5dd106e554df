//! `GET /v1/stats[?names=a,b]`: one sample of the running containers' resource counters
//! (`Engine::stats`); the client takes two to get rates.

use axum::extract::State;
use axum::Json;
use ferry_core::container::ContainerStats;
use serde::Deserialize;

use crate::api::{blocking, ApiResult, S};
use crate::json::ApiQuery;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Comma-separated container names, IDs or ID prefixes; all running ones when absent.
    names: Option<String>,
}

pub async fn all(
    State(s): S,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> ApiResult<Json<Vec<ContainerStats>>> {
    let names: Vec<String> = q
        .names
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Json(blocking(&s, move |e| Ok(e.stats(&names)?)).await?))
}
