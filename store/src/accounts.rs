//! Users (people and service accounts) and the caller's memberships.

use chrono::{DateTime, Utc};
use pgplane_core::ids::{TenantId, UserId};
use pgplane_core::model::{CreateUser, Membership, User};
use pgplane_core::page::PageRequest;
use sqlx::FromRow;

use crate::{db_error, parse_enum, Error, Result, Store};

#[derive(FromRow)]
pub(crate) struct UserRow {
    id: UserId,
    email: String,
    name: String,
    platform_role: Option<String>,
    created_at: DateTime<Utc>,
}

impl UserRow {
    pub(crate) fn into_user(self) -> Result<User> {
        Ok(User {
            id: self.id,
            email: self.email,
            name: self.name,
            platform_role: self.platform_role.as_deref().map(parse_enum).transpose()?,
            created_at: self.created_at,
        })
    }
}

impl Store {
    pub async fn user_create(&self, input: &CreateUser) -> Result<User> {
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (id, email, name, platform_role) VALUES ($1, $2, $3, $4) \
             RETURNING id, email, name, platform_role, created_at",
        )
        .bind(UserId::new())
        .bind(input.email.trim())
        .bind(input.name.trim())
        .bind(input.platform_role.map(|r| r.as_str()))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        row.into_user()
    }

    pub async fn user_get(&self, id: UserId) -> Result<User> {
        let row: Option<UserRow> =
            sqlx::query_as("SELECT id, email, name, platform_role, created_at FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.ok_or(Error::not_found("user"))?.into_user()
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT id, email, name, platform_role, created_at FROM users WHERE lower(email) = lower($1)",
        )
        .bind(email.trim())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    pub async fn user_list(&self, page: &PageRequest) -> Result<(Vec<User>, Option<String>)> {
        let rows: Vec<UserRow> = sqlx::query_as(
            "SELECT id, email, name, platform_role, created_at FROM users \
             WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(UserRow::into_user).collect::<Result<_>>()?, next))
    }

    pub async fn membership_list(&self, user: UserId) -> Result<Vec<Membership>> {
        let rows: Vec<(TenantId, String, String)> = sqlx::query_as(
            "SELECT t.id, t.name, m.role FROM memberships m JOIN tenants t ON t.id = m.tenant_id \
             WHERE m.user_id = $1 AND t.deleted_at IS NULL ORDER BY t.id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(tenant_id, tenant_name, role)| Ok(Membership { tenant_id, tenant_name, role: parse_enum(&role)? }))
            .collect()
    }
}
