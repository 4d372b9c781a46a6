//! The job queue as platform operators see it: dead jobs and any job by id; retrying a dead
//! job, or failing one that hangs.

use axum::extract::State;
use pgplane_core::ids::JobId;
use pgplane_core::model::{Job, JobPage, JobStatus, PlatformRole};
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
    OpenApiRouter::new()
        .routes(routes!(job_list))
        .routes(routes!(job_get))
        .routes(routes!(job_retry))
        .routes(routes!(job_fail))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JobFilter {
    /// Jobs in this status (default `dead`).
    status: Option<JobStatus>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = pgplane_core::page::cursor_schema)]
    cursor: Option<String>,
}

/// Lists jobs in one status, oldest first; `dead` ones need an operator's look (operators).
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), params(JobFilter),
    responses((status = 200, body = JobPage), Errors)
)]
async fn job_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(f): Query<JobFilter>,
) -> ApiResult<Json<JobPage>> {
    require_platform(&actor, PlatformRole::Operator)?;
    let page = PageParams { limit: f.limit, cursor: f.cursor }.validate()?;
    Ok(Json(JobPage::new(state.store.job_list(f.status.unwrap_or(JobStatus::Dead), &page).await?)))
}

/// Shows a job (operators).
#[utoipa::path(
    get, path = "/v1/jobs/{job_id}", tag = "jobs", security(("bearer" = [])),
    params(("job_id" = JobId, Path)), responses((status = 200, body = Job), Errors)
)]
async fn job_get(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<JobId>) -> ApiResult<Json<Job>> {
    require_platform(&actor, PlatformRole::Operator)?;
    Ok(Json(state.store.job_get(id).await?))
}

/// Puts a dead job back in its queue with its attempts counted from zero, with the other dead
/// jobs of its operation; an operation the job had ended in `error` runs again (409 when another
/// operation of the database came since) (operators).
#[utoipa::path(
    post, path = "/v1/jobs/{job_id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("job_id" = JobId, Path)), responses((status = 200, body = Job), Errors)
)]
async fn job_retry(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<JobId>) -> ApiResult<Json<Job>> {
    require_platform(&actor, PlatformRole::Operator)?;
    Ok(Json(state.store.job_retry(id).await?))
}

/// Kills a job that is waiting or running (one that hangs on a lost host, say): it becomes
/// `dead`, and its operation ends in `error` within seconds, as when a job dies by itself
/// (operators).
#[utoipa::path(
    post, path = "/v1/jobs/{job_id}/fail", tag = "jobs", security(("bearer" = [])),
    params(("job_id" = JobId, Path)), responses((status = 200, body = Job), Errors)
)]
async fn job_fail(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<JobId>) -> ApiResult<Json<Job>> {
    require_platform(&actor, PlatformRole::Operator)?;
    Ok(Json(state.store.job_fail_now(id).await?))
}
