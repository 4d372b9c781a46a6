//! Logical backups: the rows tenants list and show, the start of a backup (its operation and
//! its row together, a manual one admitted by the plan's quota under the database's row lock),
//! the workflow's status transitions, and deletion (the row hidden at once, its object deleted by
//! a scheduler job, then its row). What quotas and retention read of each backup is
//! `BackupFacts`.

use chrono::{DateTime, Utc};
use pgplane_core::agent::BackupLocation;
use pgplane_core::backup::{self, Backup, BackupFacts, BackupLimits, BackupMethod, BackupQuota, BackupStatus, Refusal};
use pgplane_core::ids::{BackupId, DatabaseId, OperationId, TenantId};
use pgplane_core::model::{DatabaseStatus, Operation, OperationKind};
use pgplane_core::page::PageRequest;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::databases::{operation_insert_by, SCHEDULER_QUEUE};
use crate::jobs::{job_enqueue_in, NewJob};
use crate::{db_error, parse_enum, Actor, Error, Result, Scoped, Store};

/// The scheduler job that deletes a backup's object, then (unless `keep_row`) its row.
pub const BACKUP_DELETE_JOB: &str = "backup_delete";

#[derive(FromRow)]
struct BackupRow {
    id: BackupId,
    database_id: DatabaseId,
    method: String,
    status: String,
    error: Option<String>,
    operation_id: Option<OperationId>,
    member: Option<String>,
    postgres_version: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    verified_at: Option<DateTime<Utc>>,
    verification: Option<String>,
    verification_detail: Option<String>,
}

impl BackupRow {
    fn into_backup(self) -> Result<Backup> {
        Ok(Backup {
            id: self.id,
            database_id: self.database_id,
            method: parse_enum(&self.method)?,
            status: parse_enum(&self.status)?,
            error: self.error,
            operation_id: self.operation_id,
            member: self.member,
            // `server_version` reads `15.14 (Debian 15.14-0+deb12u1)`: tenants see the version.
            postgres_version: self
                .postgres_version
                .map(|v| v.split_whitespace().next().unwrap_or_default().to_string()),
            started_at: self.started_at,
            finished_at: self.finished_at,
            size_bytes: self.size_bytes,
            sha256: self.sha256,
            verified_at: self.verified_at,
            verification: self.verification.as_deref().map(parse_enum).transpose()?,
            verification_detail: self.verification_detail,
        })
    }
}

const COLUMNS: &str =
    "b.id, b.database_id, b.method, b.status, b.error, b.operation_id, b.member, b.postgres_version, \
     b.started_at, b.finished_at, b.size_bytes, b.sha256, b.verified_at, b.verification, b.verification_detail";

/// A backup as the platform handles it: where its object is and what the dump recorded.
#[derive(Debug, Clone, FromRow)]
pub struct BackupObject {
    pub id: BackupId,
    pub tenant_id: TenantId,
    pub database_id: DatabaseId,
    pub method: String,
    pub status: String,
    pub object_key: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<i64>,
    /// The full `server_version` of the server dumped.
    pub postgres_version: Option<String>,
    pub row_counts: Option<serde_json::Value>,
    pub operation_id: Option<OperationId>,
    pub started_at: DateTime<Utc>,
    pub deleted: bool,
}

impl BackupObject {
    pub fn location(&self) -> BackupLocation {
        BackupLocation { key: self.object_key.clone() }
    }
    pub fn is_done(&self) -> bool {
        self.status == BackupStatus::Done.as_str()
    }
}

const OBJECT_COLUMNS: &str =
    "id, tenant_id, database_id, method, status, object_key, sha256, size_bytes, postgres_version, \
     row_counts, operation_id, started_at, deleted_at IS NOT NULL AS deleted";

/// What a finished dump recorded.
#[derive(Debug, Clone)]
pub struct DumpRecord<'a> {
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub postgres_version: &'a str,
    pub from_standby: bool,
    pub row_counts: &'a serde_json::Value,
}

/// The backups of a database that quotas and retention count (deleted ones are gone).
pub async fn backup_facts_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Vec<BackupFacts>> {
    let rows: Vec<(BackupId, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, method, status, started_at FROM backups WHERE database_id = $1 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(db)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    rows.into_iter()
        .map(|(id, method, status, started_at)| {
            Ok(BackupFacts { id, method: parse_enum(&method)?, status: parse_enum(&status)?, started_at })
        })
        .collect()
}

/// A backup by id, deleted or not, without access checks (the scheduler's view).
pub async fn backup_object_in(conn: &mut PgConnection, id: BackupId) -> Result<Option<BackupObject>> {
    sqlx::query_as(&format!("SELECT {OBJECT_COLUMNS} FROM backups WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)
}

/// The backup an operation of kind `backup` takes.
pub async fn backup_of_operation_in(conn: &mut PgConnection, op: OperationId) -> Result<Option<BackupObject>> {
    sqlx::query_as(&format!("SELECT {OBJECT_COLUMNS} FROM backups WHERE operation_id = $1"))
        .bind(op)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)
}

/// The dump started on `member`.
pub async fn backup_running_in(conn: &mut PgConnection, id: BackupId, member: &str) -> Result<()> {
    sqlx::query(
        "UPDATE backups SET status = 'running', member = $2 WHERE id = $1 AND status IN ('pending', 'running')",
    )
    .bind(id)
    .bind(member)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The dump is in storage: size, SHA-256, version and row counts recorded, status `done`.
pub async fn backup_done_in(conn: &mut PgConnection, id: BackupId, dump: &DumpRecord<'_>) -> Result<()> {
    sqlx::query(
        "UPDATE backups SET status = 'done', error = NULL, size_bytes = $2, sha256 = $3, postgres_version = $4, \
            from_standby = $5, row_counts = $6, finished_at = now() WHERE id = $1 AND status IN ('pending', 'running')",
    )
    .bind(id)
    .bind(dump.size_bytes)
    .bind(dump.sha256)
    .bind(dump.postgres_version)
    .bind(dump.from_standby)
    .bind(dump.row_counts)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The backups of operation `op` still pending or running end in `error` with the tenant's
/// `reason` (the operation ended in error); their objects, should a dump have completed after
/// all, are deleted (rows kept, to show the failure); a `backup_failed` event each. Returns the
/// backups it failed.
pub async fn backup_fail_of_operation_in(
    conn: &mut PgConnection,
    op: OperationId,
    reason: &str,
) -> Result<Vec<BackupId>> {
    let failed: Vec<(BackupId, DatabaseId)> = sqlx::query_as(
        "UPDATE backups SET status = 'error', error = $2, finished_at = now() \
         WHERE operation_id = $1 AND status IN ('pending', 'running') RETURNING id, database_id",
    )
    .bind(op)
    .bind(reason)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut ids = Vec::with_capacity(failed.len());
    for (id, db) in failed {
        crate::config::event_insert_in(conn, db, "backup_failed", json!({ "backup_id": id, "reason": reason })).await?;
        enqueue_delete_in(conn, id, true).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Deletion of backup `id` (an eviction, retention, or the tenant): hidden at once from lists
/// and quotas, its object deleted by a scheduler job, then its row. False when it was deleted
/// already.
pub async fn backup_delete_in(conn: &mut PgConnection, id: BackupId) -> Result<bool> {
    let hidden = sqlx::query("UPDATE backups SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    if hidden.rows_affected() == 0 {
        return Ok(false);
    }
    enqueue_delete_in(conn, id, false).await?;
    Ok(true)
}

async fn enqueue_delete_in(conn: &mut PgConnection, id: BackupId, keep_row: bool) -> Result<()> {
    let mut job = NewJob::new(SCHEDULER_QUEUE, BACKUP_DELETE_JOB, json!({ "backup_id": id, "keep_row": keep_row }));
    job.max_attempts = 20;
    job_enqueue_in(conn, &job).await?;
    Ok(())
}

/// The row of a deleted backup whose object is gone.
pub async fn backup_row_delete_in(conn: &mut PgConnection, id: BackupId) -> Result<()> {
    sqlx::query("DELETE FROM backups WHERE id = $1 AND deleted_at IS NOT NULL")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Records how a verified restore of backup `id` ended.
pub async fn backup_verified_in(
    conn: &mut PgConnection,
    id: BackupId,
    passed: bool,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE backups SET verified_at = now(), verification = $2, verification_detail = $3 WHERE id = $1")
        .bind(id)
        .bind(if passed { "passed" } else { "failed" })
        .bind(detail)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Locks an available database for a backup; its tenant, plan id and the limits of its plan.
async fn lock_for_backup(conn: &mut PgConnection, db: DatabaseId) -> Result<(TenantId, BackupLimits)> {
    let row: Option<(TenantId, String, String)> = sqlx::query_as(
        "SELECT tenant_id, plan_id, status FROM databases WHERE id = $1 AND status <> 'deleted' FOR UPDATE",
    )
    .bind(db)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let (tenant, plan_id, status) = row.ok_or(Error::not_found("database"))?;
    let status: DatabaseStatus = parse_enum(&status)?;
    if status != DatabaseStatus::Available {
        return Err(Error::conflict("not_available", format!("the database is {status}; wait until it is available")));
    }
    let plan = crate::plans::plan_get_in(conn, &plan_id).await?;
    Ok((tenant, BackupLimits::of(&plan)))
}

impl Store {
    /// A backup of `database` with the caller's role in its tenant; deleted ones are not found.
    pub async fn backup_get(&self, actor: &Actor, database: DatabaseId, id: BackupId) -> Result<Scoped<Backup>> {
        let scoped = self.backup_get_any(actor, id).await?;
        if scoped.item.database_id != database {
            return Err(Error::not_found("backup"));
        }
        Ok(scoped)
    }

    /// A backup of any database of the caller's tenants (a restore may take one of another
    /// database of the same tenant); deleted ones, and backups of deleted databases, are not found.
    pub async fn backup_get_any(&self, actor: &Actor, id: BackupId) -> Result<Scoped<Backup>> {
        #[derive(FromRow)]
        struct Row {
            #[sqlx(flatten)]
            b: BackupRow,
            role: Option<String>,
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS}, m.role FROM backups b JOIN databases d ON d.id = b.database_id \
             LEFT JOIN memberships m ON m.tenant_id = b.tenant_id AND m.user_id = $2 \
             WHERE b.id = $1 AND b.deleted_at IS NULL AND d.status <> 'deleted' AND (m.role IS NOT NULL OR $3)"
        ))
        .bind(id)
        .bind(actor.user_id)
        .bind(actor.is_operator())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let row = row.ok_or(Error::not_found("backup"))?;
        Ok(Scoped { role: crate::scoped_role(row.role.as_deref())?, item: row.b.into_backup()? })
    }

    /// The database's backups, newest first (the caller checked access to the database).
    pub async fn backup_list(&self, database: DatabaseId, page: &PageRequest) -> Result<(Vec<Backup>, Option<String>)> {
        let rows: Vec<BackupRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM backups b WHERE b.database_id = $1 AND b.deleted_at IS NULL \
             AND ($2::uuid IS NULL OR b.id < $2) ORDER BY b.id DESC LIMIT $3"
        ))
        .bind(database)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(BackupRow::into_backup).collect::<Result<_>>()?, next))
    }

    /// Where a backup's object is and what its dump recorded (no access checks: call it after
    /// `backup_get`, e.g. to stream a download).
    pub async fn backup_object(&self, id: BackupId) -> Result<Option<BackupObject>> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        backup_object_in(&mut conn, id).await
    }

    /// The backups quotas and retention count, for a database.
    pub async fn backup_facts(&self, database: DatabaseId) -> Result<Vec<BackupFacts>> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        backup_facts_in(&mut conn, database).await
    }

    /// The manual quota of a database at `now` (the caller checked access to the database).
    pub async fn backup_quota(&self, database: DatabaseId, now: DateTime<Utc>) -> Result<BackupQuota> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let plan_id: Option<String> =
            sqlx::query_scalar("SELECT plan_id FROM databases WHERE id = $1 AND status <> 'deleted'")
                .bind(database)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
        let plan = crate::plans::plan_get_in(&mut conn, &plan_id.ok_or(Error::not_found("database"))?).await?;
        let facts = backup_facts_in(&mut conn, database).await?;
        Ok(backup::quota(&BackupLimits::of(&plan), &facts, now))
    }

    /// Starts a backup of an available database: its row (`pending`) and its `backup` operation,
    /// atomically. A manual one is admitted by the plan's quota at `now` (refused over the per-day
    /// cap, with when the next is allowed, or when the plan has none); its operation's params
    /// name the backup it will evict once it succeeded. A scheduled one (`requested_by` none: the
    /// daily timer) counts against nothing. Another operation in progress is a conflict.
    pub async fn backup_start(
        &self,
        requested_by: Option<&Actor>,
        database: DatabaseId,
        method: BackupMethod,
        now: DateTime<Utc>,
    ) -> Result<(Backup, Operation)> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let (tenant, limits) = lock_for_backup(&mut tx, database).await?;
        let evicts = match method {
            BackupMethod::Scheduled => None,
            BackupMethod::Manual => {
                let facts = backup_facts_in(&mut tx, database).await?;
                match backup::admit_manual(&limits, &facts, now) {
                    Ok(evicts) => evicts,
                    Err(Refusal::NotInPlan) => {
                        return Err(Error::conflict(
                            "backups_not_in_plan",
                            "the database's plan includes no manual backups; change to a plan with backups",
                        ))
                    }
                    Err(Refusal::DailyCap { next_allowed_at }) => {
                        return Err(Error::QuotaExceeded {
                            code: "backup_daily_cap",
                            message: format!(
                                "the plan allows {} manual backups per day (UTC) and today's are used; the next one is \
                                 allowed at {}",
                                limits.manual_per_day,
                                next_allowed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            ),
                            next_allowed_at: Some(next_allowed_at),
                        })
                    }
                }
            }
        };
        let id = BackupId::new();
        let op = operation_insert_by(
            &mut tx,
            requested_by.map(|a| a.user_id),
            tenant,
            database,
            OperationKind::Backup,
            json!({ "backup_id": id, "method": method, "evicts": evicts }),
        )
        .await?;
        let row: BackupRow = sqlx::query_as(&format!(
            "INSERT INTO backups AS b (id, tenant_id, database_id, method, status, operation_id, object_key, started_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7) RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(tenant)
        .bind(database)
        .bind(method.as_str())
        .bind(op.id)
        .bind(BackupLocation::of(database, id).key)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok((row.into_backup()?, op))
    }

    /// Deletes a finished backup of `database` (the caller checked access and role): gone for
    /// the tenant at once, its object then its row deleted by the scheduler. One still being
    /// taken is a conflict.
    pub async fn backup_delete(&self, database: DatabaseId, id: BackupId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM backups WHERE id = $1 AND database_id = $2 AND deleted_at IS NULL FOR UPDATE",
        )
        .bind(id)
        .bind(database)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let (status,) = row.ok_or(Error::not_found("backup"))?;
        if matches!(parse_enum::<BackupStatus>(&status)?, BackupStatus::Pending | BackupStatus::Running) {
            return Err(Error::conflict(
                "backup_in_progress",
                "the backup is still being taken; delete it once it ended",
            ));
        }
        backup_delete_in(&mut tx, id).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}

/// What the last done agent job of kind `kind` of operation `op` reported.
pub async fn operation_job_result_in(
    conn: &mut PgConnection,
    op: OperationId,
    kind: &str,
) -> Result<Option<serde_json::Value>> {
    let result: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "SELECT result FROM jobs WHERE operation_id = $1 AND kind = $2 AND status = 'done' \
         ORDER BY finished_at DESC LIMIT 1",
    )
    .bind(op)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(result.flatten())
}

/// A member with its role and state as last observed (`leader`/`replica`, `streaming`, …).
#[derive(Debug, Clone, FromRow)]
pub struct MemberRole {
    pub name: String,
    pub role: String,
    pub state: String,
}

/// The database's members with their observed roles and states, in name order.
pub async fn member_roles_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Vec<MemberRole>> {
    sqlx::query_as("SELECT name, role, state FROM database_members WHERE database_id = $1 ORDER BY name")
        .bind(db)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)
}

/// The plan limits of a database's plan.
pub async fn backup_limits_in(conn: &mut PgConnection, db: DatabaseId) -> Result<BackupLimits> {
    let plan_id: String = sqlx::query_scalar("SELECT plan_id FROM databases WHERE id = $1")
        .bind(db)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(BackupLimits::of(&crate::plans::plan_get_in(conn, &plan_id).await?))
}
