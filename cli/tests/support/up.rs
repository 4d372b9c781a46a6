//! `pgplane up` as a child process of a test: started on a state folder and free ports, waited
//! for until it prints that it is up, called through its API, stopped with Ctrl-C. Its log goes
//! to `<state>.log`, beside the state folder.

use pgplane_tests::data_plane::psql;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Up {
    pub child: Child,
    pub output: Vec<String>,
    pub log: PathBuf,
    state: PathBuf,
}

/// A test that fails leaves nothing running: `up` gets Ctrl-C (it stops what it started), and
/// whatever still names the state folder after that is killed (the data plane outlives a killed
/// `up` by design, and would hold ports the next test's `up` hands out again).
impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        super::procs::kill_all_under(&self.state);
    }
}

/// A fresh state folder per test (the tests of one file run at once in one process).
pub fn state_dir(test: &str) -> PathBuf {
    // Short: a database's PostgreSQL socket path under it must stay under 107 bytes.
    let dir = std::env::temp_dir().join(format!("pgu{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts `pgplane up` and waits until it says it is up.
pub fn start(state: &Path, port: u16) -> Up {
    let log_path = state.with_extension("log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .args(["up", "--state-dir"])
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{}", super::free_port())])
        .env_remove("PGPLANE_DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn pgplane up");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !output.iter().any(|l: &String| l.contains("Ctrl-C stops everything")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("pgplane up did not come up; it printed: {output:#?}");
            }
        }
    }
    Up { child, output, log: log_path, state: state.to_path_buf() }
}

/// Ctrl-C, then wait for a clean exit.
pub fn stop(mut up: Up) {
    let status = Command::new("kill").args(["-INT", &up.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            assert!(status.success(), "pgplane up exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = up.child.kill();
            panic!("pgplane up did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid in the control-plane PostgreSQL's `postmaster.pid`.
pub fn postmaster_pid(state: &Path) -> u32 {
    super::procs::postmaster(&state.join("pg/data")).expect("postmaster.pid")
}

/// True while `pid` runs (a reaped process has no /proc entry; a zombie has state Z).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

/// An access token for the operator token `up` keeps in the state folder.
pub async fn access_token(base: &str, state: &Path) -> String {
    let api_token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    exchange(base, api_token.trim()).await.expect("access token")
}

/// Exchanges an API token for an access token; `None` when the API refuses it.
pub async fn exchange(base: &str, api_token: &str) -> Option<String> {
    let res: Value = reqwest::Client::new()
        .post(format!("{base}/v1/auth/token"))
        .json(&json!({ "api_token": api_token }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    res["access_token"].as_str().map(str::to_string)
}

/// A tenant with an app; returns the app's id.
pub async fn app(http: &reqwest::Client, base: &str, token: &str, tenant_name: &str) -> (String, String) {
    let post = |path: String, body: Value| http.post(format!("{base}{path}")).bearer_auth(token).json(&body).send();
    let tenant: Value = post("/v1/tenants".into(), json!({ "name": tenant_name })).await.unwrap().json().await.unwrap();
    let tenant = tenant["id"].as_str().expect("tenant id").to_string();
    let app: Value =
        post(format!("/v1/tenants/{tenant}/apps"), json!({ "name": "web" })).await.unwrap().json().await.unwrap();
    (tenant, app["id"].as_str().expect("app id").to_string())
}

/// POSTs a Starter database named `kept` in the app; returns the operation.
pub async fn create_database(http: &reqwest::Client, base: &str, token: &str, app: &str) -> Value {
    let body = json!({ "name": "kept", "plan": "starter-512" });
    let res = http.post(format!("{base}/v1/apps/{app}/databases")).bearer_auth(token).json(&body).send().await;
    res.unwrap().json().await.unwrap()
}

/// The operation's status now (`None` while the API does not answer with one).
pub async fn operation_status(http: &reqwest::Client, base: &str, token: &str, op: &str) -> Option<Value> {
    let res = http.get(format!("{base}/v1/operations/{op}")).bearer_auth(token).send().await.ok()?;
    let now: Value = res.json().await.ok()?;
    now.get("status").is_some().then_some(now)
}

/// Waits until the operation is done (panics if it fails or takes longer than `timeout`).
pub async fn wait_done(http: &reqwest::Client, base: &str, token: &str, op: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = operation_status(http, base, token, op).await;
        match now.as_ref().and_then(|n| n["status"].as_str()) {
            Some("done") => return,
            Some("error" | "canceled") => panic!("the operation failed: {now:?}"),
            _ => assert!(Instant::now() < deadline, "the operation did not end within {timeout:?}: {now:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A psql URL through the database's gateway, TLS verified against its CA.
pub async fn url(http: &reqwest::Client, base: &str, token: &str, db: &str, state: &Path) -> String {
    let res = http.get(format!("{base}/v1/databases/{db}/connection")).bearer_auth(token).send().await;
    let conn: Value = res.unwrap().json().await.unwrap();
    let ca = state.join("kept-ca.pem");
    std::fs::write(&ca, conn["ca_pem"].as_str().unwrap()).unwrap();
    let verified = format!("sslmode=verify-full&sslrootcert={}&connect_timeout=5", ca.display());
    conn["url"].as_str().unwrap().replace("sslmode=verify-full", &verified)
}

/// Creates an app and a Starter database in a new tenant, waits until it is available and
/// returns (tenant id, a psql URL through its gateway).
pub async fn database(http: &reqwest::Client, base: &str, token: &str, state: &Path) -> (String, String) {
    let (tenant, app) = app(http, base, token, "Kept across restarts").await;
    let op = create_database(http, base, token, &app).await;
    wait_done(http, base, token, op["id"].as_str().unwrap(), Duration::from_secs(90)).await;
    (tenant, url(http, base, token, op["database_id"].as_str().unwrap(), state).await)
}

/// Runs `sql` until it answers `expected` (the database may still be starting).
pub async fn eventually_answers(url: &str, sql: &str, expected: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = psql(url, sql).await;
        if got.as_deref() == Ok(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} did not answer {expected} within {timeout:?}: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
