//! Timers as platform operators see them: what a clock starts (the retention sweep, daily
//! backups), with when each fires next and what its last firing enqueued.

use axum::extract::State;
use pgplane_core::model::PlatformRole;
use pgplane_core::page::PageParams;
use pgplane_core::timer::TimerPage;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::{require_platform, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(timer_list))
}

/// Lists the timers in creation order, with their next and last firing (operators).
#[utoipa::path(
    get, path = "/v1/timers", tag = "timers", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = TimerPage), Errors)
)]
async fn timer_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<TimerPage>> {
    require_platform(&actor, PlatformRole::Operator)?;
    let page = p.validate()?;
    Ok(Json(TimerPage::new(state.store.timer_page(&page).await?)))
}
