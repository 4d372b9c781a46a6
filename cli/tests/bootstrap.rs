//! Operator recovery and logs, with the real binary: `pgplane bootstrap --state-dir` makes a
//! new operator token on `up`'s private PostgreSQL, running or not (then started for the moment
//! and stopped again), and the API accepts it; logs written to a pipe carry no colour codes.

mod support;

use pgplane_localpg::{find_bindir, running_url, Durability, LocalPg};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::up::{exchange, state_dir};

/// `pgplane bootstrap --state-dir STATE`; the token it prints.
fn bootstrap(state: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .args(["bootstrap", "--state-dir"])
        .arg(state)
        .env_remove("PGPLANE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "pgplane bootstrap failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("pgp_"), "{token}");
    token
}

/// `pgplane api` on `url`, its stderr to a pipe read by a thread; returns once it listens.
fn api(url: &str, port: u16) -> (Child, Arc<Mutex<Vec<u8>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .args(["api", "--database-url", url, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", &"s".repeat(40)])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logged = Arc::new(Mutex::new(Vec::new()));
    let sink = logged.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&logged.lock().unwrap()).contains("API listening") {
        assert!(Instant::now() < deadline, "pgplane api did not listen: {:?}", child.try_wait());
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, logged)
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_makes_an_operator_token_from_the_up_state_folder() {
    let state = state_dir("b");
    let pg_dir = state.join("pg");
    let bindir = find_bindir(None).unwrap();
    // The private PostgreSQL as `up` leaves it: made once, not running now.
    drop(LocalPg::start(&pg_dir, &bindir, Durability::Durable).unwrap());
    let while_stopped = bootstrap(&state);
    assert_eq!(running_url(&pg_dir, "pgplane").unwrap(), None, "bootstrap left the private PostgreSQL running");

    // As while `up` runs: bootstrap connects to the running server.
    let pg = LocalPg::start(&pg_dir, &bindir, Durability::Durable).unwrap();
    let while_running = bootstrap(&state);
    assert!(running_url(&pg_dir, "pgplane").unwrap().is_some());

    let port = support::free_port();
    let (mut api, logged) = api(&pg.url("pgplane"), port);
    let base = format!("http://127.0.0.1:{port}");
    for token in [&while_stopped, &while_running] {
        let access = exchange(&base, token).await.expect("the API accepts the new operator token");
        let me: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/v1/me"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["user"]["platform_role"], "operator", "{me}");
    }
    // Logs written to a pipe carry no terminal colour codes.
    let logged = String::from_utf8_lossy(&logged.lock().unwrap()).into_owned();
    assert!(logged.contains("INFO"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "colour codes in logs written to a pipe: {logged:?}");
    let _ = api.kill();
    let _ = api.wait();
    drop(pg);
    let _ = std::fs::remove_dir_all(&state);
}
