//! The retention sweep: finished jobs (with their attempts) and idempotency keys older than
//! their retention are deleted, in batches so that no sweep holds many row locks at once.
//! Jobs of an operation still in flight are kept whatever their age. Timers of deleted
//! databases go too.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

use crate::idempotency::KEY_TTL_HOURS;
use crate::{db_error, Result, Store};

/// How long finished things are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Jobs `done` or `dead` this long ago go, with their attempts (default 30 days).
    pub finished_jobs: Duration,
    /// Idempotency keys this old go (default 24 h, as long as a key is replayed).
    pub idempotency_keys: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            finished_jobs: Duration::from_secs(30 * 24 * 3600),
            idempotency_keys: Duration::from_secs(KEY_TTL_HOURS as u64 * 3600),
        }
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    pub jobs: u64,
    pub job_attempts: u64,
    pub idempotency_keys: u64,
    pub timers: u64,
}

/// Rows deleted per statement.
const BATCH: i64 = 500;

fn before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

impl Store {
    /// Deletes what is older than its retention at `now`.
    pub async fn retention_sweep(&self, now: DateTime<Utc>, retention: &Retention) -> Result<Swept> {
        let mut swept = Swept::default();
        let jobs_before = before(now, retention.finished_jobs);
        loop {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT j.id FROM jobs j WHERE j.status IN ('done', 'dead') AND j.finished_at < $1 \
                   AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.id = j.operation_id \
                                   AND o.status IN ('pending', 'running')) \
                 ORDER BY j.finished_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(jobs_before)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if ids.is_empty() {
                break;
            }
            let attempts = sqlx::query("DELETE FROM job_attempts WHERE job_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            let jobs = sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            swept.job_attempts += attempts.rows_affected();
            swept.jobs += jobs.rows_affected();
            if (ids.len() as i64) < BATCH {
                break;
            }
        }
        let keys_before = before(now, retention.idempotency_keys);
        loop {
            let done = sqlx::query(
                "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
                    SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2))",
            )
            .bind(keys_before)
            .bind(BATCH)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            swept.idempotency_keys += done.rows_affected();
            if (done.rows_affected() as i64) < BATCH {
                break;
            }
        }
        let timers =
            sqlx::query("DELETE FROM timers t USING databases d WHERE t.database_id = d.id AND d.status = 'deleted'")
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        swept.timers = timers.rows_affected();
        Ok(swept)
    }
}
