//! Routes, one module per resource. `routes!` registers a handler and its OpenAPI
//! operation together, so the document cannot forget an endpoint.

mod agents;
mod apps;
mod backup_downloads;
pub use backup_downloads::SHA256_HEADER;
mod backups;
mod billing;
mod config;
mod databases;
mod jobs;
mod plans;
mod session;
mod system;
mod tenants;
mod timers;
mod users;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pgplane_core::model::Operation;
use serde::Serialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::openapi::ApiDoc;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(system::router())
        .merge(session::router())
        .merge(plans::router())
        .merge(users::router())
        .merge(tenants::router())
        .merge(apps::router())
        .merge(databases::router())
        .merge(backups::router())
        .merge(backup_downloads::router())
        .merge(config::router())
        .merge(billing::router())
        .merge(jobs::router())
        .merge(agents::router())
        .merge(timers::router());
    crate::openapi::declare_body_limit(router.get_openapi_mut());
    router
}

/// 201, with a Location header when the new resource can be fetched on its own.
fn created<T: Serialize>(location: Option<String>, body: T) -> Response {
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// 202 with the operation, which the Location header points to.
fn accepted(op: Operation) -> Response {
    let mut res = (StatusCode::ACCEPTED, axum::Json(&op)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/operations/{}", op.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}
