//! Operation workflows as explicit state machines, one module per operation kind, each with
//! its own step enum (serde on the wire: the `step` of a scheduler job's payload, the `step`
//! and `then` of an agent job's). The API enqueues an `operation` job with no step (`start`).
//! A step runs in one transaction with its job's completion and either enqueues the next step
//! itself or fans work out to agents as jobs tagged `{step, then}`: the workflow writes `then`,
//! and once every agent job of `step` is done the engine (`crate::engine`) enqueues it. How an
//! operation ends in `error` (a dead job, a deadline, a lost host) is the engine's too.
//!
//! Each module draws its states in its header: `create`, `change_plan` (with `relocate`, a
//! member moving to a host with room), `delete`, `restart`, `configure`, `switchover`,
//! `update_settings`, `backup`, `restore` (in place; into a new database it is `create` with
//! `restore_from`). Scheduler jobs of kind `backup_delete` (not steps of an operation) delete a
//! backup's object, then its row (`delete_backup`). `placement` places members and gateways for `create` and `change_plan`;
//! `common` holds the specs sent to agents and the live member cluster-wide requests go through.

pub mod backup;
pub mod change_plan;
mod common;
pub mod configure;
pub mod create;
pub mod delete;
pub(crate) mod placement;
mod relocate;
pub mod restart;
pub mod restore;
pub mod switchover;
pub mod update_settings;

use pgplane_core::ids::{DatabaseId, OperationId};
use pgplane_core::model::OperationKind;
use pgplane_store::engine::Txn;
use pgplane_store::jobs::{job_complete_in, Claimed, NewJob};
use pgplane_store::workflow::operation_lock_in;
use pgplane_store::Store;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

use crate::config::SchedulerConfig;
use crate::queue::{Done, Handler, JobError};

pub(crate) use common::password;
pub use common::sizing;

/// Runs `operation` jobs.
pub struct Workflows {
    pub store: Store,
    pub config: SchedulerConfig,
    /// etcd as root, when it has auth (see `SchedulerConfig::etcd`).
    pub etcd: Option<pgplane_etcd::Client>,
}

/// A step of one workflow: what its job's payload says (`{"step": …}`).
pub trait WorkflowStep: Serialize + DeserializeOwned + Copy + std::fmt::Debug + Send + Sync {}
impl<T: Serialize + DeserializeOwned + Copy + std::fmt::Debug + Send + Sync> WorkflowStep for T {}

/// Where an operation is: its kind's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create(create::Step),
    ChangePlan(change_plan::Step),
    Restart(restart::Step),
    Configure(configure::Step),
    Switchover(switchover::Step),
    Delete(delete::Step),
    UpdateSettings(update_settings::Step),
    Backup(backup::Step),
    Restore(restore::Step),
}

impl Step {
    /// The step a scheduler job's payload names for an operation of `kind` (`start` without one).
    pub fn parse(kind: OperationKind, payload: &serde_json::Value) -> Result<Step, JobError> {
        let v = payload.get("step").cloned().unwrap_or_else(|| json!("start"));
        let bad = |e: serde_json::Error| JobError::fatal(format!("no step {v} in the {kind} workflow: {e}"));
        Ok(match kind {
            OperationKind::Create => Step::Create(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::ChangePlan => Step::ChangePlan(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::Restart => Step::Restart(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::Configure => Step::Configure(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::Switchover => Step::Switchover(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::Delete => Step::Delete(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::UpdateSettings => Step::UpdateSettings(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::Backup => Step::Backup(serde_json::from_value(v.clone()).map_err(bad)?),
            OperationKind::Restore => Step::Restore(serde_json::from_value(v.clone()).map_err(bad)?),
        })
    }

    /// The step as its job's payload writes it.
    pub fn to_value(self) -> serde_json::Value {
        match self {
            Step::Create(s) => json!(s),
            Step::ChangePlan(s) => json!(s),
            Step::Restart(s) => json!(s),
            Step::Configure(s) => json!(s),
            Step::Switchover(s) => json!(s),
            Step::Delete(s) => json!(s),
            Step::UpdateSettings(s) => json!(s),
            Step::Backup(s) => json!(s),
            Step::Restore(s) => json!(s),
        }
    }
}

/// A scheduler job that runs `step` of operation `op`.
pub fn step_job(database: DatabaseId, op: OperationId, step: serde_json::Value) -> NewJob {
    let mut job = NewJob::new(
        pgplane_store::databases::SCHEDULER_QUEUE,
        pgplane_store::databases::OPERATION_JOB,
        json!({ "step": step }),
    );
    job.database_id = Some(database);
    job.operation_id = Some(op);
    job
}

/// Enqueues `step` of the operation as a scheduler job, in the step's transaction.
pub(crate) async fn enqueue_step<S: WorkflowStep>(
    tx: &mut sqlx::PgConnection,
    st: &pgplane_store::workflow::OperationState,
    step: S,
) -> Result<(), JobError> {
    pgplane_store::jobs::job_enqueue_in(tx, &step_job(st.database_id, st.operation.id, json!(step))).await?;
    Ok(())
}

/// How a step that waits for room on the hosts begins its retryable error; the operation's
/// step then says so to the tenant (without the hosts' names).
pub const WAITING_FOR_CAPACITY: &str = "waiting for capacity";

impl Handler for Workflows {
    async fn run(&self, job: Claimed) -> Result<Done, JobError> {
        if job.kind == pgplane_store::backups::BACKUP_DELETE_JOB {
            return self.delete_backup(&job).await;
        }
        let op = job.operation_id;
        let outcome = self.run_step(job).await;
        if let (Err(JobError::Retryable(why)), Some(op)) = (&outcome, op) {
            if why.starts_with(WAITING_FOR_CAPACITY) {
                // The step's transaction rolled back: say it on a connection of its own.
                if let Err(e) = self.store.operation_note(op, WAITING_FOR_CAPACITY).await {
                    tracing::warn!(operation = %op, error = %e, "noting that the operation waits failed");
                }
            }
        }
        outcome
    }
}

impl Workflows {
    async fn run_step(&self, job: Claimed) -> Result<Done, JobError> {
        let op = job.operation_id.ok_or_else(|| JobError::fatal("operation job without an operation"))?;
        let mut tx: Txn = self.store.begin().await?;
        let st = operation_lock_in(&mut tx, &self.store, op).await?;
        if !st.operation.status.is_finished() {
            let step = Step::parse(st.operation.kind, &job.payload)?;
            tracing::debug!(operation = %op, ?step, "running a step");
            match step {
                Step::Create(s) => create::run(self, &mut tx, &st, s).await?,
                Step::ChangePlan(s) => change_plan::run(self, &mut tx, &st, s).await?,
                Step::Restart(s) => restart::run(self, &mut tx, &st, s).await?,
                Step::Configure(s) => configure::run(self, &mut tx, &st, s).await?,
                Step::Switchover(s) => switchover::run(self, &mut tx, &st, s).await?,
                Step::Delete(s) => delete::run(self, &mut tx, &st, s).await?,
                Step::UpdateSettings(s) => update_settings::run(self, &mut tx, &st, s).await?,
                Step::Backup(s) => backup::run(self, &mut tx, &st, s).await?,
                Step::Restore(s) => restore::run(self, &mut tx, &st, s).await?,
            }
        }
        if !job_complete_in(&mut tx, job.id, job.lease_id, &json!({ "step": job.payload.get("step") })).await? {
            return Err(JobError::retry("lease lost before the step committed"));
        }
        tx.commit().await.map_err(pgplane_store::db_error)?;
        Ok(Done::Committed)
    }

    /// A `backup_delete` job: the backup's object (and what an interrupted upload staged for it)
    /// is deleted from storage, then, unless the row is kept to show a failure, its row.
    async fn delete_backup(&self, job: &Claimed) -> Result<Done, JobError> {
        let id: pgplane_core::ids::BackupId = serde_json::from_value(job.payload["backup_id"].clone())
            .map_err(|e| JobError::fatal(format!("a backup_delete job without a backup id: {e}")))?;
        let keep_row = job.payload["keep_row"].as_bool().unwrap_or(false);
        let mut conn = self.store.begin().await?;
        let Some(b) = pgplane_store::backups::backup_object_in(&mut conn, id).await? else {
            return Ok(Done::Result(json!({ "deleted": id, "already": true })));
        };
        let Some(storage) = &self.config.backup_storage else {
            return Err(JobError::retry("the scheduler has no backup storage configured (--backup-storage)"));
        };
        let key = b.object_key.clone();
        let swept = storage.sweep_key(&key).map_err(|e| JobError::retry(format!("sweeping {key}: {e:#}")))?;
        storage.delete(&key).await.map_err(|e| JobError::retry(format!("deleting {key}: {e:#}")))?;
        if !keep_row {
            pgplane_store::backups::backup_row_delete_in(&mut conn, id).await?;
        }
        conn.commit().await.map_err(pgplane_store::db_error)?;
        tracing::info!(backup = %id, %key, swept, keep_row, "backup object deleted");
        Ok(Done::Result(json!({ "deleted": id, "key": key })))
    }

    /// How long an agent may stay silent before it counts as lost.
    pub(crate) fn agent_lost_after(&self) -> Duration {
        self.config.agent_lost_after
    }
}
