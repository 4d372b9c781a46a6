//! What the daily backups need of the store beyond the backups themselves: whether a timer's
//! firing already started its backup (a firing's job run twice starts one), the retention of
//! scheduled backups by the plan's daily, weekly and monthly tiers (each dropped backup hidden at
//! once, its object then its row deleted by the backups' deletion job, a `backup_evicted` event),
//! and the outcome of a verified restore (`verified_at`, the result, a `backup_verified` or
//! `backup_verification_failed` event).

use chrono::{DateTime, Utc};
use pgplane_core::backup::{retention_deletes, BackupLimits};
use pgplane_core::ids::{BackupId, DatabaseId, OperationId, TenantId};
use pgplane_core::model::{Operation, OperationKind};
use serde_json::json;
use sqlx::PgConnection;

use crate::backups::{backup_delete_in, backup_facts_in, backup_verified_in};
use crate::config::event_insert_in;
use crate::databases::operation_insert_by;
use crate::{db_error, Result, Store};

/// The event a backup dropped by retention (or evicted by the manual quota) raises.
pub const EVICTED_EVENT: &str = "backup_evicted";
pub const VERIFIED_EVENT: &str = "backup_verified";
pub const VERIFICATION_FAILED_EVENT: &str = "backup_verification_failed";

/// Applies the plan's retention to the database's scheduled backups at `now`, in the caller's
/// transaction: returns the backups it dropped (oldest first). The newest finished one is never
/// dropped; manual backups are the quota's business, not retention's.
pub async fn retention_apply_in(conn: &mut PgConnection, db: DatabaseId, now: DateTime<Utc>) -> Result<Vec<BackupId>> {
    let plan_id: Option<String> = sqlx::query_scalar("SELECT plan_id FROM databases WHERE id = $1 FOR SHARE")
        .bind(db)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    let Some(plan_id) = plan_id else { return Ok(Vec::new()) };
    let plan = crate::plans::plan_get_in(conn, &plan_id).await?;
    let facts = backup_facts_in(conn, db).await?;
    let drops = retention_deletes(&BackupLimits::of(&plan), &facts, now);
    let mut dropped = Vec::with_capacity(drops.len());
    for id in drops {
        if backup_delete_in(conn, id).await? {
            event_insert_in(conn, db, EVICTED_EVENT, json!({ "backup_id": id, "reason": "retention" })).await?;
            dropped.push(id);
        }
    }
    Ok(dropped)
}

/// Records how the verified restore of backup `id` (of database `db`) ended, with its event:
/// `detail` is what the tenant reads when it failed.
pub async fn verification_record_in(
    conn: &mut PgConnection,
    db: DatabaseId,
    id: BackupId,
    passed: bool,
    detail: Option<&str>,
) -> Result<()> {
    backup_verified_in(conn, id, passed, detail).await?;
    let (kind, event) = if passed {
        (VERIFIED_EVENT, json!({ "backup_id": id }))
    } else {
        (VERIFICATION_FAILED_EVENT, json!({ "backup_id": id, "reason": detail }))
    };
    event_insert_in(conn, db, kind, event).await
}

/// Starts the verified restore of backup `id` (a scheduled backup of `db` that just succeeded),
/// in the caller's transaction (the backup's operation finished in it): a `verify_backup`
/// operation whose workflow the scheduler runs, asked for by the platform.
pub async fn verification_start_in(conn: &mut PgConnection, db: DatabaseId, id: BackupId) -> Result<Operation> {
    let tenant: TenantId = sqlx::query_scalar("SELECT tenant_id FROM databases WHERE id = $1")
        .bind(db)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    operation_insert_by(conn, None, tenant, db, OperationKind::VerifyBackup, json!({ "backup_id": id })).await
}

/// The member backup `id` was taken on, if it was.
pub async fn backup_member_in(conn: &mut PgConnection, id: BackupId) -> Result<Option<String>> {
    let member: Option<Option<String>> = sqlx::query_scalar("SELECT member FROM backups WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(member.flatten())
}

/// What the last finished job of kind `kind` of operation `op` reported.
pub async fn operation_report_in(
    conn: &mut PgConnection,
    op: OperationId,
    kind: &str,
) -> Result<Option<serde_json::Value>> {
    sqlx::query_scalar(
        "SELECT result FROM jobs WHERE operation_id = $1 AND kind = $2 AND status = 'done' \
         ORDER BY finished_at DESC NULLS LAST LIMIT 1",
    )
    .bind(op)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)
    .map(Option::flatten)
}

impl Store {
    /// Whether a scheduled backup of `db` was started at or after `since` (deleted or failed
    /// ones included): a timer's firing for the due time `since` already started its backup.
    pub async fn backup_scheduled_since(&self, db: DatabaseId, since: DateTime<Utc>) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM backups WHERE database_id = $1 AND method = 'scheduled' AND started_at >= $2)",
        )
        .bind(db)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)
    }

    /// Retention of every database's scheduled backups at `now` (the timers' sweep, for what a
    /// plan change shortened): one transaction per database. Returns how many backups it dropped.
    pub async fn backup_retention_sweep(&self, now: DateTime<Utc>) -> Result<usize> {
        let dbs: Vec<DatabaseId> = sqlx::query_scalar(
            "SELECT DISTINCT b.database_id FROM backups b JOIN databases d ON d.id = b.database_id \
             WHERE b.method = 'scheduled' AND b.status = 'done' AND b.deleted_at IS NULL AND d.status <> 'deleted'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut dropped = 0;
        for db in dbs {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            dropped += retention_apply_in(&mut tx, db, now).await?.len();
            tx.commit().await.map_err(db_error)?;
        }
        Ok(dropped)
    }
}
