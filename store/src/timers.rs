//! Durable timers (see core's `timer`): created or updated by name, fired by whichever
//! scheduler finds them due first. Firing locks the due rows with `FOR UPDATE SKIP LOCKED`,
//! enqueues each one's job and moves its `next_fire_at` past `now` in the same transaction, so
//! a due time fires exactly once with any number of schedulers, and a timer missed while every
//! scheduler was down fires once. `now` is the caller's clock (tests move it).

use chrono::{DateTime, Utc};
use pgplane_core::backup::daily;
use pgplane_core::ids::{DatabaseId, JobId};
use pgplane_core::page::PageRequest;
use pgplane_core::timer::{Schedule, Timer};
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::jobs::{job_enqueue_in, NewJob};
use crate::{db_error, Error, Result, Store};

/// The queue timer jobs run on (the scheduler's timer worker); a timer may name another.
pub const TIMER_QUEUE: &str = "timers";
/// The job kind of the daily backup timers (`timer_set_daily_backup`).
pub const BACKUP_JOB: &str = "backup";

/// A timer to create, or to update by name.
#[derive(Debug, Clone)]
pub struct NewTimer {
    pub name: String,
    pub schedule: Schedule,
    pub database_id: Option<DatabaseId>,
    pub job_queue: String,
    pub job_kind: String,
    /// The firing adds `timer` (the name) and `due_at` to this.
    pub job_payload: serde_json::Value,
}

impl NewTimer {
    /// A timer whose jobs run on the scheduler's timer worker.
    pub fn new(name: impl Into<String>, schedule: Schedule, job_kind: impl Into<String>) -> Self {
        NewTimer {
            name: name.into(),
            schedule,
            database_id: None,
            job_queue: TIMER_QUEUE.into(),
            job_kind: job_kind.into(),
            job_payload: json!({}),
        }
    }
}

/// One firing: the timer, the due time it fired for, and the job it enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub name: String,
    pub due_at: DateTime<Utc>,
    pub job_id: JobId,
}

#[derive(FromRow)]
struct TimerRow {
    id: uuid::Uuid,
    name: String,
    kind: String,
    schedule: sqlx::types::Json<Schedule>,
    database_id: Option<DatabaseId>,
    job_queue: String,
    job_kind: String,
    job_payload: serde_json::Value,
    next_fire_at: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    last_job_id: Option<JobId>,
    created_at: DateTime<Utc>,
}

impl TimerRow {
    fn into_model(self) -> Timer {
        Timer {
            id: self.id,
            name: self.name,
            kind: self.kind,
            schedule: self.schedule.0,
            database_id: self.database_id,
            job_kind: self.job_kind,
            next_fire_at: self.next_fire_at,
            last_fired_at: self.last_fired_at,
            last_job_id: self.last_job_id,
            created_at: self.created_at,
        }
    }
}

const TIMER_COLUMNS: &str = "id, name, kind, schedule, database_id, job_queue, job_kind, job_payload, next_fire_at, \
     last_fired_at, last_job_id, created_at";

impl Store {
    /// Creates the timer, or updates the one of that name (idempotent: schedulers call it at
    /// every start). An unchanged schedule keeps its next due time; a new one starts from `now`.
    pub async fn timer_upsert(&self, timer: &NewTimer, now: DateTime<Utc>) -> Result<Timer> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        timer_upsert_in(&mut conn, timer, now).await
    }

    /// Removes a timer; false when there was none of that name.
    pub async fn timer_remove(&self, name: &str) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        timer_remove_in(&mut conn, name).await
    }
}

/// `Store::timer_upsert` in the caller's transaction.
pub async fn timer_upsert_in(conn: &mut PgConnection, timer: &NewTimer, now: DateTime<Utc>) -> Result<Timer> {
    timer.schedule.check().map_err(|e| Error::invalid("schedule", "invalid", e))?;
    let row: TimerRow = sqlx::query_as(&format!(
            "INSERT INTO timers AS t (id, name, kind, schedule, database_id, job_queue, job_kind, job_payload, next_fire_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, schedule = EXCLUDED.schedule, \
                database_id = EXCLUDED.database_id, job_queue = EXCLUDED.job_queue, job_kind = EXCLUDED.job_kind, \
                job_payload = EXCLUDED.job_payload, \
                next_fire_at = CASE WHEN t.schedule = EXCLUDED.schedule THEN t.next_fire_at ELSE EXCLUDED.next_fire_at END, \
                updated_at = now() \
             RETURNING {TIMER_COLUMNS}"
        ))
        .bind(uuid::Uuid::now_v7())
        .bind(&timer.name)
        .bind(timer.schedule.kind())
        .bind(sqlx::types::Json(timer.schedule))
        .bind(timer.database_id)
        .bind(&timer.job_queue)
        .bind(&timer.job_kind)
        .bind(&timer.job_payload)
        .bind(timer.schedule.first(now))
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(row.into_model())
}

/// `Store::timer_remove` in the caller's transaction.
pub async fn timer_remove_in(conn: &mut PgConnection, name: &str) -> Result<bool> {
    let done =
        sqlx::query("DELETE FROM timers WHERE name = $1").bind(name).execute(&mut *conn).await.map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

impl Store {
    pub async fn timer_get(&self, name: &str) -> Result<Timer> {
        let row: Option<TimerRow> = sqlx::query_as(&format!("SELECT {TIMER_COLUMNS} FROM timers WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(TimerRow::into_model).ok_or(Error::not_found("timer"))
    }

    /// Timers in creation order (ids are UUIDv7), for operators.
    pub async fn timer_page(&self, page: &PageRequest) -> Result<(Vec<Timer>, Option<String>)> {
        let rows: Vec<TimerRow> = sqlx::query_as(&format!(
            "SELECT {TIMER_COLUMNS} FROM timers WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(TimerRow::into_model).collect(), next))
    }

    /// Fires up to `limit` timers due at `now`: each enqueues its job and moves to its next due
    /// time after `now`, in one transaction. Rows another scheduler is firing are skipped, and so
    /// are the timers of deleted databases (the retention sweep removes them).
    pub async fn timer_fire_due(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Fired>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let due: Vec<TimerRow> = sqlx::query_as(&format!(
            "SELECT {TIMER_COLUMNS} FROM timers t WHERE next_fire_at <= $1 \
               AND NOT EXISTS (SELECT 1 FROM databases d WHERE d.id = t.database_id AND d.status = 'deleted') \
             ORDER BY next_fire_at, id LIMIT $2 FOR UPDATE OF t SKIP LOCKED"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut fired = Vec::with_capacity(due.len());
        for t in due {
            let due_at = t.next_fire_at.ok_or_else(|| Error::internal("a due timer without a due time"))?;
            let mut payload = match t.job_payload {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            payload.insert("timer".into(), json!(t.name));
            payload.insert("due_at".into(), json!(due_at));
            let mut job = NewJob::new(&t.job_queue, &t.job_kind, serde_json::Value::Object(payload));
            job.database_id = t.database_id;
            job.max_attempts = 3;
            let job_id = job_enqueue_in(&mut tx, &job).await?;
            sqlx::query(
                "UPDATE timers SET next_fire_at = $2, last_fired_at = $3, last_job_id = $4, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(t.id)
            .bind(t.schedule.0.after(now))
            .bind(now)
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            fired.push(Fired { name: t.name, due_at, job_id });
        }
        tx.commit().await.map_err(db_error)?;
        Ok(fired)
    }

    /// The daily backup timer of a database: `Some(hour)` creates or moves "every day at `hour`
    /// UTC for this database" (`backup:<id>`, a `backup` job on the timer queue), `None` removes it.
    pub async fn timer_set_daily_backup(
        &self,
        database: DatabaseId,
        hour: Option<u8>,
        now: DateTime<Utc>,
    ) -> Result<Option<Timer>> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        timer_set_daily_backup_in(&mut conn, database, hour, now).await
    }

    /// Makes every database's daily backup timer what its state says (`daily_backup_timer_sync_in`
    /// for each database not deleted): run at a scheduler's start, so databases made before the
    /// timers existed get theirs. Returns how many databases take a daily backup.
    pub async fn daily_backup_timers_reconcile(&self, now: DateTime<Utc>) -> Result<usize> {
        let ids: Vec<DatabaseId> = sqlx::query_scalar(
            "SELECT id FROM databases WHERE status <> 'deleted' \
             UNION SELECT database_id FROM timers WHERE job_kind = $1 AND database_id IS NOT NULL",
        )
        .bind(BACKUP_JOB)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut taking = 0;
        for id in ids {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            if daily_backup_timer_sync_in(&mut tx, id, now).await?.is_some() {
                taking += 1;
            }
            tx.commit().await.map_err(db_error)?;
        }
        Ok(taking)
    }
}

/// How long after a daily backup timer is made (or its hour moves) its first firing may come.
pub const FIRST_DAILY_BACKUP_AFTER: chrono::Duration = chrono::Duration::hours(1);

/// The name of a database's daily backup timer.
pub fn daily_backup_timer_name(database: DatabaseId) -> String {
    format!("backup:{database}")
}

/// `Store::timer_set_daily_backup` in the caller's transaction.
pub async fn timer_set_daily_backup_in(
    conn: &mut PgConnection,
    database: DatabaseId,
    hour: Option<u8>,
    now: DateTime<Utc>,
) -> Result<Option<Timer>> {
    let name = daily_backup_timer_name(database);
    let Some(hour) = hour else {
        timer_remove_in(conn, &name).await?;
        return Ok(None);
    };
    let mut timer = NewTimer::new(name, Schedule::Daily { hour }, BACKUP_JOB);
    timer.database_id = Some(database);
    timer.job_payload = json!({ "database_id": database });
    Ok(Some(timer_upsert_in(conn, &timer, now).await?))
}

/// Makes the database's daily backup timer what its stored state says, in the caller's
/// transaction: at its effective hour while it is not being deleted, its plan keeps daily backups
/// and the tenant left them on; removed otherwise. Idempotent: every workflow that changes one of
/// these calls it (create, settings, plan change, delete). An unchanged hour keeps its next due
/// time; a new timer, or a new hour, is first due at its hour after `FIRST_DAILY_BACKUP_AFTER`.
pub async fn daily_backup_timer_sync_in(
    conn: &mut PgConnection,
    database: DatabaseId,
    now: DateTime<Utc>,
) -> Result<Option<Timer>> {
    #[derive(FromRow)]
    struct Row {
        status: String,
        backup_hour: Option<i32>,
        daily_backups: bool,
        plan_daily: bool,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT d.status, d.backup_hour, d.daily_backups, p.daily_backup_retention_days > 0 AS plan_daily \
         FROM databases d JOIN plans p ON p.id = d.plan_id WHERE d.id = $1",
    )
    .bind(database)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let hour = row.and_then(|r| {
        let live = !matches!(r.status.as_str(), "deleting" | "deleted");
        daily::effective_hour(database, r.backup_hour, r.daily_backups && live, r.plan_daily)
    });
    // A new or moved timer's first backup is at least `FIRST_DAILY_BACKUP_AFTER` away: a database
    // just created has little to save, and the operation that made it settles first.
    timer_set_daily_backup_in(conn, database, hour, now + FIRST_DAILY_BACKUP_AFTER).await
}
