//! Users, managed by the platform's operators (a platform signs its customers up and calls
//! these as an operator). A user may read their own record.

use axum::extract::State;
use axum::response::Response;
use pgplane_core::error::Validator;
use pgplane_core::ids::UserId;
use pgplane_core::model::{CreateApiToken, CreateUser, CreatedApiToken, PlatformRole, User, UserPage};
use pgplane_core::page::PageParams;
use pgplane_core::{validate, Error};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::created;
use crate::auth::{require_platform, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(user_list, user_create))
        .routes(routes!(user_get))
        .routes(routes!(user_token_create))
}

/// Creates a user (operators).
#[utoipa::path(
    post, path = "/v1/users", tag = "users", security(("bearer" = [])), request_body = CreateUser,
    responses((status = 201, body = User), Errors)
)]
async fn user_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(input): Json<CreateUser>,
) -> ApiResult<Response> {
    require_platform(&actor, PlatformRole::Operator)?;
    let mut v = Validator::new();
    v.check(validate::email("email", &input.email));
    v.check(validate::display_name("name", &input.name, validate::DISPLAY_NAME_MAX));
    v.finish()?;
    let user = state.store.user_create(&input).await?;
    Ok(created(Some(format!("/v1/users/{}", user.id)), user))
}

/// Lists users (operators).
#[utoipa::path(
    get, path = "/v1/users", tag = "users", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = UserPage), Errors)
)]
async fn user_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<UserPage>> {
    require_platform(&actor, PlatformRole::Operator)?;
    Ok(Json(UserPage::new(state.store.user_list(&page.validate()?).await?)))
}

/// Shows a user (operators, or the user themself).
#[utoipa::path(
    get, path = "/v1/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = UserId, Path)), responses((status = 200, body = User), Errors)
)]
async fn user_get(State(state): State<AppState>, Auth(actor): Auth, Path(id): Path<UserId>) -> ApiResult<Json<User>> {
    if id != actor.user_id && !actor.is_operator() {
        return Err(Error::not_found("user").into());
    }
    Ok(Json(state.store.user_get(id).await?))
}

/// Issues an API token for a user (operators): how a new user gets their first token.
#[utoipa::path(
    post, path = "/v1/users/{user_id}/tokens", tag = "users", security(("bearer" = [])),
    params(("user_id" = UserId, Path)), request_body = CreateApiToken,
    responses((status = 201, body = CreatedApiToken), Errors)
)]
async fn user_token_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<UserId>,
    Json(input): Json<CreateApiToken>,
) -> ApiResult<Response> {
    require_platform(&actor, PlatformRole::Operator)?;
    super::session::validate_token_request(&input)?;
    state.store.user_get(id).await?;
    let (token, secret) = state.store.token_create(id, &input.name, input.expires_in_days).await?;
    Ok(created(None, CreatedApiToken { token, secret }))
}
