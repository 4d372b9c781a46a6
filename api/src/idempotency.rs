//! `Idempotency-Key` on POST: the first answer is stored and replayed to retries of the
//! same request (same caller, key, method, path and body) for 24 hours. Server errors and
//! 429s are not stored, so a retry runs again.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pgplane_core::Error;
use pgplane_store::idempotency::{Begin, StoredAnswer};
use sha2::{Digest, Sha256};

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::{AppState, BODY_LIMIT};

pub const HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
/// Answers larger than this are not stored (none of ours come close).
const MAX_STORED_ANSWER: usize = 1 << 20;

pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else { return next.run(req).await };
    let Some(auth) = req.extensions().get::<Authenticated>().copied() else { return next.run(req).await };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
        _ => {
            return ApiError(Error::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters"))
                .into_response()
        }
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return ApiError(Error::PayloadTooLarge).into_response(),
    };
    let path = parts.uri.path().to_string();
    let hash =
        Sha256::new().chain_update(parts.uri.query().unwrap_or("")).chain_update([0]).chain_update(&bytes).finalize();
    let user = auth.actor.user_id;
    match state.store.idempotency_begin(user, &key, parts.method.as_str(), &path, &hash).await {
        Err(e) => return ApiError(e).into_response(),
        Ok(Begin::Replay { status, content_type, location, body }) => {
            let mut res = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
            let headers = res.headers_mut();
            for (name, value) in [(header::CONTENT_TYPE, content_type), (header::LOCATION, location)] {
                if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    headers.insert(name, v);
                }
            }
            headers.insert(REPLAYED, HeaderValue::from_static("true"));
            return res;
        }
        Ok(Begin::InFlight) => {
            return ApiError(Error::conflict(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running",
            ))
            .into_response()
        }
        Ok(Begin::Mismatch) => {
            return ApiError(Error::invalid(
                "Idempotency-Key",
                "reused",
                "this Idempotency-Key was used for a different request; use a new key",
            ))
            .into_response()
        }
        Ok(Begin::New) => {}
    }
    let res = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = res.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        if let Err(e) = state.store.idempotency_release(user, &key).await {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
        return res;
    }
    let (parts, body) = res.into_parts();
    let bytes = match to_bytes(body, MAX_STORED_ANSWER).await {
        Ok(b) => b,
        Err(e) => return ApiError(Error::internal(format!("buffering the answer: {e}"))).into_response(),
    };
    let text = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let answer = StoredAnswer {
        status: status.as_u16(),
        content_type: text(header::CONTENT_TYPE),
        location: text(header::LOCATION),
        body: &bytes,
    };
    if let Err(e) = state.store.idempotency_finish(user, &key, &answer).await {
        // The work is done and committed; only the replay record is missing.
        tracing::warn!(error = %e, "could not store an idempotent answer");
    }
    Response::from_parts(parts, Body::from(bytes))
}
