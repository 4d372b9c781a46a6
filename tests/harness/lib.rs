//! Test harness: a real PostgreSQL server per test process (started here unless
//! `PGPLANE_TEST_DATABASE_URL` names one), a fresh migrated control-plane database per
//! test, and the API served on a loopback port, driven over real HTTP.

pub mod data_plane;
pub mod fake_agent;

use anyhow::Result;
use pgplane_api::{ApiConfig, AppState, JwtKeys};
use pgplane_core::model::{CreateUser, PlatformRole};
use pgplane_localpg::{find_bindir, LocalPg};
use pgplane_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::Connection;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The server-level URL (any database) tests create their databases on.
fn server_url() -> &'static str {
    static SERVER: OnceLock<(Option<LocalPg>, String)> = OnceLock::new();
    &SERVER
        .get_or_init(|| match std::env::var("PGPLANE_TEST_DATABASE_URL") {
            Ok(url) => (None, url),
            Err(_) => {
                let bindir = find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(std::path::Path::new))
                    .expect("PostgreSQL binaries for the tests");
                let pg = LocalPg::temporary(&bindir).expect("starting a PostgreSQL for the tests");
                let url = pg.url("postgres");
                (Some(pg), url)
            }
        })
        .1
}

/// Replaces the database name of a URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((url, None));
    let base = &base[..base.rfind('/').expect("URL with a path")];
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh, migrated control-plane database; returns its URL.
pub async fn fresh_database() -> Result<String> {
    let server = server_url();
    let name = format!("pgplane_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    conn.close().await?;
    let url = with_database(server, &name);
    Store::connect(&url, 2).await?.migrate().await?;
    Ok(url)
}

/// The API running against a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Store,
    pub db_url: String,
    pub http: reqwest::Client,
    operator: Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    scheduler_stop: Option<tokio::sync::watch::Sender<bool>>,
    /// The local backup storage the API serves downloads from (removed with the app).
    pub backup_root: std::path::PathBuf,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.scheduler_stop.take() {
            let _ = tx.send(true);
        }
        let _ = std::fs::remove_dir_all(&self.backup_root);
    }
}

/// Test schedulers count an agent lost after this long without news (fake agents poll every
/// few seconds; real ones heartbeat every 5 s).
pub const AGENT_LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(12);

/// The bootstrap token test schedulers accept.
pub const AGENT_BOOTSTRAP_TOKEN: &str = "test-bootstrap-token";

/// Starts the API with a generous rate limit.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(ApiConfig { rate_per_second: 10_000, rate_burst: 10_000 }).await
}

pub async fn spawn_app_with(config: ApiConfig) -> TestApp {
    let db_url = fresh_database().await.expect("fresh control-plane database");
    let store = Store::connect(&db_url, 8).await.expect("pool");
    let secret: [u8; 32] = rand_bytes();
    let backup_root = std::env::temp_dir().join(format!("pgplane-test-backups-{}", uuid::Uuid::new_v4().simple()));
    let backups = pgplane_storage::BackupStore::local(backup_root.clone()).expect("local backup storage");
    let state = AppState::new(store.clone(), JwtKeys::from_secret(&secret), &config)
        .with_backup_storage(backups, &secret, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pgplane_api::serve(listener, state, async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut app = TestApp {
        addr,
        store,
        db_url,
        http: http.clone(),
        operator: Client { http, base, bearer: None },
        shutdown: Some(tx),
        scheduler_stop: None,
        backup_root,
    };
    app.operator = app.user_with_role("operator@platform.test", Some(PlatformRole::Operator)).await;
    app
}

fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(16) {
        chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out
}

impl TestApp {
    /// Starts a scheduler on this app's database; returns its agent API's base URL.
    /// It stops with the app (or earlier with `stop_scheduler`).
    pub async fn start_scheduler(&mut self, etcd: pgplane_core::agent::EtcdAccess) -> String {
        self.start_scheduler_with(etcd, None).await
    }

    /// `start_scheduler` with a pool of virtual IPs for databases whose gateways span hosts.
    pub async fn start_scheduler_with(
        &mut self,
        etcd: pgplane_core::agent::EtcdAccess,
        gateway_vips: Option<pgplane_scheduler::config::VipPool>,
    ) -> String {
        self.start_scheduler_config(pgplane_scheduler::config::SchedulerConfig {
            gateway_vips,
            ..scheduler_config(etcd)
        })
        .await
    }

    /// `start_scheduler` with a configuration of the test's own (see `scheduler_config`).
    pub async fn start_scheduler_config(&mut self, config: pgplane_scheduler::config::SchedulerConfig) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind agent API");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(pgplane_scheduler::run::run(self.store.clone(), config, listener, rx));
        self.scheduler_stop = Some(tx);
        base
    }

    pub fn stop_scheduler(&mut self) {
        if let Some(tx) = self.scheduler_stop.take() {
            let _ = tx.send(true);
        }
    }

    /// Polls an operation until it has finished; returns it.
    pub async fn wait_operation(&self, client: &Client, op: &str, timeout: std::time::Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (status, body) = client.get(&format!("/v1/operations/{op}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if ["done", "error", "canceled"].contains(&body["status"].as_str().unwrap_or("")) {
                return body;
            }
            assert!(std::time::Instant::now() < deadline, "operation {op} did not finish in {timeout:?}: {body}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The backup storage the API serves downloads from.
    pub fn backup_store(&self) -> pgplane_storage::BackupStore {
        pgplane_storage::BackupStore::local(self.backup_root.clone()).expect("local backup storage")
    }

    /// A backup row of `database` in `status`, as if a backup workflow had written it; a `done`
    /// one gets `data` as its object in `backup_store`. Returns its id.
    pub async fn stored_backup(&self, database: &str, status: &str, data: &[u8]) -> String {
        let database_id: pgplane_core::ids::DatabaseId = database.parse().expect("database id");
        let id = pgplane_core::ids::BackupId::new();
        let key = pgplane_core::agent::BackupLocation::of(database_id, id).key;
        let (size, sha256) = if status == "done" {
            let up = self.backup_store().upload(&key, data).await.expect("upload");
            (Some(up.size as i64), Some(up.sha256))
        } else {
            (None, None)
        };
        sqlx::query(
            "INSERT INTO backups (id, tenant_id, database_id, method, status, object_key, size_bytes, sha256, \
             started_at, finished_at) \
             SELECT $1, tenant_id, id, 'manual', $3, $4, $5, $6, '2026-11-28T10:42:07Z', now() FROM databases WHERE id = $2",
        )
        .bind(id)
        .bind(database_id)
        .bind(status)
        .bind(&key)
        .bind(size)
        .bind(sha256)
        .execute(self.store.pool())
        .await
        .expect("backup row");
        id.to_string()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> Client {
        Client { http: self.http.clone(), base: self.base(), bearer: None }
    }

    /// A client authenticated as the platform operator.
    pub fn operator(&self) -> Client {
        self.operator.clone()
    }

    /// A new user (created through the store), holding an access token.
    pub async fn user_with_role(&self, email: &str, role: Option<PlatformRole>) -> Client {
        let user = self
            .store
            .user_create(&CreateUser {
                email: email.into(),
                name: email.split('@').next().unwrap_or("user").into(),
                platform_role: role,
            })
            .await
            .expect("user");
        let (_, secret) = self.store.token_create(user.id, "test", None).await.expect("token");
        self.client_for_api_token(&secret).await
    }

    pub async fn user(&self, email: &str) -> Client {
        self.user_with_role(email, None).await
    }

    /// Exchanges an API token for an access token.
    pub async fn client_for_api_token(&self, api_token: &str) -> Client {
        let (status, body) =
            self.anonymous().post("/v1/auth/token", &serde_json::json!({ "api_token": api_token })).await;
        assert_eq!(status, StatusCode::OK, "token exchange: {body}");
        Client {
            http: self.http.clone(),
            base: self.base(),
            bearer: Some(body["access_token"].as_str().expect("access_token").to_string()),
        }
    }

    /// A digest of every control-plane row: equal digests mean nothing changed.
    pub async fn fingerprint(&self) -> String {
        let mut parts = Vec::new();
        for table in [
            "users",
            "api_tokens",
            "tenants",
            "memberships",
            "tenant_plan_grants",
            "apps",
            "addons",
            "addon_periods",
            "databases",
            "operations",
            "backups",
            "plans",
        ] {
            let digest: Option<String> =
                sqlx::query_scalar(&format!("SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"))
                    .fetch_one(self.store.pool())
                    .await
                    .expect("fingerprint");
            parts.push(format!("{table}:{}", digest.unwrap_or_default()));
        }
        parts.join(",")
    }

    /// A tenant owned by `owner` with one app; returns (tenant id, app id).
    pub async fn tenant_with_app(&self, owner: &Client, name: &str) -> (String, String) {
        let (s, tenant) = owner.post("/v1/tenants", &serde_json::json!({ "name": name })).await;
        assert_eq!(s, StatusCode::CREATED, "{tenant}");
        let tid = tenant["id"].as_str().expect("id").to_string();
        let (s, app) = owner.post(&format!("/v1/tenants/{tid}/apps"), &serde_json::json!({ "name": "web" })).await;
        assert_eq!(s, StatusCode::CREATED, "{app}");
        (tid, app["id"].as_str().expect("id").to_string())
    }
}

/// An HTTP client of the API, optionally holding an access token.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub bearer: Option<String>,
}

/// A whole answer: status, headers and JSON body (Null when empty).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            rb = rb.bearer_auth(b);
        }
        rb
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        let res = rb.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer { status, headers, body }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let a = self.send(rb).await;
        (a.status, a.body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn put(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::PUT, path, None).await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }
}

/// Asserts a problem+json answer of the given status and `type` suffix.
#[track_caller]
pub fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, kind: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["type"], format!("urn:pgplane:problem:{kind}"), "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
}

/// A window of `size` loopback ports for a test's agents, distinct from every other window
/// handed out in this process and unlikely to meet another test process's (or the kernel's
/// ephemeral range, which starts at 32768).
pub fn port_window(size: i32) -> (i32, i32) {
    static NEXT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    let offset = NEXT.fetch_add(size, std::sync::atomic::Ordering::SeqCst) % 500;
    let min = 20_000 + (std::process::id() % 24) as i32 * 500 + offset;
    (min, min + size - 1)
}

/// etcd settings for scheduler tests whose fake agents never reach etcd.
pub fn unused_etcd() -> pgplane_core::agent::EtcdAccess {
    pgplane_core::agent::EtcdAccess {
        endpoints: vec!["127.0.0.1:2379".into()],
        protocol: "http".into(),
        ca_pem: None,
        username: None,
        password: None,
    }
}

/// Registers a fake agent on `host` with the scheduler's agent API (no capabilities: placement
/// takes it as able); returns its credential.
/// The scheduler's configuration as tests run it: `etcd`, the tests' bootstrap token, no VIP
/// pool, the platform's graces.
pub fn scheduler_config(etcd: pgplane_core::agent::EtcdAccess) -> pgplane_scheduler::config::SchedulerConfig {
    pgplane_scheduler::config::SchedulerConfig {
        etcd,
        bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
        gateway_vips: None,
        not_streaming_grace: pgplane_scheduler::truth::NOT_STREAMING_GRACE,
        agent_lost_after: AGENT_LOST_AFTER,
        backup_storage: None,
    }
}

pub async fn register_fake_agent(http: &reqwest::Client, agent_api: &str, name: &str, host: &str) -> String {
    let reg: Value = http
        .post(format!("{agent_api}/agent/v1/register"))
        .json(&serde_json::json!({
            "bootstrap_token": AGENT_BOOTSTRAP_TOKEN, "name": name, "host": host,
            "memory_mb": 8192, "disk_gb": 500, "port_min": 20000, "port_max": 20100
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reg["credential"].as_str().expect("credential").to_string()
}
