//! Node agents as platform operators see them: where each runs, its capacity, when it was last
//! heard from, and what its host can do (the checks it ran when it started).

use axum::extract::State;
use pgplane_core::model::{Agent, AgentPage, PlatformRole};
use pgplane_core::page::PageParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{require_platform, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(agent_list)).routes(routes!(agent_get))
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
