//! The SQL of the workflow engine's bookkeeping: transactions for steps, how an operation ends
//! (with every job it still has), which jobs are past their deadline or wait on a lost agent,
//! and what a step needs to read of earlier steps (a switchover's drain and result).

use pgplane_core::agent::AgentId;
use pgplane_core::ids::{DatabaseId, JobId, OperationId};
use sqlx::postgres::PgListener;
use sqlx::{FromRow, PgConnection, Postgres, Transaction};

use crate::{db_error, Result, Store};

/// A transaction of the control-plane database: a workflow step's, a report's.
pub type Txn = Transaction<'static, Postgres>;

impl Store {
    /// Starts a transaction (a workflow step, a report, a sweep).
    pub async fn begin(&self) -> Result<Txn> {
        self.pool.begin().await.map_err(db_error)
    }

    /// A LISTEN connection of its own (the queue's wake-ups).
    pub async fn listener(&self) -> Result<PgListener> {
        PgListener::connect_with(&self.pool).await.map_err(db_error)
    }

    /// Says what an unfinished operation waits for (its `step`), leaving its status as it is.
    pub async fn operation_note(&self, op: OperationId, step: &str) -> Result<()> {
        sqlx::query("UPDATE operations SET step = $2 WHERE id = $1 AND status IN ('pending', 'running')")
            .bind(op)
            .bind(step)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Closes the pool: waits for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await
    }
}

/// Locks an operation's row, so that the reports of one operation's agent jobs serialize and
/// exactly one sees its step finished.
pub async fn operation_lock_row_in(conn: &mut PgConnection, op: OperationId) -> Result<()> {
    sqlx::query("SELECT 1 FROM operations WHERE id = $1 FOR UPDATE")
        .bind(op)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Ends an operation in `error` with `tenant_message` (what the tenant reads) and kills every
/// job it still has queued or running, so nothing of it runs later (an agent holding one finds
/// its lease gone when it reports). Nothing happens to an operation that already ended.
/// Returns whether this call ended it.
pub async fn operation_fail_in(conn: &mut PgConnection, op: OperationId, tenant_message: &str) -> Result<bool> {
    let running: Option<(String,)> =
        sqlx::query_as("SELECT status FROM operations WHERE id = $1 AND status IN ('pending', 'running') FOR UPDATE")
            .bind(op)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    if running.is_none() {
        return Ok(false);
    }
    job_kill_operation_in(conn, op, "the operation ended in error").await?;
    crate::workflow::operation_finish_in(conn, op, Some(tenant_message)).await?;
    Ok(true)
}

/// Kills the queued and running jobs of an operation with `why` as their last error.
async fn job_kill_operation_in(conn: &mut PgConnection, op: OperationId, why: &str) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'dead', last_error = COALESCE(last_error || ' / ', '') || $2, finished_at = now(), \
            lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE operation_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(op)
    .bind(why)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}

/// Kills one job (queued or running) with `why`; false when it had already ended.
pub async fn job_kill_in(conn: &mut PgConnection, id: JobId, why: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'dead', last_error = $2, finished_at = now(), \
            lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .bind(why)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

/// Ends a job as done without running it (an agent job the workflow skips: the removal of a
/// lost host's part); false when it had already ended.
pub async fn job_skip_in(conn: &mut PgConnection, id: JobId, result: &serde_json::Value) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'done', result = $2, finished_at = now(), \
            lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .bind(result)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected() == 1)
}

/// A job of an unfinished operation that cannot end well any more: past its deadline, or
/// waiting on an agent that stopped heartbeating.
#[derive(Debug, Clone, FromRow)]
pub struct StuckJob {
    pub job_id: JobId,
    pub operation_id: OperationId,
    pub database_id: DatabaseId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Seconds the job was given to run once claimed.
    pub allowed_secs: Option<f64>,
    /// The agent that must run it, when it is lost.
    pub lost_agent: Option<AgentId>,
    pub lost_agent_name: Option<String>,
}

/// Queued or running jobs of unfinished operations whose deadline passed.
pub async fn jobs_overdue_in(conn: &mut PgConnection) -> Result<Vec<StuckJob>> {
    sqlx::query_as(
        "SELECT j.id AS job_id, j.operation_id, o.database_id, j.queue, j.kind, j.payload, \
            j.time_allowed_ms::float8 / 1000 AS allowed_secs, \
            NULL::uuid AS lost_agent, NULL::text AS lost_agent_name \
         FROM jobs j JOIN operations o ON o.id = j.operation_id \
         WHERE j.status IN ('queued', 'running') AND j.deadline_at < now() AND o.status IN ('pending', 'running') \
         ORDER BY j.deadline_at LIMIT 100",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// Queued or running agent jobs of unfinished operations whose agent has not been seen for
/// `lost_after_secs`.
pub async fn jobs_of_lost_agents_in(conn: &mut PgConnection, lost_after_secs: f64) -> Result<Vec<StuckJob>> {
    sqlx::query_as(
        "SELECT j.id AS job_id, j.operation_id, o.database_id, j.queue, j.kind, j.payload, \
            j.time_allowed_ms::float8 / 1000 AS allowed_secs, \
            a.id AS lost_agent, a.name AS lost_agent_name \
         FROM jobs j JOIN operations o ON o.id = j.operation_id JOIN agents a ON j.queue = 'agent:' || a.id::text \
         WHERE j.status IN ('queued', 'running') AND o.status IN ('pending', 'running') \
           AND a.last_seen_at < now() - make_interval(secs => $1) \
         ORDER BY j.created_at LIMIT 100",
    )
    .bind(lost_after_secs)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// The agents heard from within `within_secs` (heartbeat or poll), of those given.
pub async fn agents_alive_in(conn: &mut PgConnection, agents: &[AgentId], within_secs: f64) -> Result<Vec<AgentId>> {
    sqlx::query_scalar(
        "SELECT id FROM agents WHERE id = ANY($1) AND last_seen_at > now() - make_interval(secs => $2) ORDER BY id",
    )
    .bind(agents)
    .bind(within_secs)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// Agent jobs of one step of an operation (`step`: the step as it is written in the payload)
/// that have not finished.
pub async fn step_jobs_left_in(conn: &mut PgConnection, op: OperationId, step: &serde_json::Value) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE operation_id = $1 AND queue LIKE 'agent:%' AND payload->'step' = $2 \
         AND status <> 'done'",
    )
    .bind(op)
    .bind(step)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_error)
}

/// The member an operation's switchover drained in the gateways, if it drained one.
pub async fn switchover_drained_in(conn: &mut PgConnection, op: OperationId) -> Result<Option<String>> {
    let drained: Option<Option<String>> = sqlx::query_scalar(
        "SELECT payload->'task'->>'drain_leader' FROM jobs \
         WHERE operation_id = $1 AND kind = 'switchover' AND payload->'task'->>'drain_leader' IS NOT NULL LIMIT 1",
    )
    .bind(op)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(drained.flatten())
}

/// What an operation's switchover reported (`{from, to}`), once it is done.
pub async fn switchover_result_in(conn: &mut PgConnection, op: OperationId) -> Result<Option<serde_json::Value>> {
    let result: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "SELECT result FROM jobs WHERE operation_id = $1 AND kind = 'switchover' AND status = 'done' LIMIT 1",
    )
    .bind(op)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(result.flatten())
}

/// The member Patroni (etcd, or the members' agents before etcd was read) last named leader.
pub async fn member_leader_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT name FROM database_members WHERE database_id = $1 AND role = 'leader' LIMIT 1")
        .bind(db)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)
}

/// The member listed as synchronous standby, if any.
pub async fn member_synchronous_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT name FROM database_members WHERE database_id = $1 AND synchronous AND role <> 'leader' \
         ORDER BY name LIMIT 1",
    )
    .bind(db)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)
}

/// Whether any member of the database is accounted at another memory size than `memory_mb`.
pub async fn members_resized_in(conn: &mut PgConnection, db: DatabaseId, memory_mb: i32) -> Result<bool> {
    sqlx::query_scalar("SELECT COALESCE(bool_or(memory_mb <> $2), false) FROM database_members WHERE database_id = $1")
        .bind(db)
        .bind(memory_mb)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)
}

/// Accounts every member of the database at this size from now on.
pub async fn members_set_size_in(conn: &mut PgConnection, db: DatabaseId, memory_mb: i32, disk_gb: i32) -> Result<()> {
    sqlx::query("UPDATE database_members SET memory_mb = $2, disk_gb = $3 WHERE database_id = $1")
        .bind(db)
        .bind(memory_mb)
        .bind(disk_gb)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Removes a member's row (its capacity is free again).
pub async fn member_delete_in(conn: &mut PgConnection, db: DatabaseId, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM database_members WHERE database_id = $1 AND name = $2")
        .bind(db)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Removes a gateway's row.
pub async fn gateway_delete_in(conn: &mut PgConnection, db: DatabaseId, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM database_gateways WHERE database_id = $1 AND name = $2")
        .bind(db)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Gives a port of a host back.
pub async fn port_release_in(conn: &mut PgConnection, host: &str, port: i32) -> Result<()> {
    sqlx::query("DELETE FROM port_allocations WHERE host = $1 AND port = $2")
        .bind(host)
        .bind(port)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The name a database was ordered with (its application user and database are named so).
pub async fn database_name_in(conn: &mut PgConnection, db: DatabaseId) -> Result<String> {
    sqlx::query_scalar("SELECT name FROM databases WHERE id = $1")
        .bind(db)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?
        .ok_or(crate::Error::not_found("database"))
}

/// A member with the size it is accounted at.
#[derive(Debug, Clone, FromRow)]
pub struct MemberSize {
    pub name: String,
    pub agent_id: AgentId,
    pub memory_mb: i32,
    pub disk_gb: i32,
}

/// The database's members with their accounted sizes, in name order.
pub async fn member_sizes_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Vec<MemberSize>> {
    sqlx::query_as(
        "SELECT name, agent_id, memory_mb, disk_gb FROM database_members WHERE database_id = $1 ORDER BY name",
    )
    .bind(db)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// Accounts one member at this size from now on.
pub async fn member_set_size_in(
    conn: &mut PgConnection,
    db: DatabaseId,
    name: &str,
    memory_mb: i32,
    disk_gb: i32,
) -> Result<()> {
    sqlx::query("UPDATE database_members SET memory_mb = $3, disk_gb = $4 WHERE database_id = $1 AND name = $2")
        .bind(db)
        .bind(name)
        .bind(memory_mb)
        .bind(disk_gb)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Of the databases an agent says it runs members of, those it holds no member of any more
/// (deleted, or their member moved or went while the host was lost), with their generation, and
/// for which no removal is already queued or running on that agent.
pub async fn agent_leftovers_in(
    conn: &mut PgConnection,
    agent: AgentId,
    observed: &[DatabaseId],
) -> Result<Vec<(DatabaseId, i64)>> {
    sqlx::query_as(
        "SELECT d.id, d.generation FROM databases d WHERE d.id = ANY($2) \
           AND NOT EXISTS (SELECT 1 FROM database_members m WHERE m.database_id = d.id AND m.agent_id = $1) \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.queue = 'agent:' || $1::text AND j.kind = 'remove_database' \
                           AND j.database_id = d.id AND j.status IN ('queued', 'running')) \
         ORDER BY d.id",
    )
    .bind(agent)
    .bind(observed)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}
