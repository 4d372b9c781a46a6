//! Tenant configuration (parameters, synchronous replication), switchovers, and the events
//! of a database's life (failover, switchover).

use chrono::{DateTime, Utc};
use pgplane_core::ids::{DatabaseId, TenantId};
use pgplane_core::model::{Configuration, DatabaseEvent, DatabaseStatus, Operation, OperationKind};
use pgplane_core::page::PageRequest;
use serde_json::json;
use sqlx::PgConnection;
use std::collections::BTreeMap;

use crate::databases::operation_insert;
use crate::{db_error, Actor, Error, Result, Store};

/// A validated change of configuration.
pub struct NewConfiguration {
    pub parameters: BTreeMap<String, String>,
    pub synchronous_replication: bool,
    /// Parameters whose change needs a restart to take effect.
    pub restart_required: Vec<String>,
    /// Parameters returned to their default.
    pub removed: Vec<String>,
}

/// Records an event of a database.
pub async fn event_insert_in(
    conn: &mut PgConnection,
    db: DatabaseId,
    kind: &str,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO database_events (id, tenant_id, database_id, kind, detail) \
         SELECT $1, tenant_id, id, $3, $4 FROM databases WHERE id = $2",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(db)
    .bind(kind)
    .bind(detail)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}

impl Store {
    pub async fn database_configuration(&self, id: DatabaseId) -> Result<Configuration> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        database_configuration_in(&mut conn, id).await
    }

    /// Stores the desired configuration and enqueues the `configure` operation that applies it.
    pub async fn database_configure(&self, actor: &Actor, id: DatabaseId, new: &NewConfiguration) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let tenant = lock_available(&mut tx, id).await?;
        let op = operation_insert(
            &mut tx,
            actor,
            tenant,
            id,
            OperationKind::Configure,
            json!({ "restart_required": new.restart_required, "removed": new.removed }),
        )
        .await?;
        sqlx::query(
            "UPDATE databases SET parameters = $2, synchronous_replication = $3, generation = generation + 1, \
                updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(serde_json::to_value(&new.parameters).map_err(Error::internal)?)
        .bind(new.synchronous_replication)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    /// Asks for a planned switchover (databases with a follower).
    pub async fn database_switchover(
        &self,
        actor: &Actor,
        id: DatabaseId,
        candidate: Option<&str>,
    ) -> Result<Operation> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let tenant = lock_available(&mut tx, id).await?;
        let members: Vec<String> = sqlx::query_scalar("SELECT name FROM database_members WHERE database_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        if members.len() < 2 {
            return Err(Error::conflict(
                "single_member",
                "a switchover needs a follower; this database has one member",
            ));
        }
        if let Some(c) = candidate {
            if !members.iter().any(|m| m == c) {
                return Err(Error::invalid("candidate", "unknown", format!("no member named {c:?}")));
            }
        }
        let op =
            operation_insert(&mut tx, actor, tenant, id, OperationKind::Switchover, json!({ "candidate": candidate }))
                .await?;
        tx.commit().await.map_err(db_error)?;
        Ok(op)
    }

    pub async fn database_events(
        &self,
        id: DatabaseId,
        page: &PageRequest,
    ) -> Result<(Vec<DatabaseEvent>, Option<String>)> {
        type Row = (uuid::Uuid, DatabaseId, String, serde_json::Value, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, database_id, kind, detail, created_at FROM database_events WHERE database_id = $1 \
             AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(id)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.0.to_string());
        let items = rows
            .into_iter()
            .map(|(id, database_id, kind, detail, created_at)| DatabaseEvent {
                id,
                database_id,
                kind,
                detail,
                created_at,
            })
            .collect();
        Ok((items, next))
    }
}

/// Locks an available database for a change; other states are a conflict.
async fn lock_available(conn: &mut PgConnection, id: DatabaseId) -> Result<TenantId> {
    let row: Option<(TenantId, String)> =
        sqlx::query_as("SELECT tenant_id, status FROM databases WHERE id = $1 AND status <> 'deleted' FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    let (tenant, status) = row.ok_or(Error::not_found("database"))?;
    let status: DatabaseStatus = crate::parse_enum(&status)?;
    if status != DatabaseStatus::Available {
        return Err(Error::conflict("not_available", format!("the database is {status}; wait until it is available")));
    }
    Ok(tenant)
}

/// The desired configuration, on the caller's connection (a workflow step's transaction).
pub async fn database_configuration_in(conn: &mut sqlx::PgConnection, id: DatabaseId) -> Result<Configuration> {
    let row: Option<(serde_json::Value, bool)> =
        sqlx::query_as("SELECT parameters, synchronous_replication FROM databases WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    let (parameters, synchronous_replication) = row.ok_or(Error::not_found("database"))?;
    Ok(Configuration {
        parameters: serde_json::from_value(parameters).map_err(Error::internal)?,
        synchronous_replication,
    })
}
