//! Database configuration (tenant-set parameters, synchronous replication), planned
//! switchovers and the event history. Changes answer 202 with an operation that the
//! scheduler applies through Patroni.

use axum::extract::State;
use axum::response::Response;
use pgplane_core::error::Validator;
use pgplane_core::ids::DatabaseId;
use pgplane_core::model::{
    Configuration, DatabaseEventPage, Operation, ParameterList, Switchover, TenantRole, UpdateConfiguration,
};
use pgplane_core::page::PageParams;
use pgplane_core::{params, FieldError};
use pgplane_store::config::NewConfiguration;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::accepted;
use crate::auth::{require_role, Auth};
use crate::error::ApiResult;
use crate::extract::{Json, Path, Query};
use crate::openapi::{Errors, RateLimited};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(parameter_list))
        .routes(routes!(configuration_get, configuration_update))
        .routes(routes!(switchover))
        .routes(routes!(event_list))
}

/// The parameters tenants may set, with types, bounds and whether they need a restart.
#[utoipa::path(get, path = "/v1/parameters", tag = "databases", responses((status = 200, body = ParameterList), RateLimited))]
async fn parameter_list() -> Json<ParameterList> {
    Json(ParameterList { items: params::PARAMETERS.to_vec() })
}

/// The database's parameters and replication mode.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/configuration", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), responses((status = 200, body = Configuration), Errors)
)]
async fn configuration_get(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
) -> ApiResult<Json<Configuration>> {
    state.store.database_get(&actor, id).await?;
    Ok(Json(state.store.database_configuration(id).await?))
}

/// Changes parameters (`null` resets one) or synchronous replication (members). Answers 202
/// with a `configure` operation; its `params.restart_required` names the parameters that take
/// effect only after a restart (`POST …/restart`).
#[utoipa::path(
    patch, path = "/v1/databases/{database_id}/configuration", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), request_body = UpdateConfiguration,
    responses((status = 202, body = Operation), Errors)
)]
async fn configuration_update(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Json(patch): Json<UpdateConfiguration>,
) -> ApiResult<Response> {
    let db = state.store.database_get(&actor, id).await?;
    require_role(db.role, TenantRole::Member)?;
    let current = state.store.database_configuration(id).await?;
    let mut v = Validator::new();
    let mut parameters = current.parameters.clone();
    let (mut restart_required, mut removed) = (Vec::new(), Vec::new());
    for (name, value) in patch.parameters.unwrap_or_default() {
        let changed = if value.is_null() {
            if params::find(&name).is_none() {
                v.push(FieldError::new(format!("parameters.{name}"), "unknown", "not a parameter tenants may set"));
                continue;
            }
            removed.push(name.clone());
            parameters.remove(&name).is_some()
        } else {
            match params::validate(&name, &value) {
                Ok(normalized) => parameters.insert(name.clone(), normalized.clone()) != Some(normalized),
                Err(e) => {
                    v.push(e);
                    continue;
                }
            }
        };
        if changed && params::find(&name).is_some_and(|d| d.restart) {
            restart_required.push(name);
        }
    }
    let synchronous_replication = patch.synchronous_replication.unwrap_or(current.synchronous_replication);
    if synchronous_replication && state.store.plan_get(&db.item.plan).await?.data_nodes < 2 {
        v.push(FieldError::new(
            "synchronous_replication",
            "needs_follower",
            "synchronous replication needs a plan with a follower (Business)",
        ));
    }
    v.finish()?;
    let new = NewConfiguration { parameters, synchronous_replication, restart_required, removed };
    Ok(accepted(state.store.database_configure(&actor, id, &new).await?))
}

/// Moves the leader to another member with as few failed client queries as possible
/// (members). Answers 202 with a `switchover` operation.
#[utoipa::path(
    post, path = "/v1/databases/{database_id}/switchover", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path)), request_body = Switchover,
    responses((status = 202, body = Operation), Errors)
)]
async fn switchover(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Json(input): Json<Switchover>,
) -> ApiResult<Response> {
    require_role(state.store.database_get(&actor, id).await?.role, TenantRole::Member)?;
    Ok(accepted(state.store.database_switchover(&actor, id, input.candidate.as_deref()).await?))
}

/// The database's events (failovers, switchovers), newest first.
#[utoipa::path(
    get, path = "/v1/databases/{database_id}/events", tag = "databases", security(("bearer" = [])),
    params(("database_id" = DatabaseId, Path), PageParams), responses((status = 200, body = DatabaseEventPage), Errors)
)]
async fn event_list(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<DatabaseId>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<DatabaseEventPage>> {
    state.store.database_get(&actor, id).await?;
    Ok(Json(DatabaseEventPage::new(state.store.database_events(id, &page.validate()?).await?)))
}
