//! The README's first command, end to end: `pgplane up` on a fresh state folder starts a
//! private PostgreSQL and the API, prints the address and how to get a token; Ctrl-C stops
//! everything it started, databases included; the next `up` keeps the data and runs them again.

mod support;

use pgplane_tests::data_plane::psql;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::procs;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Up {
    child: Child,
    output: Vec<String>,
}

/// Starts `pgplane up` and waits until it says it is up.
fn start(state: &Path, port: u16) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .args(["up", "--state-dir"])
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("PGPLANE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    Up { child, output }
}

/// Ctrl-C, then wait for a clean exit.
fn stop(mut up: Up) {
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

fn postmaster_pid(state: &Path) -> u32 {
    let pidfile = std::fs::read_to_string(state.join("pg/data/postmaster.pid")).expect("postmaster.pid");
    pidfile.lines().next().unwrap().trim().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie has state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

async fn access_token(base: &str, state: &Path) -> String {
    let api_token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    let res: Value = reqwest::Client::new()
        .post(format!("{base}/v1/auth/token"))
        .json(&json!({ "api_token": api_token.trim() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    res["access_token"].as_str().expect("access token").to_string()
}

/// A fresh state folder per test (the tests of this file run at once in one process).
fn state_dir(test: &str) -> PathBuf {
    // Short: a database's PostgreSQL socket path under it must stay under 107 bytes.
    let dir = std::env::temp_dir().join(format!("pgu{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn up_starts_everything_stops_everything_and_keeps_data() {
    let state = state_dir("");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let up = start(&state, port);
    let printed = up.output.join("\n");
    assert!(printed.contains(&format!("http://127.0.0.1:{port}")), "{printed}");
    assert!(printed.contains("/v1/auth/token"), "{printed}");
    let pg = postmaster_pid(&state);
    assert!(alive(pg));
    let token = access_token(&base, &state).await;
    let created: Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(&token)
        .json(&json!({ "name": "Kept across restarts" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant = created["id"].as_str().expect("tenant id").to_string();
    let url = database(&http, &base, &token, &tenant, &state).await;
    assert_eq!(psql(&url, "CREATE TABLE kept AS SELECT 7 AS x; SELECT x FROM kept").await.as_deref(), Ok("7"));
    assert!(!procs::naming(&state.join("agents")).is_empty());
    stop(up);
    assert!(!alive(pg), "the private PostgreSQL outlived pgplane up");
    let left = procs::naming(&state);
    assert!(left.is_empty(), "Patroni, PostgreSQL, HAProxy or etcd of pgplane up outlived it: {left:?}");

    let up = start(&state, port);
    let token = access_token(&base, &state).await;
    let listed: Value =
        http.get(format!("{base}/v1/tenants/{tenant}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["name"], "Kept across restarts");
    // The agents start the database again from what they persisted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(&url, "SELECT x FROM kept").await.as_deref() != Ok("7") {
        assert!(Instant::now() < deadline, "the database did not come back with the next pgplane up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(up);
    let left = procs::naming(&state);
    assert!(left.is_empty(), "processes of pgplane up outlived it: {left:?}");
    let _ = std::fs::remove_dir_all(&state);
}

/// Creates an app and a Starter database in the tenant, waits until it is available and
/// returns a psql URL through its gateway, TLS verified against its CA.
async fn database(http: &reqwest::Client, base: &str, token: &str, tenant: &str, state: &Path) -> String {
    let post = |path: String, body: Value| http.post(format!("{base}{path}")).bearer_auth(token).json(&body).send();
    let app: Value =
        post(format!("/v1/tenants/{tenant}/apps"), json!({ "name": "web" })).await.unwrap().json().await.unwrap();
    let body = json!({ "name": "kept", "plan": "starter-512" });
    let op: Value =
        post(format!("/v1/apps/{}/databases", app["id"].as_str().unwrap()), body).await.unwrap().json().await.unwrap();
    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(token).send();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now: Value =
            get(format!("/v1/operations/{}", op["id"].as_str().unwrap())).await.unwrap().json().await.unwrap();
        match now["status"].as_str() {
            Some("done") => break,
            Some("error" | "canceled") => panic!("creating the database failed: {now}"),
            _ => assert!(Instant::now() < deadline, "the database was not created: {now}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = op["database_id"].as_str().unwrap();
    let conn: Value = get(format!("/v1/databases/{db}/connection")).await.unwrap().json().await.unwrap();
    let ca = state.join("kept-ca.pem");
    std::fs::write(&ca, conn["ca_pem"].as_str().unwrap()).unwrap();
    let verified = format!("sslmode=verify-full&sslrootcert={}&connect_timeout=5", ca.display());
    conn["url"].as_str().unwrap().replace("sslmode=verify-full", &verified)
}

#[test]
fn missing_postgres_binaries_say_what_to_do() {
    let state = state_dir("n");
    let out = Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .args(["up", "--state-dir"])
        .arg(state.join("never"))
        .args(["--pg-bindir", "/nonexistent/bin"])
        .env_remove("PGPLANE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not contain initdb and postgres"), "{err}");
    let _ = std::fs::remove_dir_all(&state);
}
