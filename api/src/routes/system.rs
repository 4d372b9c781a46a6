//! Liveness and readiness probes.

use axum::extract::State;
use pgplane_core::model::Health;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiResult, Problem};
use crate::extract::Json;
use crate::openapi::RateLimited;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health), RateLimited))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// The process can serve: its control-plane database answers.
#[utoipa::path(
    get, path = "/readyz", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Problem, content_type = "application/problem+json"), RateLimited)
)]
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.store.ping().await?;
    Ok(Json(Health { status: "ready".into() }))
}
