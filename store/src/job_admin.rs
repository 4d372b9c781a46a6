//! What operators do with jobs that went wrong. Retry: a dead job goes back to the queue with
//! its attempts counted from zero (with the other dead jobs of its operation), and an operation
//! the dead job had ended in `error` runs again, unless another operation of the database came
//! since. Fail: a job that is waiting or running dies now; its operation then ends in `error`
//! through the scheduler's one dead-job path, as if the job had died by itself.

use pgplane_core::ids::{JobId, OperationId};
use pgplane_core::model::Job;

use crate::{db_error, Error, Result, Store};

/// The `last_error` of a job an operator failed.
pub const FAILED_BY_OPERATOR: &str = "failed by an operator";

impl Store {
    /// Puts a dead job back in its queue (see the module).
    pub async fn job_retry(&self, id: JobId) -> Result<Job> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row: Option<(String, Option<OperationId>, bool)> = sqlx::query_as(
            "SELECT j.status, j.operation_id, EXISTS (SELECT 1 FROM agents a WHERE j.queue = 'agent:' || a.id::text \
                AND a.retired_at IS NOT NULL) FROM jobs j WHERE j.id = $1 FOR UPDATE OF j",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let (status, operation, agent_retired) = row.ok_or(Error::not_found("job"))?;
        if status != "dead" {
            return Err(Error::conflict(
                "job_not_dead",
                format!("only a dead job can be retried; this one is {status}"),
            ));
        }
        if agent_retired {
            return Err(Error::conflict(
                "agent_retired",
                "the agent that must run this job was retired; ask for a new operation instead",
            ));
        }
        if let Some(op) = operation {
            type OpRow = (String, String, String, uuid::Uuid, bool, bool);
            let row: Option<OpRow> = sqlx::query_as(
                "SELECT o.status, o.kind, d.status, d.id, \
                    EXISTS (SELECT 1 FROM operations x WHERE x.database_id = d.id AND x.id <> o.id \
                            AND x.status IN ('pending', 'running')), \
                    EXISTS (SELECT 1 FROM operations x WHERE x.database_id = d.id AND x.created_at > o.created_at) \
                 FROM operations o JOIN databases d ON d.id = o.database_id WHERE o.id = $1 FOR UPDATE OF o, d",
            )
            .bind(op)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            let (op_status, kind, db_status, db, other_active, later) =
                row.ok_or_else(|| Error::internal("a job's operation is missing"))?;
            match op_status.as_str() {
                "pending" | "running" => {}
                "error" if db_status == "deleted" => {
                    return Err(Error::conflict("database_deleted", "the job's database was deleted since"));
                }
                "error" if other_active || later => {
                    return Err(Error::conflict(
                        "superseded",
                        "another operation of the job's database came since; ask for a new one instead",
                    ));
                }
                "error" => {
                    sqlx::query(
                        "UPDATE operations SET status = 'running', error = NULL, finished_at = NULL WHERE id = $1",
                    )
                    .bind(op)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                    // Back to what the database was while the operation ran (a failed deletion
                    // stayed `deleting`).
                    let during = match kind.as_str() {
                        "create" => "creating",
                        "change_plan" => "changing_plan",
                        "delete" => "deleting",
                        _ => "available",
                    };
                    sqlx::query(
                        "UPDATE databases SET status = $2, updated_at = now() WHERE id = $1 AND status = 'error'",
                    )
                    .bind(db)
                    .bind(during)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
                }
                other => {
                    return Err(Error::conflict(
                        "operation_finished",
                        format!("the job's operation ended {other}; there is nothing to retry"),
                    ));
                }
            }
        }
        // Every dead job of the operation goes back (one step's jobs die together), each with its
        // earlier attempts renumbered -1, -2, … so that the new ones count from 1 again.
        let jobs: Vec<JobId> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = $1 OR (operation_id = $2 AND status = 'dead') ORDER BY id FOR UPDATE",
        )
        .bind(id)
        .bind(operation)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        for job in &jobs {
            sqlx::query(
                "UPDATE job_attempts a SET attempt = -n.rn FROM ( \
                    SELECT attempt, row_number() OVER (ORDER BY attempt < 0 DESC, abs(attempt)) AS rn \
                    FROM job_attempts WHERE job_id = $1) n \
                 WHERE a.job_id = $1 AND a.attempt = n.attempt AND a.attempt > 0",
            )
            .bind(job)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        sqlx::query(
            "UPDATE jobs SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL, updated_at = now(), \
                deadline_at = CASE WHEN time_allowed_ms IS NULL THEN NULL \
                    ELSE now() + make_interval(secs => (time_allowed_ms + $2)::float8 / 1000) END \
             WHERE id = ANY($1)",
        )
        .bind(&jobs)
        .bind(crate::jobs::QUEUE_ALLOWANCE.as_millis() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        // Read before the commit: once committed, the agent may claim the job at once.
        let job = crate::jobs::job_get_in(&mut tx, id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(job)
    }

    /// Kills a job that is waiting or running (a dead one stays as it is); see the module.
    pub async fn job_fail_now(&self, id: JobId) -> Result<Job> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        match status.ok_or(Error::not_found("job"))?.as_str() {
            "done" => return Err(Error::conflict("job_done", "this job is done; there is nothing to fail")),
            "dead" => {}
            _ => {
                sqlx::query(
                    "WITH j AS (UPDATE jobs SET status = 'dead', finished_at = now(), last_error = $2, lease_id = NULL, \
                            lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
                        WHERE id = $1 RETURNING id, attempts) \
                     UPDATE job_attempts a SET finished_at = now(), outcome = 'fatal', error = $2 FROM j \
                     WHERE a.job_id = j.id AND a.attempt = j.attempts AND a.finished_at IS NULL",
                )
                .bind(id)
                .bind(FAILED_BY_OPERATOR)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            }
        }
        tx.commit().await.map_err(db_error)?;
        self.job_get(id).await
    }
}
