//! Authentication: long-lived API tokens are exchanged for short-lived HS256 JWTs, which
//! every other call carries as a bearer token. A middleware verifies the JWT once per
//! request, applies the token's rate limit and leaves the `Actor` in the request.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pgplane_core::ids::{TokenId, UserId};
use pgplane_core::model::{AccessToken, PlatformRole, TenantRole};
use pgplane_core::Error;
use pgplane_store::tokens::TokenOwner;
use pgplane_store::Actor;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::AppState;

/// Lifetime of an access token.
pub const ACCESS_TOKEN_SECS: i64 = 3600;
const ISSUER: &str = "pgplane";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user.
    sub: UserId,
    /// The API token it was minted from.
    tok: TokenId,
    /// Platform role, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prl: Option<PlatformRole>,
    iss: String,
    iat: i64,
    exp: i64,
}

/// Signing and verification keys for access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        JwtKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    pub fn issue(&self, owner: &TokenOwner) -> Result<AccessToken, Error> {
        let now = Utc::now();
        let claims = Claims {
            sub: owner.user_id,
            tok: owner.token_id,
            prl: owner.platform_role,
            iss: ISSUER.into(),
            iat: now.timestamp(),
            exp: now.timestamp() + ACCESS_TOKEN_SECS,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(Error::internal)?;
        Ok(AccessToken {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: ACCESS_TOKEN_SECS,
            expires_at: now + chrono::Duration::seconds(ACCESS_TOKEN_SECS),
        })
    }

    fn verify(&self, token: &str) -> Result<Claims, Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::unauthorized("the access token has expired; exchange your API token for a new one")
                }
                _ => Error::unauthorized("the access token is invalid"),
            }
        })
    }
}

/// The verified caller, left in the request's extensions by `authenticate`.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub actor: Actor,
    pub token_id: TokenId,
}

/// Why a sent bearer token was not accepted; the `Auth` extractor reports it.
#[derive(Debug, Clone)]
struct AuthFailure(String);

/// Middleware: verifies a bearer token when one is sent and applies its rate limit.
/// Requests without a valid one go on (public endpoints such as the token exchange must
/// work even when a client still sends its expired token); handlers that need a caller
/// take the `Auth` extractor, which answers 401 with the reason.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(value) = req.headers().get(AUTHORIZATION) {
        let verified = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .ok_or_else(|| Error::unauthorized("use Authorization: Bearer <access token>"))
            .and_then(|(_, token)| state.jwt.verify(token.trim()));
        match verified {
            Ok(claims) => {
                if let Err(retry_after_secs) = state.rate_limiter.check(claims.tok) {
                    return ApiError(Error::RateLimited { retry_after_secs }).into_response();
                }
                let actor = Actor { user_id: claims.sub, platform_role: claims.prl };
                tracing::Span::current().record("user_id", tracing::field::display(claims.sub));
                req.extensions_mut().insert(Authenticated { actor, token_id: claims.tok });
            }
            Err(e) => {
                req.extensions_mut().insert(AuthFailure(e.to_string()));
            }
        }
    }
    next.run(req).await
}

/// Extractor for handlers that need an authenticated caller.
pub struct Auth(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(a) = parts.extensions.get::<Authenticated>() {
            return Ok(Auth(a.actor));
        }
        let reason = match parts.extensions.get::<AuthFailure>() {
            Some(AuthFailure(reason)) => reason.clone(),
            None => "send Authorization: Bearer <access token>; get one from POST /v1/auth/token".into(),
        };
        Err(ApiError(Error::unauthorized(reason)))
    }
}

/// Refuses with 403 unless `role` grants at least `needed`.
pub fn require_role(role: TenantRole, needed: TenantRole) -> Result<(), Error> {
    if role.at_least(needed) {
        Ok(())
    } else {
        Err(Error::forbidden(format!("your role in this tenant ({role}) cannot do this; it needs {needed} or higher")))
    }
}

/// Refuses with 403 unless the caller has this platform role (operators pass every check).
pub fn require_platform(actor: &Actor, role: PlatformRole) -> Result<(), Error> {
    if actor.platform_role == Some(role) || actor.is_operator() {
        Ok(())
    } else {
        Err(Error::forbidden(format!("this needs the platform role {role}")))
    }
}
