//! The whole path, with real parts: API → scheduler → agent → Patroni/PostgreSQL/HAProxy
//! (with a local etcd) → psql with sslmode=verify-full through the gateway → delete, after
//! which nothing of the database is left on the host.

use pgplane_agent::runtime::AgentConfig;
use pgplane_agent::LocalEtcd;
use pgplane_tests::data_plane::{psql, TempDir};
use pgplane_tests::{spawn_app, AGENT_BOOTSTRAP_TOKEN};
use reqwest::StatusCode;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_starter_database_from_the_api_to_psql_over_verified_tls_and_back() {
    let etcd_dir = TempDir::new("e");
    let agent_dir = TempDir::new("a");
    let etcd = {
        let dir = etcd_dir.0.clone();
        tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await.unwrap().expect("etcd")
    };
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(etcd.admin()).await;
    let (stop_agent, stopped) = tokio::sync::watch::channel(false);
    let (port_min, port_max) = pgplane_tests::port_window(10);
    let config = AgentConfig {
        scheduler_url: agent_api,
        bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
        name: "local-1".into(),
        host: "127.0.0.1".into(),
        public_host: "127.0.0.1".into(),
        memory_mb: 8192,
        disk_gb: 100,
        port_min,
        port_max,
        root: agent_dir.0.clone(),
        backup_storage: None,
    };
    let agent = tokio::spawn(pgplane_agent::runtime::run(config, stopped));

    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let started = Instant::now();
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "shop", "plan": "starter-512" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["status"], "done", "{done}");
    let db = op["database_id"].as_str().unwrap();
    let (_, conn) = owner.get(&format!("/v1/databases/{db}/connection")).await;
    let ca_file = agent_dir.0.join("ca.pem");
    std::fs::write(&ca_file, conn["ca_pem"].as_str().unwrap()).unwrap();
    let url = conn["url"]
        .as_str()
        .unwrap()
        .replace("sslmode=verify-full", &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()));
    let answer =
        psql(&url, "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2); SELECT count(*) FROM orders")
            .await;
    eprintln!("POST → first successful query over verified TLS: {:?}", started.elapsed());
    assert_eq!(answer.as_deref(), Ok("2"), "{answer:?}");
    let who = psql(
        &url,
        "SELECT current_user || ' ' || current_database() || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(who.as_deref(), Ok("shop shop true"));
    // Patroni wrote its keys as the database's own etcd user; etcd's root password is nowhere
    // on the agent's host.
    let etcd_root = pgplane_etcd::Client::new(&etcd.admin()).unwrap();
    let etcd_user = pgplane_etcd::admin::database_user(db);
    assert!(etcd_root.user_exists(&etcd_user).await.unwrap());
    assert!(etcd_root.count(&pgplane_etcd::scope_prefix(db)).await.unwrap() > 0);
    assert_eq!(files_containing(&agent_dir.0, etcd.admin().password.as_deref().unwrap()), Vec::<PathBuf>::new());

    // A rolling restart through the API: PostgreSQL comes back, newly started, with the data.
    let started_before = psql(&url, "SELECT pg_postmaster_start_time()").await.unwrap();
    let (s, restart) = owner.post(&format!("/v1/databases/{db}/restart"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{restart}");
    let done = app.wait_operation(&owner, restart["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["status"], "done", "{done}");
    let after =
        psql(&url, &format!("SELECT count(*) || ' ' || (pg_postmaster_start_time() > '{started_before}') FROM orders"))
            .await;
    assert_eq!(after.as_deref(), Ok("2 true"), "{after:?}");

    let (s, del) = owner.delete(&format!("/v1/databases/{db}")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let done = app.wait_operation(&owner, del["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "done", "{done}");
    assert!(!agent_dir.0.join(db).exists(), "the database's folder is gone");
    let port = conn["port"].as_i64().unwrap() as u16;
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "the gateway's port is free again");
    assert!(psql(&url, "SELECT 1").await.is_err());
    assert!(!etcd_root.user_exists(&etcd_user).await.unwrap(), "the database's etcd user is gone");
    assert_eq!(etcd_root.count(&pgplane_etcd::scope_prefix(db)).await.unwrap(), 0, "its etcd keys are gone");

    stop_agent.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    drop(etcd);
}
