//! Token exchange, the caller, and the caller's own API tokens.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use pgplane_core::error::Validator;
use pgplane_core::ids::TokenId;
use pgplane_core::model::{AccessToken, ApiTokenPage, CreateApiToken, CreatedApiToken, Me, TokenExchange};
use pgplane_core::page::PageParams;
use pgplane_core::validate;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::created;
use crate::auth::Auth;
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::Errors;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(token_exchange))
        .routes(routes!(me_get))
        .routes(routes!(my_token_list, my_token_create))
        .routes(routes!(my_token_revoke))
}

/// Exchanges a long-lived API token for an access token valid one hour.
#[utoipa::path(
    post, path = "/v1/auth/token", tag = "auth", request_body = TokenExchange,
    responses((status = 200, body = AccessToken), Errors)
)]
async fn token_exchange(
    State(state): State<AppState>,
    Json(input): Json<TokenExchange>,
) -> ApiResult<Json<AccessToken>> {
    let owner = state.store.token_authenticate(input.api_token.trim()).await?;
    Ok(Json(state.jwt.issue(&owner)?))
}

/// The caller and the tenants they belong to.
#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])), responses((status = 200, body = Me), Errors))]
async fn me_get(State(state): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Me>> {
    let user = state.store.user_get(actor.user_id).await?;
    let memberships = state.store.membership_list(actor.user_id).await?;
    Ok(Json(Me { user, memberships }))
}

/// Lists the caller's API tokens (never their secrets).
#[utoipa::path(
    get, path = "/v1/me/tokens", tag = "auth", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = ApiTokenPage), Errors)
)]
async fn my_token_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<ApiTokenPage>> {
    Ok(Json(ApiTokenPage::new(state.store.token_list(actor.user_id, &page.validate()?).await?)))
}

pub(super) fn validate_token_request(input: &CreateApiToken) -> ApiResult<()> {
    let mut v = Validator::new();
    v.check(validate::display_name("name", &input.name, validate::DISPLAY_NAME_MAX));
    if input.expires_in_days == Some(0) || input.expires_in_days.is_some_and(|d| d > 3650) {
        v.push(pgplane_core::FieldError::new("expires_in_days", "out_of_range", "must be between 1 and 3650"));
    }
    Ok(v.finish()?)
}

/// Creates an API token for the caller. The secret is in this answer only.
#[utoipa::path(
    post, path = "/v1/me/tokens", tag = "auth", security(("bearer" = [])), request_body = CreateApiToken,
    responses((status = 201, body = CreatedApiToken), Errors)
)]
async fn my_token_create(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(input): Json<CreateApiToken>,
) -> ApiResult<Response> {
    validate_token_request(&input)?;
    let (token, secret) = state.store.token_create(actor.user_id, &input.name, input.expires_in_days).await?;
    Ok(created(None, CreatedApiToken { token, secret }))
}

/// Revokes one of the caller's API tokens.
#[utoipa::path(
    delete, path = "/v1/me/tokens/{token_id}", tag = "auth", security(("bearer" = [])),
    params(("token_id" = TokenId, Path)), responses((status = 204), Errors)
)]
async fn my_token_revoke(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<TokenId>,
) -> ApiResult<StatusCode> {
    state.store.token_revoke(actor.user_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
