//! How an operation moves on and how it ends, in one place for every workflow: a step's agent
//! jobs all done starts the step the workflow wrote into them; a dead job (a scheduler's or an
//! agent's) ends its operation in `error` through `operation_job_died`; and a sweep ends the
//! operations that would otherwise hang: a job past its deadline, or one waiting on an agent
//! that stopped heartbeating (a lost host). The removal of a lost host's part, and its drain in
//! the gateways, are skipped instead: the host is gone, and so is what it ran; should the host
//! come back, what it still runs of databases it holds no member of is removed then
//! (`remove_leftovers`).

use pgplane_core::agent::{AgentId, AgentTask, Observation};
use pgplane_core::ids::{DatabaseId, JobId, OperationId};
use pgplane_core::Error;
use pgplane_store::engine::{
    agent_leftovers_in, job_kill_in, job_skip_in, jobs_of_lost_agents_in, jobs_overdue_in, operation_fail_in,
    operation_lock_row_in, step_jobs_left_in, StuckJob,
};
use pgplane_store::jobs::{job_enqueue_in, NewJob};
use pgplane_store::Store;
use sqlx::PgConnection;
use std::time::Duration;
use tokio::sync::watch;

use crate::queue::tenant_error;

/// An agent not heard from for this long is lost: the jobs it must run end their operations.
pub const AGENT_LOST_AFTER: Duration = Duration::from_secs(30);

/// How often the sweep looks for dead, overdue and orphaned jobs.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How long an agent task may take, from its claim to its report, before its operation ends in
/// `error` (a job waiting unclaimed behind others gets `QUEUE_ALLOWANCE` more). Generous: a
/// deadline is there so that nothing hangs, not to hurry a slow host.
pub fn task_deadline(task: &AgentTask) -> Duration {
    Duration::from_secs(match task {
        // Cloning a replica of a large database is the longest thing a member start does.
        AgentTask::EnsureMember { .. } => 1800,
        AgentTask::EnsureGateway { .. } => 180,
        AgentTask::RestartMember { .. } => 300,
        AgentTask::PatchConfig { .. } => 180,
        AgentTask::Switchover { .. } => 300,
        AgentTask::DrainMember { .. } => 120,
        AgentTask::ReinitMember { .. } => 3600,
        AgentTask::RemoveDatabase { .. } => 600,
        // A dump or restore streams the whole database: hours for a large one.
        AgentTask::Backup { .. } => 6 * 3600,
    })
}

/// Ends an operation in `error`: the tenant reads `tenant_message` (what they can act on, no host
/// detail), operators read `operator_detail` in the logs; every job the operation still has is
/// killed. Returns whether this call ended it (false when it had ended already). Operator
/// endpoints (failing a dead job) and the engine's sweep use it alike.
pub async fn end_operation_with_error(
    store: &Store,
    op: OperationId,
    tenant_message: &str,
    operator_detail: &str,
) -> Result<bool, Error> {
    let mut tx = store.begin().await?;
    let ended = end_operation_with_error_in(&mut tx, op, tenant_message, operator_detail).await?;
    tx.commit().await.map_err(pgplane_store::db_error)?;
    Ok(ended)
}

/// `end_operation_with_error` in the caller's transaction.
pub async fn end_operation_with_error_in(
    conn: &mut PgConnection,
    op: OperationId,
    tenant_message: &str,
    operator_detail: &str,
) -> Result<bool, Error> {
    let ended = operation_fail_in(conn, op, tenant_message).await?;
    if ended {
        tracing::error!(operation = %op, detail = %operator_detail, "operation failed: {tenant_message}");
    }
    Ok(ended)
}

/// A job of operation `op` died (out of attempts, or a fatal failure): the operation ends in
/// `error`. The tenant reads `tenant` when the workflow said what to read (a refusal), else which
/// part failed (`task_kind`, for agent jobs) and the job to quote. Failures to record are logged:
/// the sweep ends the operation later from the dead job.
pub async fn operation_job_died(
    store: &Store,
    op: OperationId,
    job: JobId,
    task_kind: Option<&str>,
    tenant: Option<String>,
) {
    let tenant = tenant.unwrap_or_else(|| tenant_error(task_kind, job));
    let detail = format!("job {job} died; its last error is in the job");
    if let Err(e) = end_operation_with_error(store, op, &tenant, &detail).await {
        tracing::warn!(operation = %op, %job, error = %e, "ending the operation of a dead job failed; the sweep will");
    }
}

/// An agent job of operation `op` is done (`payload`: its `step`, the step that issued it, and
/// `then`, the step the workflow continues with): once the step has no job left, its `then` is
/// enqueued. Run in the report's transaction, under the operation's row lock, so that exactly
/// one report sees the step finished.
pub async fn agent_job_done_in(
    conn: &mut PgConnection,
    op: OperationId,
    database: DatabaseId,
    payload: &serde_json::Value,
) -> Result<(), Error> {
    let (Some(step), Some(then)) = (payload.get("step"), payload.get("then")) else { return Ok(()) };
    if step_jobs_left_in(conn, op, step).await? == 0 {
        job_enqueue_in(conn, &crate::workflows::step_job(database, op, then.clone())).await?;
    }
    Ok(())
}

/// Sweeps until `shutdown`: see the module's header.
pub async fn run_sweep(store: Store, agent_lost_after: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep_once(&store, agent_lost_after).await {
            tracing::warn!(error = %e, "sweeping operations failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass of the sweep: each operation it ends in a transaction of its own, its row locked
/// before its jobs' (as the agent API's reports lock them), so that one failure spoils nothing
/// else and a report and the sweep never wait on each other in a cycle.
pub async fn sweep_once(store: &Store, agent_lost_after: Duration) -> Result<(), Error> {
    let (dead, lost, overdue) = {
        let mut tx = store.begin().await?;
        let dead = pgplane_store::workflow::operations_with_dead_jobs_in(&mut tx).await?;
        let lost = jobs_of_lost_agents_in(&mut tx, agent_lost_after.as_secs_f64()).await?;
        let overdue = jobs_overdue_in(&mut tx).await?;
        tx.commit().await.map_err(pgplane_store::db_error)?;
        (dead, lost, overdue)
    };
    for dead in dead {
        let tenant = tenant_error(dead.task_kind.as_deref(), dead.job_id);
        let detail = format!("job {} died: {}", dead.job_id, dead.error);
        end_operation_with_error(store, dead.operation_id, &tenant, &detail).await?;
    }
    for stuck in lost {
        let mut tx = store.begin().await?;
        operation_lock_row_in(&mut tx, stuck.operation_id).await?;
        lost_agent_job(&mut tx, &stuck).await?;
        tx.commit().await.map_err(pgplane_store::db_error)?;
    }
    for stuck in overdue {
        let mut tx = store.begin().await?;
        operation_lock_row_in(&mut tx, stuck.operation_id).await?;
        let allowed = stuck.allowed_secs.unwrap_or_default().round();
        let why = format!(
            "deadline passed: not finished within {allowed} s of being claimed (or an hour more after being \
             enqueued, unclaimed) on {}",
            stuck.queue
        );
        if job_kill_in(&mut tx, stuck.job_id, &why).await? {
            let tenant = format!(
                "{} did not finish in time on the platform's side, so the operation was stopped; the platform's \
                 operators have the details (job {}). Try again later, or contact support with the job id.",
                capitalized(what_of(&stuck)),
                stuck.job_id
            );
            end_operation_with_error_in(&mut tx, stuck.operation_id, &tenant, &why).await?;
        }
        tx.commit().await.map_err(pgplane_store::db_error)?;
    }
    Ok(())
}

/// A job waiting on a lost agent: the removal of what ran there, or its drain, is skipped (the
/// step goes on without it); anything else ends the operation in `error`.
async fn lost_agent_job(conn: &mut PgConnection, stuck: &StuckJob) -> Result<(), Error> {
    let agent = stuck.lost_agent_name.as_deref().unwrap_or("?");
    let task = stuck.payload["task"]["kind"].as_str().unwrap_or(&stuck.kind);
    if matches!(task, "remove_database" | "drain_member") {
        let result = serde_json::json!({ "skipped": format!("agent {agent} is lost") });
        if job_skip_in(conn, stuck.job_id, &result).await? {
            tracing::warn!(operation = %stuck.operation_id, job = %stuck.job_id, %agent, task, "skipped: its agent is lost");
            agent_job_done_in(conn, stuck.operation_id, stuck.database_id, &stuck.payload).await?;
        }
        return Ok(());
    }
    let why = format!("agent {agent} ({}) stopped heartbeating while this job waited on it", stuck.queue);
    if job_kill_in(conn, stuck.job_id, &why).await? {
        let tenant = format!(
            "{} could not finish: the host that runs it stopped responding. The platform's operators have the \
             details (job {}); try again later, or contact support with the job id.",
            capitalized(what_of(stuck)),
            stuck.job_id
        );
        end_operation_with_error_in(conn, stuck.operation_id, &tenant, &why).await?;
    }
    Ok(())
}

/// What a stuck job was doing, for tenants.
fn what_of(stuck: &StuckJob) -> &'static str {
    crate::queue::task_description(stuck.payload["task"]["kind"].as_str())
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// When an agent reports members of databases it holds no member of any more (its host was lost
/// while they were deleted, moved or dropped, and came back), it is asked to remove them: one
/// `RemoveDatabase` job each, at the database's generation, unless one is already on its way.
pub async fn remove_leftovers(store: &Store, agent: AgentId, observed: &Observation) -> Result<(), Error> {
    let mut dbs: Vec<DatabaseId> = observed.members.iter().map(|m| m.database_id).collect();
    if dbs.is_empty() {
        return Ok(());
    }
    dbs.sort();
    dbs.dedup();
    let mut tx = store.begin().await?;
    for (database_id, generation) in agent_leftovers_in(&mut tx, agent, &dbs).await? {
        let task = AgentTask::RemoveDatabase { database_id, generation };
        let mut job = NewJob::new(
            format!("agent:{agent}"),
            "remove_database",
            serde_json::json!({ "task": serde_json::to_value(&task).map_err(Error::internal)? }),
        );
        job.database_id = Some(database_id);
        job.generation = Some(generation);
        job.max_attempts = 5;
        job_enqueue_in(&mut tx, &job).await?;
        tracing::warn!(%agent, database = %database_id, "the agent runs a part of a database it no longer holds; removing it");
    }
    tx.commit().await.map_err(pgplane_store::db_error)?;
    Ok(())
}
