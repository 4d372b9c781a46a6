//! Apps: a tenant's applications, which databases attach to.

use chrono::{DateTime, Utc};
use pgplane_core::ids::{AppId, TenantId};
use pgplane_core::model::App;
use pgplane_core::page::PageRequest;
use sqlx::FromRow;

use crate::{db_error, scoped_role, Actor, Error, Result, Scoped, Store};

#[derive(FromRow)]
struct AppRow {
    id: AppId,
    tenant_id: TenantId,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<AppRow> for App {
    fn from(r: AppRow) -> Self {
        App { id: r.id, tenant_id: r.tenant_id, name: r.name, created_at: r.created_at }
    }
}

impl Store {
    pub async fn app_create(&self, tenant: TenantId, name: &str) -> Result<App> {
        let row: AppRow = sqlx::query_as(
            "INSERT INTO apps (id, tenant_id, name) SELECT $1, $2, $3 \
             FROM tenants WHERE id = $2 AND deleted_at IS NULL RETURNING id, tenant_id, name, created_at",
        )
        .bind(AppId::new())
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .ok_or(Error::not_found("tenant"))?;
        Ok(row.into())
    }

    /// The app with the caller's role in its tenant, or not found.
    pub async fn app_get(&self, actor: &Actor, id: AppId) -> Result<Scoped<App>> {
        #[derive(FromRow)]
        struct Row {
            #[sqlx(flatten)]
            app: AppRow,
            role: Option<String>,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT a.id, a.tenant_id, a.name, a.created_at, m.role FROM apps a \
             LEFT JOIN memberships m ON m.tenant_id = a.tenant_id AND m.user_id = $2 \
             WHERE a.id = $1 AND a.deleted_at IS NULL AND (m.role IS NOT NULL OR $3)",
        )
        .bind(id)
        .bind(actor.user_id)
        .bind(actor.is_operator())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let row = row.ok_or(Error::not_found("app"))?;
        Ok(Scoped { item: row.app.into(), role: scoped_role(row.role.as_deref())? })
    }

    pub async fn app_list(&self, tenant: TenantId, page: &PageRequest) -> Result<(Vec<App>, Option<String>)> {
        let rows: Vec<AppRow> = sqlx::query_as(
            "SELECT id, tenant_id, name, created_at FROM apps WHERE tenant_id = $1 AND deleted_at IS NULL \
             AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        )
        .bind(tenant)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(Into::into).collect(), next))
    }

    pub async fn app_rename(&self, id: AppId, name: &str) -> Result<App> {
        let row: AppRow = sqlx::query_as(
            "UPDATE apps SET name = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING id, tenant_id, name, created_at",
        )
        .bind(id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .ok_or(Error::not_found("app"))?;
        Ok(row.into())
    }

    /// Deletes an app that has no databases left (deleting ones count until they are gone).
    pub async fn app_delete(&self, id: AppId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SELECT 1 FROM apps WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM databases WHERE app_id = $1 AND status <> 'deleted'")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        if live > 0 {
            return Err(Error::conflict(
                "app_not_empty",
                format!("the app still has {live} database(s); delete them first"),
            ));
        }
        sqlx::query("UPDATE apps SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}
