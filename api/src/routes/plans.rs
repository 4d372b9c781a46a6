//! The plan catalog and the PostgreSQL versions on offer: public, no token needed.

use axum::extract::State;
use pgplane_core::model::{Plan, PlanPage, VersionList};
use pgplane_core::page::PageParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::{PublicErrors, RateLimited};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(plan_list)).routes(routes!(plan_get)).routes(routes!(version_list))
}

/// Lists the plans, cheapest family first.
#[utoipa::path(get, path = "/v1/plans", tag = "plans", params(PageParams), responses((status = 200, body = PlanPage), PublicErrors))]
async fn plan_list(State(state): State<AppState>, Query(page): Query<PageParams>) -> ApiResult<Json<PlanPage>> {
    Ok(Json(PlanPage::new(state.store.plan_list(&page.validate()?).await?)))
}

/// Shows one plan.
#[utoipa::path(
    get, path = "/v1/plans/{plan_id}", tag = "plans",
    params(("plan_id" = String, Path, description = "Plan id, e.g. starter-2")),
    responses((status = 200, body = Plan), PublicErrors)
)]
async fn plan_get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Plan>> {
    Ok(Json(state.store.plan_get(&id).await?))
}

/// Lists the PostgreSQL major versions databases can be created with.
#[utoipa::path(get, path = "/v1/versions", tag = "plans", responses((status = 200, body = VersionList), RateLimited))]
async fn version_list(State(state): State<AppState>) -> ApiResult<Json<VersionList>> {
    Ok(Json(VersionList { items: state.store.version_list().await? }))
}
