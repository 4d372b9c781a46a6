//! The two servers under test, in this process on loopback ports, and the checks that they
//! answer correctly before any load is sent.

use anyhow::{bail, ensure, Context, Result};
use pgplane_api::{ApiConfig, AppState, JwtKeys};
use pgplane_store::Store;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::fixture::{self, Fixture};
use crate::minimal;

/// Stops an in-process server when dropped.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task).await.context("server shutdown")???;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.shutdown.is_some() {
            self.task.abort();
        }
    }
}

pub async fn spawn_pgplane(url: &str, secret: &[u8], pool_size: u32) -> Result<Running> {
    let store = Store::connect(url, pool_size).await?;
    // High enough that the per-token limiter never throttles the benchmark (it still runs).
    let config = ApiConfig { rate_per_second: 100_000_000, rate_burst: 100_000_000 };
    let state = AppState::new(store, JwtKeys::from_secret(secret), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(pgplane_api::serve(listener, state, async {
        let _ = rx.await;
    }));
    Ok(Running { addr, shutdown: Some(tx), task })
}

pub async fn spawn_minimal(url: &str, secret: &[u8], pool_size: u32) -> Result<Running> {
    let pool = PgPoolOptions::new().max_connections(pool_size).connect(url).await?;
    let app = minimal::app(pool, secret);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(Running { addr, shutdown: Some(tx), task })
}

pub struct Endpoint {
    pub name: &'static str,
    pub url: String,
    /// Where the plan is in the answer.
    pub plan_field: &'static str,
}

/// POST /v1/auth/token: the API token for an access token (a JWT).
pub async fn exchange(http: &reqwest::Client, addr: SocketAddr, api_token: &str) -> Result<String> {
    let res = http.post(format!("http://{addr}/v1/auth/token")).json(&json!({ "api_token": api_token })).send().await?;
    let status = res.status();
    let body: Value = res.json().await?;
    ensure!(status == reqwest::StatusCode::OK, "token exchange answered {status}: {body}");
    Ok(body["access_token"].as_str().context("no access_token in the exchange's answer")?.to_string())
}

/// Fails loudly unless the endpoint answers 200 with the fixture's row, and 401 without a token.
pub async fn verify(http: &reqwest::Client, e: &Endpoint, bearer: &str, fixture: &Fixture) -> Result<()> {
    let res = http.get(&e.url).bearer_auth(bearer).send().await?;
    let status = res.status();
    let text = res.text().await?;
    if status != reqwest::StatusCode::OK {
        bail!("{} GET {} answered {status}, not 200: {text}", e.name, e.url);
    }
    let body: Value = serde_json::from_str(&text).with_context(|| format!("{} answered non-JSON: {text}", e.name))?;
    let expected = [
        ("id", fixture.database_id.to_string()),
        ("name", fixture::DATABASE_NAME.to_string()),
        (e.plan_field, fixture::PLAN.to_string()),
        ("version", fixture::VERSION.to_string()),
    ];
    for (field, want) in expected {
        if body[field].as_str() != Some(want.as_str()) {
            bail!("{} answered {field} = {}, expected {want:?}; body: {text}", e.name, body[field]);
        }
    }
    let anonymous = http.get(&e.url).send().await?.status();
    ensure!(anonymous == reqwest::StatusCode::UNAUTHORIZED, "{} answered {anonymous} without a token", e.name);
    Ok(())
}
