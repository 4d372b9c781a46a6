//! The README's first command, end to end: `pgplane up` on a fresh state folder starts a
//! private PostgreSQL and the API, prints the address and how to get a token; Ctrl-C stops
//! everything it started, databases included; the next `up` keeps the data and runs them again.

mod support;

use pgplane_tests::data_plane::psql;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::procs;
use support::up::{access_token, alive, database, eventually_answers, postmaster_pid, start, state_dir, stop};

#[tokio::test(flavor = "multi_thread")]
async fn up_starts_everything_stops_everything_and_keeps_data() {
    let state = state_dir("");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let up = start(&state, port);
    let printed = up.output.join("\n");
    assert!(printed.contains(&format!("http://127.0.0.1:{port}")), "{printed}");
    assert!(printed.contains("/v1/auth/token"), "{printed}");
    let pg = postmaster_pid(&state);
    assert!(alive(pg));
    let token = access_token(&base, &state).await;
    let (tenant, url) = database(&http, &base, &token, &state).await;
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
    eventually_answers(&url, "SELECT x FROM kept", "7", Duration::from_secs(60)).await;
    stop(up);
    let left = procs::naming(&state);
    assert!(left.is_empty(), "processes of pgplane up outlived it: {left:?}");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(state.with_extension("log"));
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
