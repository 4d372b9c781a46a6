//! Extractors whose rejections are problem+json like every other error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use pgplane_core::{Error, FieldError};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// JSON body; malformed or oversized bodies answer 400/413 problems. Every body is a JSON
/// object, as the document says: serde would also read a struct from an array.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        let invalid =
            |message: String| ApiError(Error::Validation { errors: vec![FieldError::new("body", "invalid", message)] });
        if !value.is_object() {
            return Err(invalid("the body must be a JSON object".into()));
        }
        serde_json::from_value(value).map(Json).map_err(|e| invalid(format!("the body does not fit: {e}")))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters; a malformed id answers 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query string; unknown shapes answer 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError(Error::Validation {
                errors: vec![pgplane_core::FieldError::new("body", "invalid", e.body_text())],
            }),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError(Error::bad_request("send the body as JSON with Content-Type: application/json"))
            }
            JsonRejection::BytesRejection(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError(Error::PayloadTooLarge)
            }
            other => ApiError(Error::bad_request(other.body_text())),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError(Error::bad_request(format!("invalid path: {}", r.body_text())))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(Error::bad_request(format!("invalid query string: {}", r.body_text())))
    }
}
