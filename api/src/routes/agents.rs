//! Node agents as platform operators see them: where each runs, its capacity, when it was last
//! heard from, and what its host can do (the checks it ran when it started); retiring a lost one.

use axum::extract::State;
use pgplane_core::model::{Agent, AgentPage, AgentRetirement, PlatformRole};
use pgplane_core::page::PageParams;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{require_platform, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(agent_list)).routes(routes!(agent_get)).routes(routes!(agent_retire))
}

/// Lists the node agents by name, with their capacity and what their hosts can do (operators).
#[utoipa::path(
    get, path = "/v1/agents", tag = "agents", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = AgentPage), Errors)
)]
async fn agent_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<AgentPage>> {
    require_platform(&actor, PlatformRole::Operator)?;
    let page = p.validate()?;
    Ok(Json(AgentPage::new(state.store.agent_page(&page).await?)))
}

/// Shows a node agent with the checks of its host (operators).
#[utoipa::path(
    get, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = uuid::Uuid, Path)), responses((status = 200, body = Agent), Errors)
)]
async fn agent_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<uuid::Uuid>,
) -> ApiResult<Json<Agent>> {
    require_platform(&actor, PlatformRole::Operator)?;
    Ok(Json(state.store.agent_get(id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RetireParams {
    /// Retire it even while it hosts members or gateways: they are marked lost.
    force: Option<bool>,
}

/// Retires a lost agent: it is never placed on again and its credential is refused (its host
/// comes back as a new agent). Refused with 409 while it hosts members or gateways of databases,
/// which the problem lists, unless `force=true`: then its members are marked `lost`, the ports
/// they and its gateways held are released, and the jobs waiting on it die, ending their
/// operations in `error` (operators).
#[utoipa::path(
    post, path = "/v1/agents/{agent_id}/retire", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = uuid::Uuid, Path), RetireParams), responses((status = 200, body = AgentRetirement), Errors)
)]
async fn agent_retire(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<uuid::Uuid>,
    Query(p): Query<RetireParams>,
) -> ApiResult<Json<AgentRetirement>> {
    require_platform(&actor, PlatformRole::Operator)?;
    Ok(Json(state.store.agent_retire(id, p.force.unwrap_or(false)).await?))
}
