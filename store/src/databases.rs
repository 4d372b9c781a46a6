//! Databases and their operations. Every change of desired state is written together with
//! its operation (and, for billing, the addon's plan periods) in one transaction.

use chrono::{DateTime, Utc};
use pgplane_core::ids::{AddonId, AddonPeriodId, AppId, BackupId, DatabaseId, OperationId, TenantId, UserId};
use pgplane_core::model::{
    Database, DatabaseSettings, DatabaseStatus, Endpoint, Operation, OperationKind, OperationStatus, Plan,
};
use pgplane_core::page::PageRequest;
use serde_json::json;
use sqlx::{FromRow, Postgres, Transaction};

use crate::jobs::{job_enqueue_in, NewJob};
use crate::{db_error, parse_enum, Actor, Error, Result, Scoped, Store};

/// The queue of the scheduler's own work.
pub const SCHEDULER_QUEUE: &str = "scheduler";
/// The job kind that drives an operation's workflow.
pub const OPERATION_JOB: &str = "operation";

#[derive(FromRow)]
struct DatabaseRow {
    id: DatabaseId,
    tenant_id: TenantId,
    app_id: AppId,
    addon_id: AddonId,
    name: String,
    plan_id: String,
    version: String,
    status: String,
    force_tls: bool,
    internet_exposure: bool,
    backup_hour: Option<i32>,
    allowed_cidrs: Vec<String>,
    endpoint_host: Option<String>,
    endpoint_port: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl DatabaseRow {
    fn into_database(self) -> Result<Database> {
        Ok(Database {
            id: self.id,
            tenant_id: self.tenant_id,
            app_id: self.app_id,
            addon_id: self.addon_id,
            name: self.name,
            plan: self.plan_id,
            version: self.version,
            status: parse_enum(&self.status)?,
            settings: DatabaseSettings {
                force_tls: self.force_tls,
                internet_exposure: self.internet_exposure,
                backup_hour: self.backup_hour,
                allowed_cidrs: self.allowed_cidrs,
            },
            endpoint: match (self.endpoint_host, self.endpoint_port) {
                (Some(host), Some(port)) => Some(Endpoint { host, port }),
                _ => None,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const DB_COLUMNS: &str = "d.id, d.tenant_id, d.app_id, d.addon_id, d.name, d.plan_id, d.version, d.status, \
     d.force_tls, d.internet_exposure, d.backup_hour, d.allowed_cidrs, d.endpoint_host, d.endpoint_port, d.created_at, d.updated_at";

#[derive(FromRow)]
struct OperationRow {
    id: OperationId,
    tenant_id: TenantId,
    database_id: DatabaseId,
    kind: String,
    status: String,
    progress: i32,
    step: Option<String>,
    error: Option<String>,
    params: serde_json::Value,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl OperationRow {
    fn into_operation(self) -> Result<Operation> {
        Ok(Operation {
            id: self.id,
            tenant_id: self.tenant_id,
            database_id: self.database_id,
            kind: parse_enum(&self.kind)?,
            status: parse_enum(&self.status)?,
            progress: self.progress,
            step: self.step,
            error: self.error,
            params: self.params,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

const OP_COLUMNS: &str =
    "o.id, o.tenant_id, o.database_id, o.kind, o.status, o.progress, o.step, o.error, o.params, o.created_at, o.started_at, o.finished_at";

/// What a create request resolved to, after validation.
pub struct NewDatabase<'a> {
    pub tenant_id: TenantId,
    pub app_id: AppId,
    pub name: &'a str,
    pub plan: &'a Plan,
    pub version: &'a str,
    pub settings: DatabaseSettings,
}

pub(crate) async fn operation_insert(
    tx: &mut Transaction<'_, Postgres>,
    actor: &Actor,
    tenant: TenantId,
    database: DatabaseId,
    kind: OperationKind,
    params: serde_json::Value,
) -> Result<Operation> {
    operation_insert_by(tx, Some(actor.user_id), tenant, database, kind, params).await
}

/// `operation_insert`, asked for by a user or (`None`) by the platform itself (a timer).
pub(crate) async fn operation_insert_by(
    tx: &mut sqlx::PgConnection,
    requested_by: Option<UserId>,
    tenant: TenantId,
    database: DatabaseId,
    kind: OperationKind,
    params: serde_json::Value,
) -> Result<Operation> {
    let row: OperationRow = sqlx::query_as(&format!(
        "INSERT INTO operations AS o (id, tenant_id, database_id, kind, status, params, requested_by) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6) RETURNING {OP_COLUMNS}"
    ))
    .bind(OperationId::new())
    .bind(tenant)
    .bind(database)
    .bind(kind.as_str())
    .bind(params)
    .bind(requested_by)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let op = row.into_operation()?;
    // The scheduler's workflow for this operation starts from this job, committed with it.
    let mut job = NewJob::new(SCHEDULER_QUEUE, OPERATION_JOB, json!({}));
    job.database_id = Some(database);
    job.operation_id = Some(op.id);
    job_enqueue_in(tx, &job).await?;
    Ok(op)
}

/// Closes the addon's running plan period and, when `next` is given, opens one on that plan.
async fn addon_switch_period(tx: &mut Transaction<'_, Postgres>, addon: AddonId, next: Option<&Plan>) -> Result<()> {
    sqlx::query("UPDATE addon_periods SET ended_at = now() WHERE addon_id = $1 AND ended_at IS NULL")
        .bind(addon)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    match next {
        Some(plan) => {
            sqlx::query(
                "INSERT INTO addon_periods (id, addon_id, plan_id, price_micros_per_hour, currency, started_at) \
                 VALUES ($1, $2, $3, $4, $5, now())",
            )
            .bind(AddonPeriodId::new())
            .bind(addon)
            .bind(&plan.id)
            .bind(plan.price_per_hour.amount_micros)
            .bind(&plan.price_per_hour.currency)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
            sqlx::query("UPDATE addons SET plan_id = $2 WHERE id = $1")
                .bind(addon)
                .bind(&plan.id)
                .execute(&mut **tx)
                .await
        }
        None => {
            sqlx::query("UPDATE addons SET ended_at = now() WHERE id = $1 AND ended_at IS NULL")
                .bind(addon)
                .execute(&mut **tx)
                .await
        }
    }
    .map_err(db_error)?;
    Ok(())
}

impl Store {
    /// Records a new database (status `creating`), its addon and first plan period, and the
    /// pending `create` operation, atomically.
    pub async fn database_create(&self, actor: &Actor, new: NewDatabase<'_>) -> Result<(Database, Operation)> {
        self.database_create_from(actor, new, None).await
    }

    /// `database_create`, then (`restore_from`) the backup restored into it before it is
    /// available: its `create` operation's params carry `restore_from`.
    pub async fn database_create_from(
        &self,
        actor: &Actor,
        new: NewDatabase<'_>,
        restore_from: Option<BackupId>,
    ) -> Result<(Database, Operation)> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let addon = AddonId::new();
        let live_app: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM apps WHERE id = $1 AND deleted_at IS NULL FOR SHARE)")
                .bind(new.app_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        if !live_app {
            return Err(Error::not_found("app"));
        }
        sqlx::query("INSERT INTO addons (id, tenant_id, app_id, plan_id) VALUES ($1, $2, $3, $4)")
            .bind(addon)
            .bind(new.tenant_id)
            .bind(new.app_id)
            .bind(&new.plan.id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        addon_switch_period(&mut tx, addon, Some(new.plan)).await?;
        let row: DatabaseRow = sqlx::query_as(&format!(
            "INSERT INTO databases AS d (id, tenant_id, app_id, addon_id, name, plan_id, version, status, \
                force_tls, internet_exposure, backup_hour, allowed_cidrs, synchronous_replication) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'creating', $8, $9, $10, $11, $12) RETURNING {DB_COLUMNS}"
        ))
        .bind(DatabaseId::new())
        .bind(new.tenant_id)
        .bind(new.app_id)
        .bind(addon)
        .bind(new.name)
        .bind(&new.plan.id)
        .bind(new.version)
        .bind(new.settings.force_tls)
        .bind(new.settings.internet_exposure)
        .bind(new.settings.backup_hour)
        .bind(&new.settings.allowed_cidrs)
        // A plan with a follower starts with synchronous replication (no acknowledged write is
        // lost in a failover); the tenant may turn it off.
        .bind(new.plan.data_nodes >= 2)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let database = row.into_database()?;
        let op = operation_insert(
            &mut tx,
            actor,
            new.tenant_id,
            database.id,
            OperationKind::Create,
            match restore_from {
                None => json!({ "plan": new.plan.id, "version": new.version }),
                Some(b) => json!({ "plan": new.plan.id, "version": new.version, "restore_from": b }),
            },
        )
        .await?;
        tx.commit().await.map_err(db_error)?;
        Ok((database, op))
    }

    /// The database with the caller's role in its tenant; deleted ones are not found.
    pub async fn database_get(&self, actor: &Actor, id: DatabaseId) -> Result<Scoped<Database>> {
        #[derive(FromRow)]
        struct Row {
            #[sqlx(flatten)]
            db: DatabaseRow,
            role: Option<String>,
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {DB_COLUMNS}, m.role FROM databases d \
             LEFT JOIN memberships m ON m.tenant_id = d.tenant_id AND m.user_id = $2 \
             WHERE d.id = $1 AND d.status <> 'deleted' AND (m.role IS NOT NULL OR $3)"
        ))
        .bind(id)
        .bind(actor.user_id)
        .bind(actor.is_operator())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let row = row.ok_or(Error::not_found("database"))?;
        Ok(Scoped { role: crate::scoped_role(row.role.as_deref())?, item: row.db.into_database()? })
    }

    pub async fn database_list(&self, app: AppId, page: &PageRequest) -> Result<(Vec<Database>, Option<String>)> {
        let rows: Vec<DatabaseRow> = sqlx::query_as(&format!(
            "SELECT {DB_COLUMNS} FROM databases d WHERE d.app_id = $1 AND d.status <> 'deleted' \
             AND ($2::uuid IS NULL OR d.id > $2) ORDER BY d.id LIMIT $3"
        ))
        .bind(app)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(DatabaseRow::into_database).collect::<Result<_>>()?, next))
    }

    /// Locks the database row for a change of desired state; deleted ones are not found.
    async fn database_lock(tx: &mut Transaction<'_, Postgres>, id: DatabaseId) -> Result<Database> {
        let row: Option<DatabaseRow> = sqlx::query_as(&format!(
            "SELECT {DB_COLUMNS} FROM databases d WHERE d.id = $1 AND d.status <> 'deleted' FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        row.ok_or(Error::not_found("database"))?.into_database()
    }

    /// Moves the database to another plan: desired plan, billing period and a pending
    /// `change_plan` operation, atomically.
    pub async fn database_change_plan(&self, actor: &Actor, id: DatabaseId, plan: &Plan) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let db = Self::database_lock(&mut tx, id).await?;
        if db.status == DatabaseStatus::Deleting {
            return Err(Error::conflict("database_deleting", "the database is being deleted"));
        }
        if db.plan == plan.id {
            return Err(Error::conflict("same_plan", format!("the database is already on plan {:?}", plan.id)));
        }
        // Gaining a follower turns synchronous replication on, as for a new database with one;
        // losing it turns it off (a plan without a follower cannot have it). The change plan
        // workflow applies it first (`synchronous_replication` in its parameters).
        // On the transaction's own connection: a second one from the pool while holding the row
        // lock starved the pool under concurrent plan changes (503s in `bench workflows`).
        let from = crate::plans::plan_get_in(&mut tx, &db.plan).await?;
        let synchronous = match (from.data_nodes >= 2, plan.data_nodes >= 2) {
            (false, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        };
        let mut params = json!({ "from_plan": db.plan, "to_plan": plan.id });
        if let Some(on) = synchronous {
            params["synchronous_replication"] = json!(on);
        }
        let op = operation_insert(&mut tx, actor, db.tenant_id, id, OperationKind::ChangePlan, params).await?;
        sqlx::query(
            "UPDATE databases SET plan_id = $2, status = 'changing_plan', generation = generation + 1, \
                synchronous_replication = COALESCE($3, synchronous_replication), updated_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(&plan.id)
        .bind(synchronous)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        addon_switch_period(&mut tx, db.addon_id, Some(plan)).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    /// Asks for the database's deletion. Pending operations are canceled; a running one makes
    /// this a conflict. Asking again while the deletion is pending returns the same operation.
    pub async fn database_delete(&self, actor: &Actor, id: DatabaseId) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let db = Self::database_lock(&mut tx, id).await?;
        let active: Option<OperationRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations o WHERE o.database_id = $1 AND o.status IN ('pending', 'running')"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if let Some(active) = active {
            let active = active.into_operation()?;
            if active.kind == OperationKind::Delete {
                return Ok(active);
            }
            if active.status == OperationStatus::Running {
                return Err(Error::conflict(
                    "operation_in_progress",
                    format!("operation {} is running; delete again when it has finished", active.id),
                ));
            }
            sqlx::query(
                "UPDATE operations SET status = 'canceled', finished_at = now(), error = 'superseded by deletion' \
                 WHERE id = $1",
            )
            .bind(active.id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            // A pending backup canceled with it ends in error (it never started: no object).
            crate::backups::backup_fail_of_operation_in(&mut tx, active.id, "canceled: the database is being deleted")
                .await?;
        }
        let op = operation_insert(&mut tx, actor, db.tenant_id, id, OperationKind::Delete, json!({})).await?;
        sqlx::query(
            "UPDATE databases SET status = 'deleting', generation = generation + 1, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        addon_switch_period(&mut tx, db.addon_id, None).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    /// Asks for backup `backup` (of any database of the same tenant: the caller checked) to be
    /// restored in place into the available database `id`.
    pub async fn database_restore(&self, actor: &Actor, id: DatabaseId, backup: BackupId) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let db = Self::database_lock(&mut tx, id).await?;
        if db.status != DatabaseStatus::Available {
            return Err(Error::conflict(
                "not_available",
                format!("only an available database can be restored into; it is {}", db.status),
            ));
        }
        let op =
            operation_insert(&mut tx, actor, db.tenant_id, id, OperationKind::Restore, json!({ "backup_id": backup }))
                .await?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    /// Asks for a rolling restart of an available database.
    pub async fn database_restart(&self, actor: &Actor, id: DatabaseId) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let db = Self::database_lock(&mut tx, id).await?;
        if db.status != DatabaseStatus::Available {
            return Err(Error::conflict(
                "not_available",
                format!("only an available database can restart; it is {}", db.status),
            ));
        }
        let op = operation_insert(&mut tx, actor, db.tenant_id, id, OperationKind::Restart, json!({})).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    /// Stores the desired settings and enqueues the `update_settings` operation that applies
    /// them to the running members and gateways (its `changed` param lists what differs). Only
    /// an available database takes it; another operation in progress is a conflict.
    pub async fn database_update_settings(
        &self,
        actor: &Actor,
        id: DatabaseId,
        settings: &DatabaseSettings,
    ) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let db = Self::database_lock(&mut tx, id).await?;
        match db.status {
            DatabaseStatus::Available => {}
            DatabaseStatus::Deleting => {
                return Err(Error::conflict("database_deleting", "the database is being deleted"));
            }
            status => {
                return Err(Error::conflict(
                    "not_available",
                    format!("the database is {status}; wait until it is available"),
                ))
            }
        }
        let old = &db.settings;
        let changed: Vec<&str> = [
            ("force_tls", old.force_tls != settings.force_tls),
            ("internet_exposure", old.internet_exposure != settings.internet_exposure),
            ("allowed_cidrs", old.allowed_cidrs != settings.allowed_cidrs),
            ("backup_hour", old.backup_hour != settings.backup_hour),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        let op = operation_insert(
            &mut tx,
            actor,
            db.tenant_id,
            id,
            OperationKind::UpdateSettings,
            json!({ "changed": changed, "settings": settings }),
        )
        .await?;
        sqlx::query(
            "UPDATE databases SET force_tls = $2, internet_exposure = $3, backup_hour = $4, allowed_cidrs = $5, \
                generation = generation + 1, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(settings.force_tls)
        .bind(settings.internet_exposure)
        .bind(settings.backup_hour)
        .bind(&settings.allowed_cidrs)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    /// The operation with the caller's role in its tenant, or not found.
    pub async fn operation_get(&self, actor: &Actor, id: OperationId) -> Result<Scoped<Operation>> {
        #[derive(FromRow)]
        struct Row {
            #[sqlx(flatten)]
            op: OperationRow,
            role: Option<String>,
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS}, m.role FROM operations o \
             LEFT JOIN memberships m ON m.tenant_id = o.tenant_id AND m.user_id = $2 \
             WHERE o.id = $1 AND (m.role IS NOT NULL OR $3)"
        ))
        .bind(id)
        .bind(actor.user_id)
        .bind(actor.is_operator())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let row = row.ok_or(Error::not_found("operation"))?;
        Ok(Scoped { role: crate::scoped_role(row.role.as_deref())?, item: row.op.into_operation()? })
    }

    /// An operation by id, without access checks (the scheduler's view).
    pub async fn operation_by_id_in(&self, conn: &mut sqlx::PgConnection, id: OperationId) -> Result<Operation> {
        let row: Option<OperationRow> =
            sqlx::query_as(&format!("SELECT {OP_COLUMNS} FROM operations o WHERE o.id = $1"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
        row.ok_or(Error::not_found("operation"))?.into_operation()
    }

    pub async fn operation_list(
        &self,
        database: DatabaseId,
        page: &PageRequest,
    ) -> Result<(Vec<Operation>, Option<String>)> {
        let rows: Vec<OperationRow> = sqlx::query_as(&format!(
            "SELECT {OP_COLUMNS} FROM operations o WHERE o.database_id = $1 \
             AND ($2::uuid IS NULL OR o.id < $2) ORDER BY o.id DESC LIMIT $3"
        ))
        .bind(database)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(OperationRow::into_operation).collect::<Result<_>>()?, next))
    }
}

/// What the API needs to show a connection: endpoint, the tenant user's credentials, the CA.
pub struct ConnectionParts {
    pub host: String,
    pub port: i32,
    /// The gateways' public address while the database is exposed to the internet.
    pub public_host: Option<String>,
    pub user: String,
    pub password: String,
    pub database: String,
    pub ca_pem: String,
}

impl Store {
    /// Connection details of a provisioned database (None before it is placed).
    pub async fn database_connection(&self, id: DatabaseId) -> Result<Option<ConnectionParts>> {
        type Row = (Option<String>, Option<i32>, Option<String>, serde_json::Value, String);
        let row: Option<Row> = sqlx::query_as(
            // The public address of the gateway that holds the endpoint (the first one).
            "SELECT d.endpoint_host, d.endpoint_port, \
                CASE WHEN d.internet_exposure THEN \
                    (SELECT COALESCE(g.public_host, g.host) FROM database_gateways g \
                     WHERE g.database_id = d.id ORDER BY g.name LIMIT 1) END, \
                s.secrets, s.ca_cert_pem \
             FROM databases d JOIN database_secrets s ON s.database_id = d.id WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let Some((Some(host), Some(port), public_host, secrets, ca_pem)) = row else { return Ok(None) };
        let s: pgplane_core::agent::DatabaseSecrets = serde_json::from_value(secrets).map_err(Error::internal)?;
        Ok(Some(ConnectionParts {
            host,
            port,
            public_host,
            user: s.app_user,
            password: s.app_password,
            database: s.app_database,
            ca_pem,
        }))
    }
}

impl Store {
    /// The database's members, in name order: roles from etcd's leader key as the scheduler last
    /// read it, state, timeline and lag from the member's agent; `unknown` once its agent stopped
    /// reporting (the leader key's holder still shows as the leader), `diverged` or
    /// `not_streaming` for a replica judged so, never then a synchronous standby.
    pub async fn database_members(&self, id: DatabaseId) -> Result<Vec<pgplane_core::model::DatabaseMember>> {
        type Row = (String, String, String, Option<i64>, Option<i64>, bool, Option<DateTime<Utc>>);
        let rows: Vec<Row> = sqlx::query_as(
            // A switchover marks the new leader before its agent reports again: a leader is never
            // shown as the synchronous standby it was.
            "SELECT m.name, \
                CASE WHEN d.dcs_leader_held AND d.dcs_leader = m.name THEN 'leader' WHEN s.stale THEN 'unknown' \
                     ELSE m.role END, \
                CASE WHEN s.stale THEN 'unknown' ELSE COALESCE(m.health, m.state) END, \
                m.timeline, m.lag_bytes, \
                m.synchronous AND m.role <> 'leader' AND m.health IS NULL AND NOT s.stale, m.observed_at \
             FROM database_members m JOIN databases d ON d.id = m.database_id, \
                LATERAL (SELECT COALESCE(m.observed_at < now() - make_interval(secs => $2), false) AS stale) s \
             WHERE m.database_id = $1 ORDER BY m.name",
        )
        .bind(id)
        .bind(f64::from(crate::truth::MEMBER_STALE_SECS))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(name, role, state, timeline, lag_bytes, synchronous, observed_at)| {
                pgplane_core::model::DatabaseMember { name, role, state, timeline, lag_bytes, synchronous, observed_at }
            })
            .collect())
    }
}
