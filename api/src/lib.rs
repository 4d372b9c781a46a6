//! pgplane's public REST API. Handlers are thin: they authenticate, validate, check the
//! caller's role and call the store; errors become problem+json in `error` (from
//! `pgplane-http`, which the scheduler's agent API shares). The OpenAPI document is generated
//! from the handlers' annotations (`openapi()`).

pub mod auth;
mod idempotency;
pub mod links;
pub mod openapi;
mod range;
pub mod ratelimit;
mod routes;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::Router;
use pgplane_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use auth::JwtKeys;
use links::LinkSigner;
pub use openapi::openapi;
use pgplane_storage::BackupStore;
use ratelimit::RateLimiter;
pub use routes::SHA256_HEADER;

/// problem+json errors and extractors, shared with the scheduler's agent API.
pub use pgplane_http::{error, extract, BODY_LIMIT};
pub const REQUEST_ID: &str = "x-request-id";

/// Tunables of the API process.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per second allowed per API token (sustained).
    pub rate_per_second: u32,
    /// Requests a token may send at once before the sustained rate applies.
    pub rate_burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { rate_per_second: 50, rate_burst: 200 }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub jwt: Arc<JwtKeys>,
    pub rate_limiter: Arc<RateLimiter>,
    /// Where backups are read for downloads, and how their links are signed (`None`: this API
    /// was given no backup storage, and downloads fail with a logged internal error).
    pub downloads: Option<Arc<Downloads>>,
}

/// What backup downloads need: the backup storage the agents write to, the signer of download
/// links, and the API's address as the platform's clients reach it (the links name it).
#[derive(Debug)]
pub struct Downloads {
    pub storage: BackupStore,
    pub links: LinkSigner,
    /// E.g. `https://api.example.com`; without it, links name the `Host` the request was sent to.
    pub public_url: Option<String>,
}

impl AppState {
    pub fn new(store: Store, jwt: JwtKeys, config: &ApiConfig) -> Self {
        AppState {
            store,
            jwt: Arc::new(jwt),
            rate_limiter: Arc::new(RateLimiter::new(config.rate_per_second, config.rate_burst)),
            downloads: None,
        }
    }

    /// Serves backup downloads from `storage`, signing links with the key derived from the
    /// access-token secret `jwt_secret` (see `links`).
    pub fn with_backup_storage(mut self, storage: BackupStore, jwt_secret: &[u8], public_url: Option<String>) -> Self {
        let public_url = public_url.map(|u| u.trim_end_matches('/').to_string());
        self.downloads = Some(Arc::new(Downloads { storage, links: LinkSigner::derive(jwt_secret), public_url }));
        self
    }
}

/// The whole HTTP application: routes, OpenAPI document, middleware.
pub fn app(state: AppState) -> Router {
    let (router, mut doc) = routes::router().split_for_parts();
    openapi::finish(&mut doc);
    let doc = Arc::new(doc);
    let request_id = HeaderName::from_static(REQUEST_ID);
    router
        .route("/v1/openapi.json", axum::routing::get(move || async move { axum::Json(doc.as_ref().clone()) }))
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request<_>| {
                            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id, user_id = tracing::field::Empty)
                        })
                        .on_request(())
                        .on_response(|res: &axum::response::Response, latency: Duration, _: &Span| {
                            tracing::info!(status = res.status().as_u16(), latency_us = latency.as_micros() as u64, "answered");
                        }),
                )
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(DefaultBodyLimit::max(BODY_LIMIT))
                .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
                .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::idempotency)),
        )
        .with_state(state)
}

/// Serves the API until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
