//! Apps and the addons attached to them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use pgplane_core::ids::{AppId, TenantId};
use pgplane_core::model::{AddonPage, App, AppPage, CreateApp, TenantRole, UpdateApp};
use pgplane_core::page::PageParams;
use pgplane_core::{validate, Error};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::created;
use crate::auth::{require_role, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(app_list, app_create))
        .routes(routes!(app_get, app_update, app_delete))
        .routes(routes!(addon_list))
}

fn check_name(name: &str) -> Result<(), Error> {
    validate::slug_name("name", name).map_err(|e| Error::Validation { errors: vec![e] })
}

/// Creates an app in a tenant (members).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/apps", tag = "apps", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path)), request_body = CreateApp, responses((status = 201, body = App), Errors)
)]
async fn app_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(tenant): Path<TenantId>,
    Json(input): Json<CreateApp>,
) -> ApiResult<Response> {
    require_role(state.store.tenant_role(&actor, tenant).await?, TenantRole::Member)?;
    check_name(&input.name)?;
    let app = state.store.app_create(tenant, &input.name).await?;
    Ok(created(Some(format!("/v1/apps/{}", app.id)), app))
}

/// Lists a tenant's apps.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/apps", tag = "apps", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), PageParams), responses((status = 200, body = AppPage), Errors)
)]
async fn app_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(tenant): Path<TenantId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<AppPage>> {
    state.store.tenant_role(&actor, tenant).await?;
    Ok(Json(AppPage::new(state.store.app_list(tenant, &page.validate()?).await?)))
}

/// Shows an app.
#[utoipa::path(
    get, path = "/v1/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = AppId, Path)), responses((status = 200, body = App), Errors)
)]
async fn app_get(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<AppId>) -> ApiResult<Json<App>> {
    Ok(Json(state.store.app_get(&actor, id).await?.item))
}

/// Renames an app (members).
#[utoipa::path(
    patch, path = "/v1/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = AppId, Path)), request_body = UpdateApp, responses((status = 200, body = App), Errors)
)]
async fn app_update(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<AppId>,
    Json(input): Json<UpdateApp>,
) -> ApiResult<Json<App>> {
    require_role(state.store.app_get(&actor, id).await?.role, TenantRole::Member)?;
    check_name(&input.name)?;
    Ok(Json(state.store.app_rename(id, &input.name).await?))
}

/// Deletes an app that has no databases left (members).
#[utoipa::path(
    delete, path = "/v1/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = AppId, Path)), responses((status = 204), Errors)
)]
async fn app_delete(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<AppId>) -> ApiResult<StatusCode> {
    require_role(state.store.app_get(&actor, id).await?.role, TenantRole::Member)?;
    state.store.app_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists an app's addons, live and ended, each with its plan periods.
#[utoipa::path(
    get, path = "/v1/apps/{app_id}/addons", tag = "apps", security(("bearer" = [])),
    params(("app_id" = AppId, Path), PageParams), responses((status = 200, body = AddonPage), Errors)
)]
async fn addon_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<AppId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<AddonPage>> {
    state.store.app_get(&actor, id).await?;
    Ok(Json(AddonPage::new(state.store.addon_list(id, &page.validate()?).await?)))
}
