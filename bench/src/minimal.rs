//! The reference: the least an endpoint serving GET /databases/{id} has to do. Plain axum,
//! a sqlx pool, an HS256 check of the bearer token, the same single-row SELECT as
//! `Store::database_get`, and the row as JSON. No middleware, no error bodies.

use axum::extract::{Path, State};
use axum::http::{header::AUTHORIZATION, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The same statement as `Store::database_get` (columns, membership join, filters).
const SELECT: &str = "SELECT d.id, d.tenant_id, d.app_id, d.addon_id, d.name, d.plan_id, d.version, d.status, \
     d.force_tls, d.internet_exposure, d.backup_hour, d.endpoint_host, d.endpoint_port, d.created_at, d.updated_at, \
     m.role FROM databases d \
     LEFT JOIN memberships m ON m.tenant_id = d.tenant_id AND m.user_id = $2 \
     WHERE d.id = $1 AND d.status <> 'deleted' AND (m.role IS NOT NULL OR $3)";

#[derive(Deserialize)]
struct Claims {
    sub: Uuid,
}

#[derive(Serialize, sqlx::FromRow)]
struct Row {
    id: Uuid,
    tenant_id: Uuid,
    app_id: Uuid,
    addon_id: Uuid,
    name: String,
    plan_id: String,
    version: String,
    status: String,
    force_tls: bool,
    internet_exposure: bool,
    backup_hour: Option<i32>,
    endpoint_host: Option<String>,
    endpoint_port: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    role: Option<String>,
}

struct Inner {
    pool: PgPool,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Clone)]
struct Minimal(Arc<Inner>);

pub fn app(pool: PgPool, secret: &[u8]) -> Router {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let state = Minimal(Arc::new(Inner { pool, key: DecodingKey::from_secret(secret), validation }));
    Router::new().route("/databases/{id}", get(database_get)).with_state(state)
}

async fn database_get(
    State(Minimal(s)): State<Minimal>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Json<Row>, StatusCode> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims =
        jsonwebtoken::decode::<Claims>(token, &s.key, &s.validation).map_err(|_| StatusCode::UNAUTHORIZED)?.claims;
    let row: Option<Row> = sqlx::query_as(SELECT)
        .bind(id)
        .bind(claims.sub)
        .bind(false)
        .fetch_optional(&s.pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    row.map(Json).ok_or(StatusCode::NOT_FOUND)
}
