//! The one mapping from the domain error to HTTP, for the public API and the agent API alike:
//! problem+json (RFC 9457) with a stable `type` per kind. Internal detail is logged here and never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pgplane_core::{Error, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer (RFC 9457 problem details).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:pgplane:problem:not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For conflicts: a stable code such as `name_taken` or `operation_in_progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For a used-up quota: when the next request may succeed (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_allowed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// For validation failures: one entry per invalid field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn problem(status: StatusCode, slug: &str, title: &str, detail: String) -> Problem {
    Problem {
        kind: format!("urn:pgplane:problem:{slug}"),
        title: title.to_string(),
        status: status.as_u16(),
        detail,
        code: None,
        next_allowed_at: None,
        errors: Vec::new(),
    }
}

impl ApiError {
    pub fn to_problem(&self) -> Problem {
        match &self.0 {
            Error::NotFound { kind } => {
                problem(StatusCode::NOT_FOUND, "not-found", "Not found", format!("{kind} not found"))
            }
            Error::Validation { errors } => Problem {
                errors: errors.clone(),
                ..problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation",
                    "Invalid input",
                    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "),
                )
            },
            Error::BadRequest { message } => {
                problem(StatusCode::BAD_REQUEST, "bad-request", "Bad request", message.clone())
            }
            Error::Conflict { code, message } => Problem {
                code: Some((*code).to_string()),
                ..problem(StatusCode::CONFLICT, "conflict", "Conflict", message.clone())
            },
            Error::Forbidden { message } => problem(StatusCode::FORBIDDEN, "forbidden", "Forbidden", message.clone()),
            Error::Unauthorized { message } => {
                problem(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", message.clone())
            }
            Error::RateLimited { retry_after_secs } => problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("rate limit exceeded for this token; retry in {retry_after_secs} s"),
            ),
            Error::QuotaExceeded { code, message, next_allowed_at } => Problem {
                code: Some((*code).to_string()),
                next_allowed_at: *next_allowed_at,
                ..problem(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded", "Quota exceeded", message.clone())
            },
            Error::PayloadTooLarge => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                format!("request bodies are limited to {} bytes", crate::BODY_LIMIT),
            ),
            Error::Internal(_) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the server failed; the incident is logged with this response's x-request-id".into(),
            ),
            Error::Unavailable(_) => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "the control-plane database is unavailable; retry shortly".into(),
            ),
        }
    }
}

/// Builds a problem+json response from parts (also used for routing fallbacks).
pub fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(p).unwrap_or_default();
    let mut res = (status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self.0 {
            Error::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            Error::Unavailable(detail) => tracing::warn!(error = %detail, "dependency unavailable"),
            _ => {}
        }
        let mut res = problem_response(&self.to_problem());
        if let Error::RateLimited { retry_after_secs } = self.0 {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let Error::QuotaExceeded { next_allowed_at: Some(at), .. } = self.0 {
            let secs = (at - chrono::Utc::now()).num_seconds().max(1) as u64;
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

pub async fn not_found_fallback() -> Response {
    problem_response(&problem(StatusCode::NOT_FOUND, "not-found", "Not found", "no such endpoint".into()))
}

pub async fn method_not_allowed_fallback() -> Response {
    problem_response(&problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not accept this method".into(),
    ))
}
