//! The SQL of the scheduler's workflows. Each workflow step runs in one transaction that
//! also completes the step's job, so a step's effects happen exactly once.

use pgplane_core::agent::{AgentId, DatabaseSecrets};
use pgplane_core::ids::{DatabaseId, JobId, OperationId};
use pgplane_core::model::{Operation, OperationKind, OperationStatus, Plan};
use sqlx::{FromRow, PgConnection};

use crate::{db_error, Error, Result, Store};

/// An operation with the state of its database, locked for the step.
#[derive(Debug, Clone)]
pub struct OperationState {
    pub operation: Operation,
    pub database_id: DatabaseId,
    pub generation: i64,
    pub version: String,
    pub plan: Plan,
    pub force_tls: bool,
    /// Patroni's (non-strict) synchronous mode, as the tenant wants it.
    pub synchronous_replication: bool,
    /// The gateways bind their hosts' public addresses.
    pub internet_exposure: bool,
    /// The networks the public addresses admit; empty admits every address.
    pub allowed_cidrs: Vec<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct MemberRow {
    pub database_id: DatabaseId,
    pub name: String,
    pub agent_id: AgentId,
    pub host: String,
    pub pg_port: i32,
    pub patroni_port: i32,
}

#[derive(Debug, Clone, FromRow)]
pub struct GatewayRow {
    pub database_id: DatabaseId,
    pub name: String,
    pub agent_id: AgentId,
    pub host: String,
    pub port: i32,
    /// The public address of the gateway's host (its `host` when it has none of its own).
    pub public_host: String,
}

/// The database's generated credentials and CA.
#[derive(Clone)]
pub struct StoredSecrets {
    pub secrets: DatabaseSecrets,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// The password of the database's etcd user (none for databases placed before etcd users).
    pub etcd_password: Option<String>,
}

pgplane_core::redacted_debug!(StoredSecrets { secrets, ca_cert_pem } secret { ca_key_pem, etcd_password });

/// Locks an operation and its database for a workflow step.
pub async fn operation_lock_in(conn: &mut PgConnection, store: &Store, id: OperationId) -> Result<OperationState> {
    type Row = (DatabaseId, i64, String, String, bool, bool, Vec<String>, bool);
    let row: Option<Row> = sqlx::query_as(
        "SELECT d.id, d.generation, d.version, d.plan_id, d.force_tls, d.internet_exposure, d.allowed_cidrs, \
            d.synchronous_replication \
         FROM operations o JOIN databases d ON d.id = o.database_id WHERE o.id = $1 FOR UPDATE OF o, d",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let (
        database_id,
        generation,
        version,
        plan_id,
        force_tls,
        internet_exposure,
        allowed_cidrs,
        synchronous_replication,
    ) = row.ok_or(Error::not_found("operation"))?;
    let operation = store.operation_by_id_in(conn, id).await?;
    let plan = crate::plans::plan_get_in(conn, &plan_id).await?;
    Ok(OperationState {
        operation,
        database_id,
        generation,
        version,
        plan,
        force_tls,
        synchronous_replication,
        internet_exposure,
        allowed_cidrs,
    })
}

/// Moves an operation along: running, with progress (which never goes back) and the current
/// step.
pub async fn operation_progress_in(conn: &mut PgConnection, id: OperationId, progress: i32, step: &str) -> Result<()> {
    sqlx::query(
        "UPDATE operations SET status = 'running', started_at = COALESCE(started_at, now()), progress = GREATEST(progress, $2), step = $3 \
         WHERE id = $1 AND status IN ('pending', 'running')",
    )
    .bind(id)
    .bind(progress)
    .bind(step)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Ends an operation: `done`, or `error` with the reason. A create or a plan change that failed
/// may have left the database half built: it then shows `error`. A failed configure, restart,
/// switchover or settings change leaves it as it was (it still runs; the tenant may try again),
/// and a failed deletion leaves it `deleting`, so that it can be asked again.
pub async fn operation_finish_in(conn: &mut PgConnection, id: OperationId, error: Option<&str>) -> Result<()> {
    let status = if error.is_some() { OperationStatus::Error } else { OperationStatus::Done };
    let db: Option<(DatabaseId, String)> = sqlx::query_as(
        "UPDATE operations SET status = $2, error = $3, progress = CASE WHEN $3::text IS NULL THEN 100 ELSE progress END, \
            step = NULL, started_at = COALESCE(started_at, now()), finished_at = now() \
         WHERE id = $1 AND status IN ('pending', 'running') RETURNING database_id, kind",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(error)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    if let (Some((_, kind)), Some(reason)) = (&db, error) {
        if kind == OperationKind::Backup.as_str() {
            // The backup it was taking failed with it (its object, if any, is deleted).
            crate::backups::backup_fail_of_operation_in(conn, id, reason).await?;
        }
    }
    if let (Some((db, kind)), Some(_)) = (db, error) {
        if [OperationKind::Create.as_str(), OperationKind::ChangePlan.as_str()].contains(&kind.as_str()) {
            sqlx::query("UPDATE databases SET status = 'error', updated_at = now() WHERE id = $1")
                .bind(db)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
    }
    Ok(())
}

pub async fn member_insert_in(conn: &mut PgConnection, m: &MemberRow, memory_mb: i32, disk_gb: i32) -> Result<()> {
    sqlx::query(
        "INSERT INTO database_members (database_id, name, agent_id, host, pg_port, patroni_port, memory_mb, disk_gb) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(m.database_id)
    .bind(&m.name)
    .bind(m.agent_id)
    .bind(&m.host)
    .bind(m.pg_port)
    .bind(m.patroni_port)
    .bind(memory_mb)
    .bind(disk_gb)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub async fn gateway_insert_in(conn: &mut PgConnection, g: &GatewayRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO database_gateways (database_id, name, agent_id, host, port, public_host) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(g.database_id)
    .bind(&g.name)
    .bind(g.agent_id)
    .bind(&g.host)
    .bind(g.port)
    .bind(&g.public_host)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub async fn members_of_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Vec<MemberRow>> {
    sqlx::query_as(
        "SELECT database_id, name, agent_id, host, pg_port, patroni_port FROM database_members \
         WHERE database_id = $1 ORDER BY name",
    )
    .bind(db)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

pub async fn gateways_of_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Vec<GatewayRow>> {
    sqlx::query_as(
        "SELECT database_id, name, agent_id, host, port, COALESCE(public_host, host) AS public_host \
         FROM database_gateways WHERE database_id = $1 ORDER BY name",
    )
    .bind(db)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

pub async fn secrets_insert_in(conn: &mut PgConnection, db: DatabaseId, s: &StoredSecrets) -> Result<()> {
    sqlx::query(
        "INSERT INTO database_secrets (database_id, secrets, ca_cert_pem, ca_key_pem, etcd_password) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(db)
    .bind(serde_json::to_value(&s.secrets).map_err(Error::internal)?)
    .bind(&s.ca_cert_pem)
    .bind(&s.ca_key_pem)
    .bind(&s.etcd_password)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

pub async fn secrets_get_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Option<StoredSecrets>> {
    let row: Option<(serde_json::Value, String, String, Option<String>)> = sqlx::query_as(
        "SELECT secrets, ca_cert_pem, ca_key_pem, etcd_password FROM database_secrets WHERE database_id = $1",
    )
    .bind(db)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    row.map(|(s, ca_cert_pem, ca_key_pem, etcd_password)| {
        let secrets = serde_json::from_value(s).map_err(Error::internal)?;
        Ok(StoredSecrets { secrets, ca_cert_pem, ca_key_pem, etcd_password })
    })
    .transpose()
}

/// Records the password of the database's etcd user.
pub async fn secrets_set_etcd_password_in(conn: &mut PgConnection, db: DatabaseId, password: &str) -> Result<()> {
    sqlx::query("UPDATE database_secrets SET etcd_password = $2 WHERE database_id = $1")
        .bind(db)
        .bind(password)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The database is up: its endpoint and status `available`.
pub async fn database_available_in(conn: &mut PgConnection, db: DatabaseId, host: &str, port: i32) -> Result<()> {
    sqlx::query(
        "UPDATE databases SET status = 'available', endpoint_host = $2, endpoint_port = $3, updated_at = now() \
         WHERE id = $1 AND status IN ('creating', 'changing_plan', 'error')",
    )
    .bind(db)
    .bind(host)
    .bind(port)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The database is gone: placement, ports and secrets released, status `deleted`.
pub async fn database_deleted_in(conn: &mut PgConnection, db: DatabaseId) -> Result<()> {
    for table in ["port_allocations", "database_vips", "database_gateways", "database_members", "database_secrets"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE database_id = $1"))
            .bind(db)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
    }
    sqlx::query(
        "UPDATE databases SET status = 'deleted', deleted_at = now(), endpoint_host = NULL, endpoint_port = NULL, \
            updated_at = now() WHERE id = $1",
    )
    .bind(db)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// A dead job of an unfinished operation: `task_kind` for agent jobs (`ensure_member`, …),
/// `error` the detail for operators.
#[derive(Debug, Clone, FromRow)]
pub struct DeadJob {
    pub operation_id: OperationId,
    pub job_id: JobId,
    pub task_kind: Option<String>,
    pub error: String,
}

/// Operations still running whose jobs died: they end in `error` with the job's last error.
pub async fn operations_with_dead_jobs_in(conn: &mut PgConnection) -> Result<Vec<DeadJob>> {
    sqlx::query_as(
        "SELECT DISTINCT ON (o.id) o.id AS operation_id, j.id AS job_id, j.payload->'task'->>'kind' AS task_kind, \
            COALESCE(j.last_error, 'a job of this operation died') AS error FROM operations o \
         JOIN jobs j ON j.operation_id = o.id WHERE o.status IN ('pending', 'running') AND j.status = 'dead' \
         ORDER BY o.id, j.updated_at DESC",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}
