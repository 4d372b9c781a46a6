//! Tenants and their members. A caller sees a tenant only through a membership (operators
//! see all); everything else answers "not found".

use chrono::{DateTime, Utc};
use pgplane_core::ids::{TenantId, UserId};
use pgplane_core::model::{Member, Tenant, TenantRole};
use pgplane_core::page::PageRequest;
use sqlx::FromRow;

use crate::{db_error, parse_enum, scoped_role, Actor, Error, Result, Scoped, Store};

#[derive(FromRow)]
struct TenantRow {
    id: TenantId,
    name: String,
    created_at: DateTime<Utc>,
    role: Option<String>,
}

impl TenantRow {
    fn into_scoped(self) -> Result<Scoped<Tenant>> {
        Ok(Scoped {
            role: scoped_role(self.role.as_deref())?,
            item: Tenant { id: self.id, name: self.name, created_at: self.created_at },
        })
    }
}

#[derive(FromRow)]
struct MemberRow {
    user_id: UserId,
    email: String,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl MemberRow {
    fn into_member(self) -> Result<Member> {
        Ok(Member {
            user_id: self.user_id,
            email: self.email,
            name: self.name,
            role: parse_enum(&self.role)?,
            created_at: self.created_at,
        })
    }
}

const MEMBER_SELECT: &str = "SELECT u.id AS user_id, u.email, u.name, m.role, m.created_at \
     FROM memberships m JOIN users u ON u.id = m.user_id";

impl Store {
    /// Creates a tenant whose first owner is the caller.
    pub async fn tenant_create(&self, actor: &Actor, name: &str) -> Result<Tenant> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let (id, name, created_at): (TenantId, String, DateTime<Utc>) =
            sqlx::query_as("INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, created_at")
                .bind(TenantId::new())
                .bind(name.trim())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'owner')")
            .bind(id)
            .bind(actor.user_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Tenant { id, name, created_at })
    }

    /// The tenant with the caller's role in it, or not found.
    pub async fn tenant_get(&self, actor: &Actor, id: TenantId) -> Result<Scoped<Tenant>> {
        let row: Option<TenantRow> = sqlx::query_as(
            "SELECT t.id, t.name, t.created_at, m.role FROM tenants t \
             LEFT JOIN memberships m ON m.tenant_id = t.id AND m.user_id = $2 \
             WHERE t.id = $1 AND t.deleted_at IS NULL AND (m.role IS NOT NULL OR $3)",
        )
        .bind(id)
        .bind(actor.user_id)
        .bind(actor.is_operator())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.ok_or(Error::not_found("tenant"))?.into_scoped()
    }

    /// The caller's role in a tenant, or not found.
    pub async fn tenant_role(&self, actor: &Actor, id: TenantId) -> Result<TenantRole> {
        Ok(self.tenant_get(actor, id).await?.role)
    }

    pub async fn tenant_list(&self, actor: &Actor, page: &PageRequest) -> Result<(Vec<Tenant>, Option<String>)> {
        let rows: Vec<TenantRow> = sqlx::query_as(
            "SELECT t.id, t.name, t.created_at, m.role FROM tenants t \
             LEFT JOIN memberships m ON m.tenant_id = t.id AND m.user_id = $1 \
             WHERE t.deleted_at IS NULL AND (m.role IS NOT NULL OR $2) AND ($3::uuid IS NULL OR t.id > $3) \
             ORDER BY t.id LIMIT $4",
        )
        .bind(actor.user_id)
        .bind(actor.is_operator())
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(|r| r.into_scoped().map(|s| s.item)).collect::<Result<_>>()?, next))
    }

    pub async fn tenant_rename(&self, id: TenantId, name: &str) -> Result<Tenant> {
        let row: Option<(TenantId, String, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE tenants SET name = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING id, name, created_at",
        )
        .bind(id)
        .bind(name.trim())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let (id, name, created_at) = row.ok_or(Error::not_found("tenant"))?;
        Ok(Tenant { id, name, created_at })
    }

    /// Deletes an empty tenant (no live apps). Its history (addons, periods) is kept.
    pub async fn tenant_delete(&self, id: TenantId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let apps: i64 = sqlx::query_scalar("SELECT count(*) FROM apps WHERE tenant_id = $1 AND deleted_at IS NULL")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        if apps > 0 {
            return Err(Error::conflict(
                "tenant_not_empty",
                format!("the tenant still has {apps} app(s); delete them first"),
            ));
        }
        sqlx::query("UPDATE tenants SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM memberships WHERE tenant_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    pub async fn member_list(&self, tenant: TenantId, page: &PageRequest) -> Result<(Vec<Member>, Option<String>)> {
        let rows: Vec<MemberRow> = sqlx::query_as(&format!(
            "{MEMBER_SELECT} WHERE m.tenant_id = $1 AND ($2::uuid IS NULL OR u.id > $2) ORDER BY u.id LIMIT $3"
        ))
        .bind(tenant)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.user_id.to_string());
        Ok((rows.into_iter().map(MemberRow::into_member).collect::<Result<_>>()?, next))
    }

    pub async fn member_get(&self, tenant: TenantId, user: UserId) -> Result<Member> {
        let row: Option<MemberRow> =
            sqlx::query_as(&format!("{MEMBER_SELECT} WHERE m.tenant_id = $1 AND m.user_id = $2"))
                .bind(tenant)
                .bind(user)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.ok_or(Error::not_found("member"))?.into_member()
    }

    pub async fn member_add(&self, tenant: TenantId, user: UserId, role: TenantRole) -> Result<Member> {
        sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(user)
            .bind(role.as_str())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        self.member_get(tenant, user).await
    }

    /// Changes a member's role (`Some`) or removes them (`None`); a tenant always keeps an owner.
    pub async fn member_set(&self, tenant: TenantId, user: UserId, role: Option<TenantRole>) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let roles: Vec<(UserId, String)> =
            sqlx::query_as("SELECT user_id, role FROM memberships WHERE tenant_id = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        let current = roles.iter().find(|(u, _)| *u == user).ok_or(Error::not_found("member"))?;
        let owners = roles.iter().filter(|(_, r)| r == "owner").count();
        let stays_owner = role == Some(TenantRole::Owner);
        if current.1 == "owner" && owners == 1 && !stays_owner {
            return Err(Error::conflict("last_owner", "a tenant must keep at least one owner"));
        }
        match role {
            Some(role) => sqlx::query("UPDATE memberships SET role = $3 WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(user)
                .bind(role.as_str()),
            None => {
                sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2").bind(tenant).bind(user)
            }
        }
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}
