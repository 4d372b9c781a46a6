//! Tenants, their members, and (for operators) grants of non-public plans.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use pgplane_core::ids::{TenantId, UserId};
use pgplane_core::model::{
    AddMember, CreateTenant, Member, MemberPage, PlatformRole, Tenant, TenantPage, TenantRole, UpdateMember,
    UpdateTenant,
};
use pgplane_core::page::PageParams;
use pgplane_core::{validate, Error};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::created;
use crate::auth::{require_platform, require_role, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tenant_list, tenant_create))
        .routes(routes!(tenant_get, tenant_update, tenant_delete))
        .routes(routes!(member_list, member_add))
        .routes(routes!(member_get, member_update, member_remove))
        .routes(routes!(plan_grant, plan_revoke))
}

/// Creates a tenant; the caller becomes its owner.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), request_body = CreateTenant,
    responses((status = 201, body = Tenant), Errors)
)]
async fn tenant_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(input): Json<CreateTenant>,
) -> ApiResult<Response> {
    validate::display_name("name", &input.name, validate::DISPLAY_NAME_MAX)
        .map_err(|e| Error::Validation { errors: vec![e] })?;
    let tenant = state.store.tenant_create(&actor, &input.name).await?;
    Ok(created(Some(format!("/v1/tenants/{}", tenant.id)), tenant))
}

/// Lists the tenants the caller belongs to (operators: all).
#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = TenantPage), Errors)
)]
async fn tenant_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<TenantPage>> {
    Ok(Json(TenantPage::new(state.store.tenant_list(&actor, &page.validate()?).await?)))
}

/// Shows a tenant.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path)), responses((status = 200, body = Tenant), Errors)
)]
async fn tenant_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<TenantId>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(state.store.tenant_get(&actor, id).await?.item))
}

/// Renames a tenant (admins).
#[utoipa::path(
    patch, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path)), request_body = UpdateTenant, responses((status = 200, body = Tenant), Errors)
)]
async fn tenant_update(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<TenantId>,
    Json(input): Json<UpdateTenant>,
) -> ApiResult<Json<Tenant>> {
    require_role(state.store.tenant_role(&actor, id).await?, TenantRole::Admin)?;
    validate::display_name("name", &input.name, validate::DISPLAY_NAME_MAX)
        .map_err(|e| Error::Validation { errors: vec![e] })?;
    Ok(Json(state.store.tenant_rename(id, &input.name).await?))
}

/// Deletes a tenant that has no apps left (owners).
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path)), responses((status = 204), Errors)
)]
async fn tenant_delete(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<TenantId>,
) -> ApiResult<StatusCode> {
    require_role(state.store.tenant_role(&actor, id).await?, TenantRole::Owner)?;
    state.store.tenant_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a tenant's members.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/members", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), PageParams), responses((status = 200, body = MemberPage), Errors)
)]
async fn member_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<TenantId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<MemberPage>> {
    state.store.tenant_role(&actor, id).await?;
    Ok(Json(MemberPage::new(state.store.member_list(id, &page.validate()?).await?)))
}

/// Only owners hand out or take away ownership; admins manage the other roles.
fn require_can_grant(caller: TenantRole, granted: TenantRole) -> Result<(), Error> {
    require_role(caller, if granted == TenantRole::Owner { TenantRole::Owner } else { TenantRole::Admin })
}

/// Adds an existing user to the tenant (admins; owners to add owners).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant_id}/members", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path)), request_body = AddMember, responses((status = 201, body = Member), Errors)
)]
async fn member_add(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<TenantId>,
    Json(input): Json<AddMember>,
) -> ApiResult<Response> {
    let role = state.store.tenant_role(&actor, id).await?;
    require_can_grant(role, input.role)?;
    validate::email("email", &input.email).map_err(|e| Error::Validation { errors: vec![e] })?;
    let user = state.store.user_by_email(&input.email).await?.ok_or_else(|| {
        Error::invalid("email", "unknown", "no user has this email; ask the platform to create the user first")
    })?;
    let member = state.store.member_add(id, user.id, input.role).await?;
    Ok(created(Some(format!("/v1/tenants/{id}/members/{}", user.id)), member))
}

/// Shows one member.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant_id}/members/{user_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), ("user_id" = UserId, Path)), responses((status = 200, body = Member), Errors)
)]
async fn member_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, user)): Path<(TenantId, UserId)>,
) -> ApiResult<Json<Member>> {
    state.store.tenant_role(&actor, id).await?;
    Ok(Json(state.store.member_get(id, user).await?))
}

/// Changes a member's role (admins; owners for anything touching ownership).
#[utoipa::path(
    patch, path = "/v1/tenants/{tenant_id}/members/{user_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), ("user_id" = UserId, Path)), request_body = UpdateMember,
    responses((status = 200, body = Member), Errors)
)]
async fn member_update(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, user)): Path<(TenantId, UserId)>,
    Json(input): Json<UpdateMember>,
) -> ApiResult<Json<Member>> {
    let role = state.store.tenant_role(&actor, id).await?;
    let current = state.store.member_get(id, user).await?;
    require_can_grant(role, current.role)?;
    require_can_grant(role, input.role)?;
    state.store.member_set(id, user, Some(input.role)).await?;
    Ok(Json(state.store.member_get(id, user).await?))
}

/// Removes a member (admins; owners to remove owners; anyone may leave).
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/members/{user_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), ("user_id" = UserId, Path)), responses((status = 204), Errors)
)]
async fn member_remove(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, user)): Path<(TenantId, UserId)>,
) -> ApiResult<StatusCode> {
    let role = state.store.tenant_role(&actor, id).await?;
    let current = state.store.member_get(id, user).await?;
    if user != actor.user_id {
        require_can_grant(role, current.role)?;
    }
    state.store.member_set(id, user, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lets the tenant use a non-public plan (operators).
#[utoipa::path(
    put, path = "/v1/tenants/{tenant_id}/plan-grants/{plan_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), ("plan_id" = String, Path)), responses((status = 204), Errors)
)]
async fn plan_grant(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, plan)): Path<(TenantId, String)>,
) -> ApiResult<StatusCode> {
    require_platform(&actor, PlatformRole::Operator)?;
    state.store.tenant_get(&actor, id).await?;
    state.store.plan_grant(id, &plan).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Withdraws a plan grant (operators); databases already on the plan keep it.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant_id}/plan-grants/{plan_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant_id" = TenantId, Path), ("plan_id" = String, Path)), responses((status = 204), Errors)
)]
async fn plan_revoke(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path((id, plan)): Path<(TenantId, String)>,
) -> ApiResult<StatusCode> {
    require_platform(&actor, PlatformRole::Operator)?;
    state.store.tenant_get(&actor, id).await?;
    state.store.plan_revoke(id, &plan).await?;
    Ok(StatusCode::NO_CONTENT)
}
