//! The job queue. Jobs are enqueued in the transaction of the change that needs them,
//! claimed with `FOR UPDATE SKIP LOCKED` under a lease, and finished only by the holder of
//! that lease, so a worker whose lease expired cannot overwrite the next attempt's work.

use chrono::{DateTime, Utc};
use pgplane_core::ids::{DatabaseId, JobId, LeaseId, OperationId};
use pgplane_core::model::Job;
use pgplane_core::page::PageRequest;
use sqlx::{FromRow, PgConnection};
use std::time::Duration;

use crate::{db_error, parse_enum, Result, Store};

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub database_id: Option<DatabaseId>,
    pub operation_id: Option<OperationId>,
    pub generation: Option<i64>,
    pub max_attempts: i32,
    /// Not before this moment (now when absent).
    pub run_at: Option<DateTime<Utc>>,
    /// The job must have finished this long after it was claimed (or `QUEUE_ALLOWANCE` more
    /// after it was enqueued, while unclaimed), or its operation ends in `error` (the
    /// scheduler's sweep); none for jobs that may take as long as they take.
    pub deadline: Option<Duration>,
}

impl NewJob {
    pub fn new(queue: impl Into<String>, kind: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            database_id: None,
            operation_id: None,
            generation: None,
            max_attempts: 10,
            run_at: None,
            deadline: None,
        }
    }
}

/// A claimed job: the lease proves the claim.
#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub database_id: Option<DatabaseId>,
    pub operation_id: Option<OperationId>,
    pub generation: Option<i64>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_id: LeaseId,
}

/// What became of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back in the queue, to run again after the backoff.
    Retrying,
    /// Out of attempts, or the failure was fatal.
    Dead,
    /// The lease was no longer ours: someone else owns the job now.
    LeaseLost,
}

/// How much longer than its time allowed a job with a deadline may wait unclaimed (behind
/// other jobs of a busy agent) before its deadline passes.
pub const QUEUE_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Enqueues a job in the caller's transaction.
pub async fn job_enqueue_in(conn: &mut PgConnection, job: &NewJob) -> Result<JobId> {
    let id = JobId::new();
    sqlx::query(
        "INSERT INTO jobs (id, queue, kind, payload, database_id, operation_id, generation, max_attempts, run_at, \
            time_allowed_ms, deadline_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, now()), $10, \
            COALESCE($9, now()) + make_interval(secs => ($10 + $11)::float8 / 1000))",
    )
    .bind(id)
    .bind(&job.queue)
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(job.database_id)
    .bind(job.operation_id)
    .bind(job.generation)
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(job.deadline.map(interval_ms))
    .bind(interval_ms(QUEUE_ALLOWANCE))
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(id)
}

/// Marks a claimed job done in the caller's transaction (with the next step's enqueue, say).
/// False when the lease is no longer ours.
pub async fn job_complete_in(
    conn: &mut PgConnection,
    id: JobId,
    lease: LeaseId,
    result: &serde_json::Value,
) -> Result<bool> {
    let done = sqlx::query(
        "WITH j AS (UPDATE jobs SET status = 'done', result = $3, finished_at = now(), updated_at = now(), \
                lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND lease_id = $2 AND status = 'running' RETURNING id, attempts) \
         UPDATE job_attempts a SET finished_at = now(), outcome = 'succeeded' FROM j \
         WHERE a.job_id = j.id AND a.attempt = j.attempts",
    )
    .bind(id)
    .bind(lease)
    .bind(result)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

#[derive(FromRow)]
struct JobRow {
    id: JobId,
    queue: String,
    kind: String,
    status: String,
    database_id: Option<DatabaseId>,
    operation_id: Option<OperationId>,
    generation: Option<i64>,
    attempts: i32,
    max_attempts: i32,
    last_error: Option<String>,
    run_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    fn into_job(self) -> Result<Job> {
        Ok(Job {
            id: self.id,
            queue: self.queue,
            kind: self.kind,
            status: parse_enum(&self.status)?,
            database_id: self.database_id,
            operation_id: self.operation_id,
            generation: self.generation,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            last_error: self.last_error,
            run_at: self.run_at,
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

const JOB_COLUMNS: &str = "id, queue, kind, status, database_id, operation_id, generation, attempts, max_attempts, \
     last_error, run_at, created_at, finished_at";

fn interval_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    pub async fn job_enqueue(&self, job: &NewJob) -> Result<JobId> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        job_enqueue_in(&mut conn, job).await
    }

    /// Claims up to `limit` runnable jobs of `queue` for `worker`, each under a new lease.
    pub async fn job_claim(&self, queue: &str, worker: &str, lease: Duration, limit: i64) -> Result<Vec<Claimed>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let claimed: Vec<Claimed> = sqlx::query_as(
            "WITH next AS ( \
                SELECT id FROM jobs WHERE queue = $1 AND status = 'queued' AND run_at <= now() \
                ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, lease_id = gen_random_uuid(), \
                lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3::float8 / 1000), updated_at = now(), \
                deadline_at = CASE WHEN j.time_allowed_ms IS NULL THEN j.deadline_at \
                    ELSE now() + make_interval(secs => j.time_allowed_ms::float8 / 1000) END \
             FROM next WHERE j.id = next.id \
             RETURNING j.id, j.queue, j.kind, j.payload, j.database_id, j.operation_id, j.generation, j.attempts, \
                j.max_attempts, j.lease_id",
        )
        .bind(queue)
        .bind(worker)
        .bind(interval_ms(lease))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if !claimed.is_empty() {
            let ids: Vec<JobId> = claimed.iter().map(|c| c.id).collect();
            let attempts: Vec<i32> = claimed.iter().map(|c| c.attempts).collect();
            sqlx::query(
                "INSERT INTO job_attempts (job_id, attempt, worker) SELECT *, $3::text FROM UNNEST($1::uuid[], $2::int[])",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(worker)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(claimed)
    }

    /// Extends a lease; false when it is no longer ours (expired, reclaimed or finished).
    pub async fn job_heartbeat(&self, id: JobId, lease: LeaseId, extend: Duration) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3::float8 / 1000), updated_at = now() \
             WHERE id = $1 AND lease_id = $2 AND status = 'running' AND lease_expires_at > now()",
        )
        .bind(id)
        .bind(lease)
        .bind(interval_ms(extend))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn job_complete(&self, id: JobId, lease: LeaseId, result: &serde_json::Value) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        job_complete_in(&mut conn, id, lease, result).await
    }

    /// Records a failed attempt. `retry_in: None` is a fatal failure (dead at once);
    /// otherwise the job runs again after `retry_in`, unless it is out of attempts.
    pub async fn job_fail(
        &self,
        id: JobId,
        lease: LeaseId,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<AfterFailure> {
        let row: Option<(String,)> = sqlx::query_as(
            "WITH j AS ( \
                UPDATE jobs SET \
                    status = CASE WHEN $4::bigint IS NULL OR attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                    run_at = now() + make_interval(secs => COALESCE($4::bigint, 0)::float8 / 1000), \
                    finished_at = CASE WHEN $4::bigint IS NULL OR attempts >= max_attempts THEN now() END, \
                    last_error = $3, lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
                WHERE id = $1 AND lease_id = $2 AND status = 'running' RETURNING id, attempts, status), \
             a AS (UPDATE job_attempts a SET finished_at = now(), error = $3, \
                    outcome = CASE WHEN $4::bigint IS NULL THEN 'fatal' ELSE 'retryable' END \
                FROM j WHERE a.job_id = j.id AND a.attempt = j.attempts) \
             SELECT status FROM j",
        )
        .bind(id)
        .bind(lease)
        .bind(error)
        .bind(retry_in.map(interval_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(match row.as_ref().map(|(s,)| s.as_str()) {
            None => AfterFailure::LeaseLost,
            Some("dead") => AfterFailure::Dead,
            Some(_) => AfterFailure::Retrying,
        })
    }

    /// Ends the leases of the running jobs of `queue` now, so the reaper's next pass returns them
    /// to the queue, when their worker is known to be gone (an agent that registers again has
    /// restarted and runs nothing) instead of after the lease's full length. Returns how many.
    pub async fn job_expire_leases(&self, queue: &str) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = now(), updated_at = now() WHERE queue = $1 AND status = 'running'",
        )
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    /// Puts jobs whose lease expired back in the queue (or kills them when out of attempts).
    /// Returns how many were reaped.
    pub async fn job_reap_expired(&self) -> Result<u64> {
        let done = sqlx::query(
            "WITH j AS ( \
                UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                    finished_at = CASE WHEN attempts >= max_attempts THEN now() END, \
                    run_at = now(), last_error = 'lease expired (worker died or stalled)', \
                    lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
                WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < now() \
                             FOR UPDATE SKIP LOCKED) \
                RETURNING id, attempts) \
             UPDATE job_attempts a SET finished_at = now(), outcome = 'lease_expired', \
                error = 'lease expired' FROM j WHERE a.job_id = j.id AND a.attempt = j.attempts",
        )
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    pub async fn job_get(&self, id: JobId) -> Result<Job> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        job_get_in(&mut conn, id).await
    }

    /// Jobs in one status (operators look at `dead` ones), oldest first.
    pub async fn job_list(
        &self,
        status: pgplane_core::model::JobStatus,
        page: &PageRequest,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind(status.as_str())
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(JobRow::into_job).collect::<Result<_>>()?, next))
    }
}

/// What the agent API needs to know about a job an agent reports on.
#[derive(Debug, Clone, FromRow)]
pub struct JobRef {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub operation_id: Option<OperationId>,
    pub database_id: Option<DatabaseId>,
    pub attempts: i32,
}

impl Store {
    pub async fn job_ref(&self, id: JobId) -> Result<Option<JobRef>> {
        sqlx::query_as("SELECT id, queue, kind, payload, operation_id, database_id, attempts FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }
}

/// One job as the caller's transaction sees it (an operator's answer must show the job as the
/// change left it, not as an agent that claimed it a moment after the commit made it).
pub(crate) async fn job_get_in(conn: &mut sqlx::PgConnection, id: JobId) -> Result<Job> {
    let row: Option<JobRow> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.ok_or(pgplane_core::Error::not_found("job"))?.into_job()
}
