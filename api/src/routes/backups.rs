//! Backups of a database: take one now (202 with the `backup` operation; over the plan's
//! per-day cap a 429 with `next_allowed_at`), list, show, delete, the manual quota, and restore
//! one in place or into a new database (202 with the `restore` or `create` operation).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use pgplane_core::backup::{Backup, BackupMethod, BackupPage, BackupQuota, RestoreRequest};
use pgplane_core::error::Validator;
use pgplane_core::ids::{BackupId, DatabaseId};
use pgplane_core::model::{Operation, TenantRole};
use pgplane_core::page::PageParams;
use pgplane_core::{validate, Error};
use pgplane_store::databases::NewDatabase;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::accepted;
use crate::auth::{require_role, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(backup_list, backup_create))
        .routes(routes!(backup_get, backup_delete))
        .routes(routes!(backup_quota))
        .routes(routes!(backup_restore))
}

/// Takes a backup now (members): `pg_dump -Fc` on a Business database's follower (else its
/// leader), streamed into backup storage. Answers 202 with the `backup` operation; the backup
/// is listed at once as `pending`. When the plan's total of manual backups is reached, the
/// oldest manual one is deleted once this one succeeded. Over the plan's per-day cap the answer
/// is 429 with `next_allowed_at` (and `Retry-After`); a plan without manual backups, or another
/// operation in progress, is 409.
#[utoipa::path(
    post, path = "/v1/databases/{database_id}/backups", tag = "backups", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 202, body = Operation), Errors)
)]
async fn backup_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Response> {
    require_role(state.store.database_get(&actor, id).await?.role, TenantRole::Member)?;
    let (_, op) = state.store.backup_start(Some(&actor), id, BackupMethod::Manual, Utc::now()).await?;
    Ok(accepted(op))
}

/// Lists a database's backups, newest first (manual and scheduled, failed ones with their reason).
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/backups", tag = "backups", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), PageParams), responses((status = 200, body = BackupPage), Errors)
)]
async fn backup_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<BackupPage>> {
    state.store.database_get(&actor, id).await?;
    Ok(Json(BackupPage::new(state.store.backup_list(id, &page.validate()?).await?)))
}

/// Shows a backup.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/backups/{backup_id}", tag = "backups", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), ("backup_id" = BackupId, Path)),
    responses((status = 200, body = Backup), Errors)
)]
async fn backup_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, backup)): Path<(DatabaseId, BackupId)>,
) -> ApiResult<Json<Backup>> {
    Ok(Json(state.store.backup_get(&actor, id, backup).await?.item))
}

/// Deletes a backup (members): gone at once from the list and the quota, its file deleted from
/// backup storage shortly after. A backup still being taken is 409.
#[utoipa::path(
    delete, path = "/v1/databases/{database_id}/backups/{backup_id}", tag = "backups", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), ("backup_id" = BackupId, Path)),
    responses((status = 204), Errors)
)]
async fn backup_delete(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, backup)): Path<(DatabaseId, BackupId)>,
) -> ApiResult<StatusCode> {
    require_role(state.store.backup_get(&actor, id, backup).await?.role, TenantRole::Member)?;
    state.store.backup_delete(id, backup).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The manual backups the database's plan allows: the total kept and the number per UTC day,
/// how many are used and remain today, when the next is allowed, and which backup the next one
/// would evict.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/backup-quota", tag = "backups", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 200, body = BackupQuota), Errors)
)]
async fn backup_quota(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Json<BackupQuota>> {
    state.store.database_get(&actor, id).await?;
    Ok(Json(state.store.backup_quota(id, Utc::now()).await?))
}

/// Restores a backup (members). `{"target": "in_place"}` replaces the content of the backup's
/// database (or of `database_id`, another database of the same tenant): 202 with its `restore`
/// operation; the connection URL does not change. `{"target": "new_database", "name", "plan"}`
/// orders a new database (in `app_id`, by default the backup's database's app, with its
/// PostgreSQL version) and restores the backup into it before it is available: 202 with its
/// `create` operation, whose `database_id` is the new database.
#[utoipa::path(
    post, path = "/v1/databases/{database_id}/backups/{backup_id}/restore", tag = "backups",
    security(("bearer" = [])), params(("database_id" = DatabaseId, Path), ("backup_id" = BackupId, Path)),
    request_body = RestoreRequest, responses((status = 202, body = Operation), Errors)
)]
async fn backup_restore(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, backup_id)): Path<(DatabaseId, BackupId)>,
    Json(input): Json<RestoreRequest>,
) -> ApiResult<Response> {
    let backup = state.store.backup_get(&actor, id, backup_id).await?;
    let source = state.store.database_get(&actor, id).await?;
    if backup.item.status != pgplane_core::backup::BackupStatus::Done {
        return Err(Error::conflict("backup_not_done", "only a finished backup can be restored").into());
    }
    match input {
        RestoreRequest::InPlace { database_id } => {
            let target = state.store.database_get(&actor, database_id.unwrap_or(id)).await?;
            if target.item.tenant_id != source.item.tenant_id {
                // Seen from the target's tenant, a backup of another tenant does not exist.
                return Err(Error::not_found("backup").into());
            }
            require_role(target.role, TenantRole::Member)?;
            let op = state.store.database_restore(&actor, target.item.id, backup.item.id).await?;
            Ok(accepted(op))
        }
        RestoreRequest::NewDatabase { name, plan, app_id } => {
            let app = state.store.app_get(&actor, app_id.unwrap_or(source.item.app_id)).await?;
            if app.item.tenant_id != source.item.tenant_id {
                return Err(Error::not_found("backup").into());
            }
            require_role(app.role, TenantRole::Member)?;
            let mut v = Validator::new();
            v.check(validate::database_name("name", &name));
            let plan = match state.store.plan_for_tenant(app.item.tenant_id, &plan, "plan").await {
                Ok(p) => Some(p),
                Err(Error::Validation { errors }) => {
                    errors.into_iter().for_each(|e| v.push(e));
                    None
                }
                Err(e) => return Err(e.into()),
            };
            v.finish()?;
            let Some(plan) = plan else { return Err(Error::internal("validation let a gap").into()) };
            let new = NewDatabase {
                tenant_id: app.item.tenant_id,
                app_id: app.item.id,
                name: &name,
                plan: &plan,
                version: &source.item.version,
                settings: pgplane_core::model::DatabaseSettings {
                    force_tls: false,
                    internet_exposure: false,
                    backup_hour: None,
                    allowed_cidrs: Vec::new(),
                },
            };
            let (_, op) = state.store.database_create_from(&actor, new, Some(backup.item.id)).await?;
            Ok(accepted(op))
        }
    }
}
