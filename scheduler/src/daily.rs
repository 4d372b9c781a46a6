//! Daily backups: what a database's daily timer (`backup:<id>`, a `backup` job on the timer
//! queue) does when it fires, and what follows a scheduled backup that succeeded.
//!
//! A firing starts the backup workflow with method `scheduled` (not counted in the manual
//! quota), once: a job run twice finds the backup its first run started (any scheduled backup
//! started since the due time) and starts none. A database busy with another operation when its
//! hour comes is tried again every `DEFER_BY`, up to `DEFERRALS` times (a plan change or restore
//! in progress postpones the day's backup instead of losing it); a database gone takes none.
//!
//! After a scheduled backup succeeded (`after_scheduled_backup_in`, in the backup workflow's last
//! transaction): retention drops what the plan's tiers no longer keep, and a `verify_backup`
//! operation restores the new backup into a scratch PostgreSQL (see `workflows::verify_backup`).

use chrono::{DateTime, Utc};
use pgplane_core::backup::BackupMethod;
use pgplane_core::ids::DatabaseId;
use pgplane_core::Error;
use pgplane_store::daily_backups::{retention_apply_in, verification_start_in};
use pgplane_store::jobs::{Claimed, NewJob};
use pgplane_store::Store;
use serde_json::json;
use sqlx::PgConnection;

use crate::queue::{Done, JobError};

/// How long a daily backup waits for the operation in its way, each time.
pub const DEFER_BY: chrono::Duration = chrono::Duration::minutes(10);
/// How many times it waits (two hours) before the day's backup is given up.
pub const DEFERRALS: u64 = 12;

/// Runs a daily timer's `backup` job at `now` (the scheduler's clock).
pub async fn run_timer_job(store: &Store, job: &Claimed, now: DateTime<Utc>) -> Result<Done, JobError> {
    let database: DatabaseId = serde_json::from_value(job.payload["database_id"].clone())
        .map_err(|e| JobError::fatal(format!("a backup timer job without its database: {e}")))?;
    let due_at: DateTime<Utc> = serde_json::from_value(job.payload["due_at"].clone())
        .map_err(|e| JobError::fatal(format!("a backup timer job without its due time: {e}")))?;
    let deferred = job.payload["deferred"].as_u64().unwrap_or(0);
    if store.backup_scheduled_since(database, due_at).await? {
        return Ok(Done::Result(json!({ "skipped": "this due time's backup was started already" })));
    }
    match store.backup_start(None, database, BackupMethod::Scheduled, now).await {
        Ok((backup, op)) => {
            tracing::info!(database = %database, backup = %backup.id, operation = %op.id, %due_at, "daily backup started");
            Ok(Done::Result(json!({ "backup_id": backup.id, "operation_id": op.id })))
        }
        Err(Error::NotFound { .. }) => Ok(Done::Result(json!({ "skipped": "the database is gone" }))),
        Err(Error::Conflict { message, .. }) if deferred < DEFERRALS => {
            let mut again = NewJob::new(&job.queue, &job.kind, job.payload.clone());
            again.payload["deferred"] = json!(deferred + 1);
            again.database_id = Some(database);
            again.max_attempts = job.max_attempts;
            again.run_at = Some(Utc::now() + DEFER_BY);
            let id = store.job_enqueue(&again).await?;
            tracing::info!(database = %database, %due_at, why = %message, next = %id, "daily backup postponed");
            Ok(Done::Result(json!({ "postponed": message, "next_job": id })))
        }
        Err(Error::Conflict { message, .. }) => {
            tracing::warn!(database = %database, %due_at, why = %message, "daily backup given up for today");
            Ok(Done::Result(json!({ "given_up": message })))
        }
        Err(e) => Err(e.into()),
    }
}

/// What follows a scheduled backup that succeeded, in the transaction where its `backup`
/// operation finished: the plan's retention drops what its tiers no longer keep (each with a
/// `backup_evicted` event), and a `verify_backup` operation starts for the new backup.
pub async fn after_scheduled_backup_in(
    conn: &mut PgConnection,
    database: DatabaseId,
    backup: pgplane_core::ids::BackupId,
    now: DateTime<Utc>,
) -> Result<(), JobError> {
    let dropped = retention_apply_in(conn, database, now).await?;
    if !dropped.is_empty() {
        tracing::info!(database = %database, dropped = dropped.len(), "retention dropped scheduled backups");
    }
    let op = verification_start_in(conn, database, backup).await?;
    tracing::info!(database = %database, %backup, operation = %op.id, "verified restore started");
    Ok(())
}
