//! A whole pgplane made of the real binaries, for crash tests: a control-plane PostgreSQL and an
//! etcd owned by the test, then `pgplane api`, `pgplane scheduler` and `pgplane agent` as child
//! processes the test can kill -9 and start again. Dropping it leaves nothing running.

#![allow(dead_code)]

pub mod checks;
pub mod procs;
pub mod up;

use pgplane_agent::LocalEtcd;
use pgplane_localpg::{find_bindir, LocalPg};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A window of 50 ports per test binary, below the ephemeral range and apart from other tests'.
pub fn port_window(test: u16) -> u16 {
    26000 + (std::process::id() % 60) as u16 * 100 + test * 50
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `pgplane` subcommand run as a child, its stderr appended to a log file across restarts.
pub struct Proc {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(args: Vec<String>, log: PathBuf) -> Self {
        let mut p = Proc { args, log, child: None };
        p.start();
        p
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.args[0]);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgplane"))
            .args(&self.args)
            .env_remove("PGPLANE_DATABASE_URL")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgplane");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The log's lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Removes the test's folder last (declared last in `Plane`).
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Plane {
    pub agent: Proc,
    pub scheduler: Proc,
    pub api: Proc,
    pub etcd: LocalEtcd,
    pub pool: sqlx::PgPool,
    pg: LocalPg,
    pub dir: PathBuf,
    /// The agent's folder: `<root>/<database id>/` holds each database.
    pub root: PathBuf,
    base: String,
    http: reqwest::Client,
    token: String,
    pub app: String,
    folder: Folder,
}

impl Plane {
    /// Starts everything; the agent offers ports `[port_min, port_min + 49]`.
    pub async fn start(port_min: u16) -> Plane {
        // Short: PostgreSQL's socket path inside it must stay under 107 bytes.
        let dir = std::env::temp_dir().join(format!("pgc-{}-{}", std::process::id(), port_min));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let folder = Folder(dir.clone());
        let bindir = find_bindir(None).expect("PostgreSQL binaries");
        let pg = LocalPg::temporary(&bindir).expect("control-plane PostgreSQL");
        let etcd = LocalEtcd::start(&dir.join("etcd")).expect("etcd");
        let url = pg.url("postgres");
        let out = Command::new(env!("CARGO_BIN_EXE_pgplane"))
            .args(["bootstrap", "--database-url", &url])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pgplane bootstrap failed");
        let api_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let (api_port, agent_api) = (free_port(), format!("127.0.0.1:{}", free_port()));
        let s = |v: &str| v.to_string();
        let path = |p: PathBuf| p.display().to_string();
        let api = Proc::new(
            vec![s("api"), s("--database-url"), url.clone(), s("--listen"), format!("127.0.0.1:{api_port}")]
                .into_iter()
                .chain([s("--jwt-secret"), "x".repeat(40)])
                .collect(),
            dir.join("api.log"),
        );
        let bootstrap = "crash-test-bootstrap-token";
        // Backups go to a local folder both the agent and the scheduler are given.
        let storage = dir.join("backup-storage.json");
        let storage_json = json!({ "kind": "local", "root": dir.join("backups") });
        std::fs::write(&storage, storage_json.to_string()).unwrap();
        let scheduler = Proc::new(
            vec![s("scheduler"), s("--database-url"), url.clone(), s("--agent-listen"), agent_api.clone()]
                .into_iter()
                .chain([s("--agent-bootstrap-token"), s(bootstrap), s("--etcd-endpoints"), etcd.endpoint()])
                .chain([s("--etcd-ca-file"), path(etcd.ca_file()), s("--etcd-root-password-file")])
                .chain([path(etcd.root_password_file())])
                .chain([s("--backup-storage"), path(storage.clone())])
                .collect(),
            dir.join("scheduler.log"),
        );
        let root = dir.join("a");
        let agent = Proc::new(
            [
                "agent",
                "--scheduler-url",
                &format!("http://{agent_api}"),
                "--bootstrap-token",
                bootstrap,
                "--name",
                "crash-agent",
                "--memory-mb",
                "65536",
                "--port-min",
                &port_min.to_string(),
                "--port-max",
                &(port_min + 49).to_string(),
                "--root",
                root.to_str().unwrap(),
                "--backup-storage",
                storage.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
            dir.join("agent.log"),
        );
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
        // The agent has registered: placement finds it at the first try.
        let deadline = Instant::now() + Duration::from_secs(30);
        while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM agents").fetch_one(&pool).await.unwrap() == 0 {
            assert!(Instant::now() < deadline, "the agent did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let base = format!("http://127.0.0.1:{api_port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "the API did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = up::exchange(&base, &api_token).await.expect("access token");
        let mut plane =
            Plane { agent, scheduler, api, etcd, pool, pg, dir, root, base, http, token, app: String::new(), folder };
        let (s, tenant) = plane.call(Method::POST, "/v1/tenants", Some(json!({ "name": "Crash" }))).await;
        assert_eq!(s, StatusCode::CREATED, "{tenant}");
        let path = format!("/v1/tenants/{}/apps", tenant["id"].as_str().unwrap());
        let (s, app) = plane.call(Method::POST, &path, Some(json!({ "name": "web" }))).await;
        assert_eq!(s, StatusCode::CREATED, "{app}");
        plane.app = app["id"].as_str().unwrap().to_string();
        plane
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("the API answers");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a Starter database; returns (database id, operation id).
    pub async fn create_database(&self, name: &str) -> (String, String) {
        let body = json!({ "name": name, "plan": "starter-512" });
        let (s, op) = self.call(Method::POST, &format!("/v1/apps/{}/databases", self.app), Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        (op["database_id"].as_str().unwrap().to_string(), op["id"].as_str().unwrap().to_string())
    }

    /// DELETEs a database; returns the operation id.
    pub async fn delete_database(&self, db: &str) -> String {
        let (s, op) = self.call(Method::DELETE, &format!("/v1/databases/{db}"), None).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        op["id"].as_str().unwrap().to_string()
    }

    /// Waits until the operation has finished and asserts it is `done`.
    pub async fn wait_done(&self, op: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let (s, body) = self.call(Method::GET, &format!("/v1/operations/{op}"), None).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            match body["status"].as_str() {
                Some("done") => return t0.elapsed(),
                Some("error" | "canceled") => panic!("operation {op} failed: {body}"),
                _ => assert!(t0.elapsed() < timeout, "operation {op} not done within {timeout:?}: {body}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A psql URL through the database's gateway, TLS verified against its CA.
    pub async fn url(&self, db: &str) -> String {
        let (s, conn) = self.call(Method::GET, &format!("/v1/databases/{db}/connection"), None).await;
        assert_eq!(s, StatusCode::OK, "{conn}");
        let ca = self.dir.join(format!("{db}.ca.pem"));
        std::fs::write(&ca, conn["ca_pem"].as_str().unwrap()).unwrap();
        let url = conn["url"].as_str().unwrap();
        format!(
            "{}&connect_timeout=5",
            url.replace("sslmode=verify-full", &format!("sslmode=verify-full&sslrootcert={}", ca.display()))
        )
    }

    pub fn database_dir(&self, db: &str) -> PathBuf {
        self.root.join(db)
    }

    /// The agent's log lines that contain `needle`.
    pub fn agent_log_matching(&self, needle: &str) -> Vec<String> {
        self.agent.log_lines().into_iter().filter(|l| l.contains(needle)).collect()
    }

    /// The local backup storage's folder.
    pub fn backups_dir(&self) -> PathBuf {
        self.dir.join("backups")
    }

    pub fn pg_dir(&self) -> &Path {
        self.pg.dir()
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.agent.kill9();
        self.scheduler.kill9();
        self.api.kill9();
        procs::kill_all_under(&self.dir);
        // The logs' ends when a test failed; whole with PGPLANE_TEST_LOGS=1.
        let whole = std::env::var_os("PGPLANE_TEST_LOGS").is_some();
        if std::thread::panicking() || whole {
            for name in ["agent", "scheduler", "api"] {
                let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = if whole { 0 } else { lines.len().saturating_sub(40) };
                eprintln!("--- {name}.log ---\n{}", lines[from..].join("\n"));
            }
        }
    }
}
