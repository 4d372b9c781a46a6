//! The plan catalog and the PostgreSQL versions on offer.

use pgplane_core::ids::TenantId;
use pgplane_core::model::{Plan, PostgresVersion, Price};
use pgplane_core::page::PageRequest;
use sqlx::FromRow;

use crate::{db_error, parse_enum, Error, Result, Store};

#[derive(FromRow)]
struct PlanRow {
    id: String,
    position: i32,
    name: String,
    tier: String,
    description: String,
    data_nodes: i32,
    gateways: i32,
    memory_mb: i32,
    disk_gb: i32,
    max_connections: i32,
    backup_quota_total: i32,
    backup_quota_per_day: i32,
    daily_backup_retention_days: i32,
    backup_retention_weeks: i32,
    backup_retention_months: i32,
    pitr: bool,
    pitr_window_days: i32,
    sla_percent: Option<String>,
    price_micros_per_hour: i64,
    currency: String,
    public: bool,
    available: bool,
}

impl PlanRow {
    fn into_plan(self) -> Result<Plan> {
        Ok(Plan {
            id: self.id,
            name: self.name,
            tier: parse_enum(&self.tier)?,
            description: self.description,
            data_nodes: self.data_nodes,
            gateways: self.gateways,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            max_connections: self.max_connections,
            backup_quota_total: self.backup_quota_total,
            backup_quota_per_day: self.backup_quota_per_day,
            daily_backup_retention_days: self.daily_backup_retention_days,
            backup_retention_weeks: self.backup_retention_weeks,
            backup_retention_months: self.backup_retention_months,
            pitr: self.pitr,
            pitr_window_days: self.pitr_window_days,
            sla_percent: self.sla_percent.map(|s| s.trim_end_matches('0').trim_end_matches('.').to_string()),
            price_per_hour: Price { amount_micros: self.price_micros_per_hour, currency: self.currency },
            public: self.public,
            available: self.available,
        })
    }
}

const PLAN_COLUMNS: &str = "id, position, name, tier, description, data_nodes, gateways, memory_mb, disk_gb, \
     max_connections, backup_quota_total, backup_quota_per_day, daily_backup_retention_days, \
     backup_retention_weeks, backup_retention_months, pitr, \
     pitr_window_days, sla_percent::text AS sla_percent, price_micros_per_hour, currency, public, available";

impl Store {
    pub async fn plan_list(&self, page: &PageRequest) -> Result<(Vec<Plan>, Option<String>)> {
        let after = page.after_position();
        let rows: Vec<PlanRow> =
            sqlx::query_as(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE position > $1 ORDER BY position LIMIT $2"))
                .bind(after)
                .bind(page.fetch_limit())
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.position.to_string());
        Ok((rows.into_iter().map(PlanRow::into_plan).collect::<Result<_>>()?, next))
    }

    pub async fn plan_get(&self, id: &str) -> Result<Plan> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        plan_get_in(&mut conn, id).await
    }

    /// The plan a tenant asks for, if it exists, is on sale and is public or granted to it.
    pub async fn plan_for_tenant(&self, tenant: TenantId, plan_id: &str, field: &str) -> Result<Plan> {
        let plan = match self.plan_get(plan_id).await {
            Err(Error::NotFound { .. }) => {
                return Err(Error::invalid(field, "unknown", format!("no plan named {plan_id:?}; see GET /v1/plans")))
            }
            other => other?,
        };
        if !plan.available {
            return Err(Error::invalid(field, "unavailable", format!("plan {plan_id:?} is retired")));
        }
        if !plan.public {
            let granted: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tenant_plan_grants WHERE tenant_id = $1 AND plan_id = $2)",
            )
            .bind(tenant)
            .bind(plan_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
            if !granted {
                return Err(Error::invalid(
                    field,
                    "not_allowed",
                    format!("plan {plan_id:?} is not available to this tenant; ask the platform to grant it"),
                ));
            }
        }
        Ok(plan)
    }

    /// Lets a tenant use a non-public plan (operators).
    pub async fn plan_grant(&self, tenant: TenantId, plan_id: &str) -> Result<()> {
        self.plan_get(plan_id).await?;
        sqlx::query("INSERT INTO tenant_plan_grants (tenant_id, plan_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(tenant)
            .bind(plan_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn plan_revoke(&self, tenant: TenantId, plan_id: &str) -> Result<()> {
        self.plan_get(plan_id).await?;
        sqlx::query("DELETE FROM tenant_plan_grants WHERE tenant_id = $1 AND plan_id = $2")
            .bind(tenant)
            .bind(plan_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn version_list(&self) -> Result<Vec<PostgresVersion>> {
        let rows: Vec<(String, bool)> =
            sqlx::query_as("SELECT version, is_default FROM postgres_versions WHERE available ORDER BY version::int")
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(rows.into_iter().map(|(version, default)| PostgresVersion { version, default }).collect())
    }

    /// The version a create request names, or the default one.
    pub async fn version_resolve(&self, requested: Option<&str>) -> Result<String> {
        let versions = self.version_list().await?;
        let found = match requested {
            Some(v) => versions.iter().find(|x| x.version == v),
            None => versions.iter().find(|x| x.default),
        };
        match (found, requested) {
            (Some(v), _) => Ok(v.version.clone()),
            (None, Some(v)) => Err(Error::invalid(
                "version",
                "unknown",
                format!(
                    "PostgreSQL {v:?} is not offered; choose one of: {}",
                    versions.iter().map(|x| x.version.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
            (None, None) => Err(Error::internal("no default PostgreSQL version in the catalog")),
        }
    }
}

/// A plan by id, on the caller's connection (a workflow step's transaction).
pub async fn plan_get_in(conn: &mut sqlx::PgConnection, id: &str) -> Result<Plan> {
    let row: Option<PlanRow> = sqlx::query_as(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.ok_or(Error::not_found("plan"))?.into_plan()
}
