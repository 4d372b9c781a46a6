//! The one transport-agnostic error. The API maps it to problem+json in exactly one place;
//! the store maps database constraint violations into it. Client-facing messages live here;
//! internal detail stays in `Internal` and is logged, never sent.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One invalid input field, reported with 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer-ish path of the field, e.g. `name` or `settings.backup_hour`.
    pub field: String,
    /// Stable machine code, e.g. `too_long`, `invalid`, `unknown`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), code: code.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource does not exist, or the caller may not know that it exists.
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    /// Input failed validation.
    #[error("invalid input")]
    Validation { errors: Vec<FieldError> },
    /// The request is well-formed but unusable (bad JSON, bad query string, bad path).
    #[error("{message}")]
    BadRequest { message: String },
    /// The request conflicts with the current state of a resource.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The caller is known and may see the resource but lacks the role to do this.
    #[error("{message}")]
    Forbidden { message: String },
    /// Missing, invalid or expired credentials.
    #[error("{message}")]
    Unauthorized { message: String },
    /// Too many requests for this token.
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    /// A quota of the plan is used up for now: another may start at `next_allowed_at` (429, with
    /// `Retry-After`; absent when waiting cannot help).
    #[error("{message}")]
    QuotaExceeded { code: &'static str, message: String, next_allowed_at: Option<chrono::DateTime<chrono::Utc>> },
    /// The request body is larger than the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// Something failed that the client cannot fix; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
    /// A dependency (the control-plane database) is unavailable right now.
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    pub fn not_found(kind: &'static str) -> Self {
        Error::NotFound { kind }
    }
    pub fn invalid(field: &str, code: &str, message: impl Into<String>) -> Self {
        Error::Validation { errors: vec![FieldError::new(field, code, message)] }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict { code, message: message.into() }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden { message: message.into() }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Error::Unauthorized { message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::BadRequest { message: message.into() }
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::Internal(detail.to_string())
    }
}

/// Collects field errors and turns them into one `Error::Validation`.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn check(&mut self, result: Result<(), FieldError>) -> &mut Self {
        if let Err(e) = result {
            self.errors.push(e);
        }
        self
    }
    pub fn push(&mut self, e: FieldError) {
        self.errors.push(e);
    }
    pub fn finish(self) -> Result<(), Error> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation { errors: self.errors })
        }
    }
}
