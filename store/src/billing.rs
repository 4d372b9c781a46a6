//! Addons and their plan periods: what the billing service reads.

use chrono::{DateTime, Utc};
use pgplane_core::ids::{AddonId, AddonPeriodId, AppId, DatabaseId, TenantId};
use pgplane_core::model::{Addon, AddonPeriod, BillingPeriod, Price};
use pgplane_core::page::PageRequest;
use sqlx::FromRow;

use crate::{db_error, Result, Store};

#[derive(FromRow)]
struct PeriodRow {
    id: AddonPeriodId,
    addon_id: AddonId,
    tenant_id: TenantId,
    app_id: AppId,
    database_id: DatabaseId,
    plan_id: String,
    price_micros_per_hour: i64,
    currency: String,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct AddonRow {
    id: AddonId,
    tenant_id: TenantId,
    app_id: AppId,
    database_id: DatabaseId,
    kind: String,
    plan_id: String,
    created_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

const PERIOD_SELECT: &str = "SELECT p.id, p.addon_id, a.tenant_id, a.app_id, d.id AS database_id, p.plan_id, \
     p.price_micros_per_hour, p.currency, p.started_at, p.ended_at \
     FROM addon_periods p JOIN addons a ON a.id = p.addon_id JOIN databases d ON d.addon_id = a.id";

impl Store {
    /// An app's addons, live and ended, each with every plan period.
    pub async fn addon_list(&self, app: AppId, page: &PageRequest) -> Result<(Vec<Addon>, Option<String>)> {
        let rows: Vec<AddonRow> = sqlx::query_as(
            "SELECT a.id, a.tenant_id, a.app_id, d.id AS database_id, a.kind, a.plan_id, a.created_at, a.ended_at \
             FROM addons a JOIN databases d ON d.addon_id = a.id \
             WHERE a.app_id = $1 AND ($2::uuid IS NULL OR a.id > $2) ORDER BY a.id LIMIT $3",
        )
        .bind(app)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        let ids: Vec<AddonId> = rows.iter().map(|r| r.id).collect();
        let periods: Vec<PeriodRow> =
            sqlx::query_as(&format!("{PERIOD_SELECT} WHERE p.addon_id = ANY($1) ORDER BY p.started_at, p.id"))
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        let addons = rows
            .into_iter()
            .map(|r| Addon {
                periods: periods
                    .iter()
                    .filter(|p| p.addon_id == r.id)
                    .map(|p| AddonPeriod {
                        id: p.id,
                        plan: p.plan_id.clone(),
                        price_per_hour: Price { amount_micros: p.price_micros_per_hour, currency: p.currency.clone() },
                        started_at: p.started_at,
                        ended_at: p.ended_at,
                    })
                    .collect(),
                id: r.id,
                tenant_id: r.tenant_id,
                app_id: r.app_id,
                database_id: r.database_id,
                kind: r.kind,
                plan: r.plan_id,
                created_at: r.created_at,
                ended_at: r.ended_at,
            })
            .collect();
        Ok((addons, next))
    }

    /// Every plan period of every tenant that overlaps `[from, to)`, for the billing service.
    pub async fn billing_periods(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        page: &PageRequest,
    ) -> Result<(Vec<BillingPeriod>, Option<String>)> {
        let rows: Vec<PeriodRow> = sqlx::query_as(&format!(
            "{PERIOD_SELECT} WHERE p.started_at < $2 AND (p.ended_at IS NULL OR p.ended_at > $1) \
             AND ($3::uuid IS NULL OR p.id > $3) ORDER BY p.id LIMIT $4"
        ))
        .bind(from)
        .bind(to)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        let items = rows
            .into_iter()
            .map(|p| BillingPeriod {
                id: p.id,
                addon_id: p.addon_id,
                tenant_id: p.tenant_id,
                app_id: p.app_id,
                database_id: p.database_id,
                plan: p.plan_id,
                price_per_hour: Price { amount_micros: p.price_micros_per_hour, currency: p.currency },
                started_at: p.started_at,
                ended_at: p.ended_at,
            })
            .collect();
        Ok((items, next))
    }
}
