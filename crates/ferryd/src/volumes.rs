//! `/v1/volumes`: list, inspect, remove and prune named volumes (`ferry volume ...`).

use axum::extract::{Path, State};
use axum::Json;
use ferry_core::container::VolumeInfo;

use crate::api::{blocking, ApiResult, S};

pub async fn list(State(s): S) -> ApiResult<Json<Vec<VolumeInfo>>> {
    Ok(Json(blocking(&s, |e| Ok(e.volumes()?)).await?))
}

pub async fn inspect(State(s): S, Path(name): Path<String>) -> ApiResult<Json<VolumeInfo>> {
    Ok(Json(blocking(&s, move |e| Ok(e.volume(&name)?)).await?))
}

/// Refused with 409, naming the containers, while any container mounts the volume.
pub async fn remove(State(s): S, Path(name): Path<String>) -> ApiResult<Json<VolumeInfo>> {
    Ok(Json(
        blocking(&s, move |e| Ok(e.volume_remove(&name)?)).await?,
    ))
}

/// Removes every volume no container mounts; answers with those removed.
pub async fn prune(State(s): S) -> ApiResult<Json<Vec<VolumeInfo>>> {
    Ok(Json(blocking(&s, |e| Ok(e.volume_prune()?)).await?))
}
