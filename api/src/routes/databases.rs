//! Databases: create, change plan, delete and settings changes answer 202 with an operation
//! that the scheduler carries out.

use axum::extract::State;
use axum::response::Response;
use pgplane_core::backup::daily;
use pgplane_core::error::Validator;
use pgplane_core::ids::{AppId, DatabaseId, OperationId};
use pgplane_core::model::{
    ChangePlan, ConnectionInfo, CreateDatabase, Database, DatabaseMemberList, DatabasePage, DatabaseSettings,
    Operation, OperationPage, TenantRole, UpdateDatabaseSettings,
};
use pgplane_core::page::PageParams;
use pgplane_core::{validate, Error, FieldError};
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
        .routes(routes!(database_list, database_create))
        .routes(routes!(database_get, database_delete))
        .routes(routes!(database_change_plan))
        .routes(routes!(database_restart))
        .routes(routes!(settings_get, settings_update))
        .routes(routes!(member_list))
        .routes(routes!(connection_get))
        .routes(routes!(ca_get))
        .routes(routes!(operation_list))
        .routes(routes!(operation_get))
}

/// Applies a partial change to settings and checks the result as a whole. `plan_daily` says
/// whether the database's plan keeps daily backups (`None`: the plan is unknown, refused already).
fn merge_settings(
    current: &DatabaseSettings,
    patch: &UpdateDatabaseSettings,
    plan_daily: Option<bool>,
    prefix: &str,
    v: &mut Validator,
) -> DatabaseSettings {
    let field = format!("{prefix}allowed_cidrs");
    let allowed_cidrs = match &patch.allowed_cidrs {
        Some(list) => validate::cidrs(&field, list).unwrap_or_else(|e| {
            v.push(e);
            Vec::new()
        }),
        None => current.allowed_cidrs.clone(),
    };
    let merged = DatabaseSettings {
        force_tls: patch.force_tls.unwrap_or(current.force_tls),
        internet_exposure: patch.internet_exposure.unwrap_or(current.internet_exposure),
        backup_hour: patch.backup_hour.unwrap_or(current.backup_hour),
        daily_backups: patch.daily_backups.unwrap_or(current.daily_backups) && plan_daily != Some(false),
        // Derived by the store from what is stored.
        effective_backup_hour: None,
        allowed_cidrs,
    };
    if let Some(Some(h)) = patch.backup_hour {
        v.check(validate::hour(&format!("{prefix}backup_hour"), h));
    }
    if patch.daily_backups == Some(true) && plan_daily == Some(false) {
        v.push(FieldError::new(
            format!("{prefix}daily_backups"),
            "not_in_plan",
            "this plan has no daily backups; change to a plan that keeps them (see GET /v1/plans)",
        ));
    }
    if merged.internet_exposure && !merged.force_tls {
        v.push(FieldError::new(
            format!("{prefix}internet_exposure"),
            "force_tls_required",
            "internet exposure is refused until force_tls is on",
        ));
    }
    merged
}

/// Orders a database for an app (members). Answers 202 with the `create` operation; the
/// new database's id is its `database_id`.
#[utoipa::path(
    post, path = "/v1/apps/{app_id}/databases", tag = "databases", security(("bearer" = [])),
    params(("app_id" = AppId, Path)), request_body = CreateDatabase,
    responses((status = 202, body = Operation), Errors)
)]
async fn database_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(app_id): Path<AppId>,
    Json(input): Json<CreateDatabase>,
) -> ApiResult<Response> {
    let app = state.store.app_get(&actor, app_id).await?;
    require_role(app.role, TenantRole::Member)?;
    let tenant = app.item.tenant_id;
    let mut v = Validator::new();
    v.check(validate::database_name("name", &input.name));
    let defaults = DatabaseSettings {
        force_tls: false,
        internet_exposure: false,
        backup_hour: None,
        daily_backups: true,
        effective_backup_hour: None,
        allowed_cidrs: Vec::new(),
    };
    let plan = match state.store.plan_for_tenant(tenant, &input.plan, "plan").await {
        Ok(p) => Some(p),
        Err(Error::Validation { errors }) => {
            errors.into_iter().for_each(|e| v.push(e));
            None
        }
        Err(e) => return Err(e.into()),
    };
    let plan_daily = plan.as_ref().map(daily::plan_has_daily);
    let settings =
        merge_settings(&defaults, &input.settings.clone().unwrap_or_default(), plan_daily, "settings.", &mut v);
    let version = match state.store.version_resolve(input.version.as_deref()).await {
        Ok(ver) => Some(ver),
        Err(Error::Validation { errors }) => {
            errors.into_iter().for_each(|e| v.push(e));
            None
        }
        Err(e) => return Err(e.into()),
    };
    v.finish()?;
    let (Some(plan), Some(version)) = (plan, version) else {
        return Err(Error::internal("validation let a gap").into());
    };
    let new = NewDatabase { tenant_id: tenant, app_id, name: &input.name, plan: &plan, version: &version, settings };
    let (_, op) = state.store.database_create(&actor, new).await?;
    Ok(accepted(op))
}

/// Lists an app's databases (those being deleted included, deleted ones not).
#[utoipa::path(
    get, path = "/v1/apps/{app_id}/databases", tag = "databases", security(("bearer" = [])),
    params(("app_id" = AppId, Path), PageParams), responses((status = 200, body = DatabasePage), Errors)
)]
async fn database_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(app_id): Path<AppId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<DatabasePage>> {
    state.store.app_get(&actor, app_id).await?;
    Ok(Json(DatabasePage::new(state.store.database_list(app_id, &page.validate()?).await?)))
}

/// Shows a database.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 200, body = Database), Errors)
)]
async fn database_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Json<Database>> {
    Ok(Json(state.store.database_get(&actor, id).await?.item))
}

/// Deletes a database (members). Answers 202 with the `delete` operation; asking again
/// while it is pending answers the same operation.
#[utoipa::path(
    delete, path = "/v1/databases/{database_id}", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 202, body = Operation), Errors)
)]
async fn database_delete(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Response> {
    require_role(state.store.database_get(&actor, id).await?.role, TenantRole::Member)?;
    Ok(accepted(state.store.database_delete(&actor, id).await?))
}

/// Moves a database to another plan (members). Answers 202 with the `change_plan` operation.
#[utoipa::path(
    post, path = "/v1/databases/{database_id}/change-plan", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), request_body = ChangePlan,
    responses((status = 202, body = Operation), Errors)
)]
async fn database_change_plan(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Json(input): Json<ChangePlan>,
) -> ApiResult<Response> {
    let db = state.store.database_get(&actor, id).await?;
    require_role(db.role, TenantRole::Member)?;
    let plan = state.store.plan_for_tenant(db.item.tenant_id, &input.plan, "plan").await?;
    Ok(accepted(state.store.database_change_plan(&actor, id, &plan).await?))
}

/// Restarts the database's members one at a time (members). Answers 202 with the `restart` operation.
#[utoipa::path(
    post, path = "/v1/databases/{database_id}/restart", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 202, body = Operation), Errors)
)]
async fn database_restart(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Response> {
    require_role(state.store.database_get(&actor, id).await?.role, TenantRole::Member)?;
    Ok(accepted(state.store.database_restart(&actor, id).await?))
}

/// Shows a database's settings.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/settings", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 200, body = DatabaseSettings), Errors)
)]
async fn settings_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Json<DatabaseSettings>> {
    Ok(Json(state.store.database_get(&actor, id).await?.item.settings))
}

/// Changes settings (members): force TLS, internet exposure (refused unless force TLS is
/// on), the IP allowlist of the public address, the daily backup (on or off; its UTC hour, or
/// `null` to let the platform choose one, shown as `effective_backup_hour`). Absent fields keep
/// their value. Answers 202 with the `update_settings` operation that applies them to the
/// running database (members reload, no restart; gateways take a new allowlist without
/// dropping connections); `GET …/settings` shows the desired settings at once. Only an
/// available database with no other operation in progress takes a change (409 otherwise).
#[utoipa::path(
    patch, path = "/v1/databases/{database_id}/settings", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), request_body = UpdateDatabaseSettings,
    responses((status = 202, body = Operation), Errors)
)]
async fn settings_update(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Json(patch): Json<UpdateDatabaseSettings>,
) -> ApiResult<Response> {
    let db = state.store.database_get(&actor, id).await?;
    require_role(db.role, TenantRole::Member)?;
    let plan = state.store.plan_get(&db.item.plan).await?;
    let mut v = Validator::new();
    let merged = merge_settings(&db.item.settings, &patch, Some(daily::plan_has_daily(&plan)), "", &mut v);
    v.finish()?;
    Ok(accepted(state.store.database_update_settings(&actor, id, &merged).await?))
}

/// The database's PostgreSQL members: role, state, timeline and replication lag, as their
/// agents last observed them through Patroni.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/members", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 200, body = DatabaseMemberList), Errors)
)]
async fn member_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Json<DatabaseMemberList>> {
    state.store.database_get(&actor, id).await?;
    Ok(Json(DatabaseMemberList { items: state.store.database_members(id).await? }))
}

fn not_provisioned() -> Error {
    Error::conflict("not_provisioned", "the database has no endpoint yet; wait for its create operation")
}

/// How to connect: URL with the tenant user's password, host, port, TLS mode (`verify-full`:
/// pass the CA as `sslrootcert`), CA, and the public address while exposed (members).
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/connection", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 200, body = ConnectionInfo), Errors)
)]
async fn connection_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Json<ConnectionInfo>> {
    // Read-only members see everything but credentials.
    require_role(state.store.database_get(&actor, id).await?.role, TenantRole::Member)?;
    let c = state.store.database_connection(id).await?.ok_or_else(not_provisioned)?;
    let sslmode = "verify-full";
    let url_for = |host: &str| {
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        format!("postgres://{}:{}@{host}:{}/{}?sslmode={sslmode}", c.user, c.password, c.port, c.database)
    };
    Ok(Json(ConnectionInfo {
        url: url_for(&c.host),
        public_url: c.public_host.as_deref().map(url_for),
        public_host: c.public_host.clone(),
        host: c.host,
        port: c.port,
        user: c.user,
        password: c.password,
        database: c.database,
        sslmode: sslmode.into(),
        ca_pem: c.ca_pem,
    }))
}

/// The database's CA certificate (PEM): the `sslrootcert` of `sslmode=verify-full`.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/ca.pem", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)),
    responses((status = 200, body = String, content_type = "application/x-pem-file"), Errors)
)]
async fn ca_get(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<DatabaseId>) -> ApiResult<Response> {
    use axum::response::IntoResponse;
    state.store.database_get(&actor, id).await?;
    let c = state.store.database_connection(id).await?.ok_or_else(not_provisioned)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], c.ca_pem).into_response())
}

/// Lists a database's operations, newest first.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/operations", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), PageParams), responses((status = 200, body = OperationPage), Errors)
)]
async fn operation_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<OperationPage>> {
    state.store.database_get(&actor, id).await?;
    Ok(Json(OperationPage::new(state.store.operation_list(id, &page.validate()?).await?)))
}

/// Shows an operation: status, progress, error.
#[utoipa::path(
    get, path = "/v1/operations/{operation_id}", tag = "databases", security(("bearer" = [])),
    params(("operation_id" = OperationId, Path)), responses((status = 200, body = Operation), Errors)
)]
async fn operation_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<OperationId>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(state.store.operation_get(&actor, id).await?.item))
}
