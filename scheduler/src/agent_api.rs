//! The agent-facing API, on its own listener: agents register with the bootstrap token and
//! get a credential, heartbeat, long-poll for jobs (woken by NOTIFY), extend leases and
//! report results. A report that finishes a step's last agent job hands over to the engine,
//! which starts the step the workflow named.

use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use pgplane_core::agent::{
    AgentJob, AgentRegistration, AgentTask, Heartbeat, JobOutcome, JobReport, LeaseBody, Registered,
};
use pgplane_core::ids::JobId;
use pgplane_core::Error;
use pgplane_http::error::{ApiError, ApiResult};
use pgplane_http::extract::{Json, Path, Query};
use pgplane_store::agents::Agent;
use pgplane_store::engine::operation_lock_row_in;
use pgplane_store::jobs::{job_complete_in, AfterFailure};
use pgplane_store::Store;
use serde::Deserialize;
use std::time::Duration;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::queue::{Wakers, WorkerConfig};

/// How long an agent's claim on a job lasts without a heartbeat.
pub const AGENT_LEASE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct AgentApiState {
    pub store: Store,
    pub wakers: Wakers,
    pub bootstrap_token: String,
    pub backoff: WorkerConfig,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "pgplane agent API",
    description = "Served by the scheduler to node agents: register with the bootstrap token, then send the \
        credential as `Authorization: Bearer <credential>`."
))]
struct AgentApiDoc;

pub fn router() -> OpenApiRouter<AgentApiState> {
    OpenApiRouter::with_openapi(AgentApiDoc::openapi())
        .routes(routes!(register))
        .routes(routes!(heartbeat))
        .routes(routes!(next_jobs))
        .routes(routes!(job_heartbeat))
        .routes(routes!(job_report))
}

/// The agent API as an axum app.
pub fn app(state: AgentApiState) -> axum::Router {
    let (router, doc) = router().split_for_parts();
    router
        .route("/agent/v1/openapi.json", axum::routing::get(move || async move { axum::Json(doc.clone()) }))
        .fallback(pgplane_http::error::not_found_fallback)
        .with_state(state)
}

pub fn openapi() -> utoipa::openapi::OpenApi {
    router().split_for_parts().1
}

/// The authenticated agent.
pub struct AgentAuth(pub Agent);

impl FromRequestParts<AgentApiState> for AgentAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AgentApiState) -> Result<Self, Self::Rejection> {
        let credential = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError(Error::unauthorized("send Authorization: Bearer <agent credential>")))?;
        Ok(AgentAuth(state.store.agent_authenticate(credential.trim()).await?))
    }
}

/// Registers an agent.
#[utoipa::path(
    post, path = "/agent/v1/register", request_body = AgentRegistration, responses((status = 200, body = Registered))
)]
async fn register(State(state): State<AgentApiState>, Json(r): Json<AgentRegistration>) -> ApiResult<Json<Registered>> {
    if r.bootstrap_token != state.bootstrap_token {
        return Err(Error::unauthorized("wrong bootstrap token").into());
    }
    if r.port_min <= 1024 || r.port_max > 65535 || r.port_min >= r.port_max || r.memory_mb <= 0 || r.disk_gb <= 0 {
        return Err(Error::invalid(
            "port_min",
            "out_of_range",
            "need 1024 < port_min < port_max <= 65535 and positive capacity",
        )
        .into());
    }
    let (agent_id, credential) = state.store.agent_register(&r).await?;
    let problems = r.capabilities.as_ref().map(|c| c.problems()).unwrap_or_default();
    match &r.capabilities {
        Some(c) => tracing::info!(
            agent = %r.name, %agent_id, host = %r.host, postgres = ?c.postgres_versions, patroni = c.patroni,
            haproxy = c.haproxy, pgbackrest = ?c.pgbackrest, problems = problems.len(), "agent registered"
        ),
        None => tracing::info!(agent = %r.name, %agent_id, host = %r.host, "agent registered (capabilities unknown)"),
    }
    for problem in &problems {
        tracing::warn!(agent = %r.name, "{problem}");
    }
    // An agent registers when it starts: the jobs it held died with its previous run.
    let released = state.store.job_expire_leases(&format!("agent:{agent_id}")).await?;
    if released > 0 {
        tracing::info!(agent = %r.name, jobs = released, "the agent restarted; its jobs go back to its queue");
    }
    Ok(Json(Registered { agent_id, credential }))
}

/// Says the agent is alive and what it observes.
#[utoipa::path(post, path = "/agent/v1/heartbeat", request_body = Heartbeat, security(("bearer" = [])), responses((status = 204)))]
async fn heartbeat(
    State(state): State<AgentApiState>,
    AgentAuth(agent): AgentAuth,
    Json(h): Json<Heartbeat>,
) -> ApiResult<StatusCode> {
    state.store.agent_heartbeat(agent.id, Some(&h.observed)).await?;
    crate::engine::remove_leftovers(&state.store, agent.id, &h.observed).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Wait {
    /// Seconds to wait for a job before answering 204 (0 to 60, default 25).
    wait_secs: Option<u64>,
}

/// Long-polls for the agent's next job: answers as soon as one is runnable.
#[utoipa::path(
    get, path = "/agent/v1/jobs", params(Wait), security(("bearer" = [])),
    responses((status = 200, body = AgentJob), (status = 204, description = "No job within the wait"))
)]
async fn next_jobs(
    State(state): State<AgentApiState>,
    AgentAuth(agent): AgentAuth,
    Query(w): Query<Wait>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let queue = format!("agent:{}", agent.id);
    let notify = state.wakers.for_queue(&queue);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(w.wait_secs.unwrap_or(25).min(60));
    state.store.agent_heartbeat(agent.id, None).await.ok();
    loop {
        let notified = notify.notified();
        let mut claimed = state.store.job_claim(&queue, &agent.name, AGENT_LEASE, 1).await?;
        if let Some(job) = claimed.pop() {
            let task: AgentTask = serde_json::from_value(job.payload["task"].clone()).map_err(Error::internal)?;
            let out = AgentJob { job_id: job.id, lease_id: job.lease_id, attempt: job.attempts, task };
            return Ok(Json(out).into_response());
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// The agent's job of this id, or 404 (an agent never sees another agent's jobs).
async fn own_job(state: &AgentApiState, agent: &Agent, id: JobId) -> ApiResult<pgplane_store::jobs::JobRef> {
    match state.store.job_ref(id).await? {
        Some(j) if j.queue == format!("agent:{}", agent.id) => Ok(j),
        _ => Err(Error::not_found("job").into()),
    }
}

fn lease_lost() -> ApiError {
    ApiError(Error::conflict("lease_lost", "this job's lease expired or was taken over; drop the work"))
}

/// Extends the agent's lease on a running job.
#[utoipa::path(
    post, path = "/agent/v1/jobs/{job_id}/heartbeat", params(("job_id" = JobId, Path)), request_body = LeaseBody,
    security(("bearer" = [])), responses((status = 204), (status = 409, description = "Lease lost"))
)]
async fn job_heartbeat(
    State(state): State<AgentApiState>,
    AgentAuth(agent): AgentAuth,
    Path(id): Path<JobId>,
    Json(b): Json<LeaseBody>,
) -> ApiResult<StatusCode> {
    own_job(&state, &agent, id).await?;
    if state.store.job_heartbeat(id, b.lease_id, AGENT_LEASE).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(lease_lost())
    }
}

/// Reports how a job ended.
#[utoipa::path(
    post, path = "/agent/v1/jobs/{job_id}/report", params(("job_id" = JobId, Path)), request_body = JobReport,
    security(("bearer" = [])), responses((status = 204), (status = 409, description = "Lease lost"))
)]
async fn job_report(
    State(state): State<AgentApiState>,
    AgentAuth(agent): AgentAuth,
    Path(id): Path<JobId>,
    Json(report): Json<JobReport>,
) -> ApiResult<StatusCode> {
    let job = own_job(&state, &agent, id).await?;
    match report.outcome {
        JobOutcome::Succeeded { result } => {
            let mut tx = state.store.begin().await?;
            if let Some(op) = job.operation_id {
                // Serializes the reports of one operation, so exactly one sees the step finished.
                operation_lock_row_in(&mut tx, op).await?;
            }
            if !job_complete_in(&mut tx, id, report.lease_id, &result).await? {
                return Err(lease_lost());
            }
            if let (Some(op), Some(db)) = (job.operation_id, job.database_id) {
                crate::engine::agent_job_done_in(&mut tx, op, db, &job.payload).await?;
            }
            tx.commit().await.map_err(pgplane_store::db_error)?;
        }
        JobOutcome::Failed { error, retryable } => {
            let retry_in = retryable.then(|| state.backoff.backoff(job.attempts));
            match state.store.job_fail(id, report.lease_id, &error, retry_in).await? {
                AfterFailure::LeaseLost => return Err(lease_lost()),
                AfterFailure::Retrying => tracing::warn!(job = %id, %error, "agent job failed; retrying"),
                AfterFailure::Dead => {
                    tracing::error!(job = %id, %error, "agent job died");
                    if let Some(op) = job.operation_id {
                        crate::engine::operation_job_died(&state.store, op, id, Some(&job.kind), None).await;
                    }
                }
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
