//! Verified restores with real parts (API, scheduler, one agent running Patroni/PostgreSQL,
//! etcd, local backup storage): a scheduled backup of a database with data is followed by a
//! `verify_backup` operation that restores it into a scratch server on the agent's host and
//! checks it — the backup shows `verified_at` and `passed`; the same backup, its object tampered
//! with in the storage folder, fails its next verification with a reason the tenant can read
//! and a `backup_verification_failed` event.

use chrono::Utc;
use pgplane_agent::runtime::AgentConfig;
use pgplane_agent::LocalEtcd;
use pgplane_core::backup::BackupMethod;
use pgplane_core::ids::DatabaseId;
use pgplane_storage::{BackupStore, StorageConfig};
use pgplane_tests::data_plane::{psql, TempDir};
use pgplane_tests::{scheduler_config, spawn_app, Client, TestApp, AGENT_BOOTSTRAP_TOKEN};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waits for the database's `verify_backup` operation that is not `skip` to end; returns it.
async fn verification_of(app: &TestApp, owner: &Client, db: &str, skip: &[String]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, page) = owner.get(&format!("/v1/databases/{db}/operations?limit=20")).await;
        let found = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "verify_backup" && !skip.iter().any(|s| o["id"].as_str() == Some(s.as_str())));
        if let Some(op) = found {
            return app.wait_operation(owner, op["id"].as_str().unwrap(), Duration::from_secs(180)).await;
        }
        assert!(Instant::now() < deadline, "no verify_backup operation: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The database's events of `kind`.
async fn events(owner: &Client, db: &str, kind: &str) -> Vec<Value> {
    let (_, page) = owner.get(&format!("/v1/databases/{db}/events?limit=100")).await;
    page["items"].as_array().into_iter().flatten().filter(|e| e["kind"] == kind).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_backup_is_restored_into_a_scratch_server_and_checked() {
    let etcd_dir = TempDir::new("e");
    let agent_dir = TempDir::new("a");
    let storage_dir = TempDir::new("s");
    let etcd = {
        let dir = etcd_dir.0.clone();
        tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await.unwrap().expect("etcd")
    };
    let mut app = spawn_app().await;
    let agent_api = app
        .start_scheduler_config(pgplane_scheduler::config::SchedulerConfig {
            backup_storage: Some(BackupStore::local(storage_dir.0.clone()).unwrap()),
            ..scheduler_config(etcd.admin())
        })
        .await;
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
        backup_storage: Some(StorageConfig::Local { root: storage_dir.0.clone() }),
    };
    let agent = tokio::spawn(pgplane_agent::runtime::run(config, stopped));

    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let (_, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "shop", "plan": "starter-512" })).await;
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(done["status"], "done", "{done}");
    let db = op["database_id"].as_str().unwrap().to_string();
    let (_, conn) = owner.get(&format!("/v1/databases/{db}/connection")).await;
    let ca_file = agent_dir.0.join("ca.pem");
    std::fs::write(&ca_file, conn["ca_pem"].as_str().unwrap()).unwrap();
    let url = conn["url"]
        .as_str()
        .unwrap()
        .replace("sslmode=verify-full", &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()));
    psql(
        &url,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, doc jsonb, tags text[]); \
         INSERT INTO orders (doc, tags) SELECT jsonb_build_object('n', g), ARRAY['a', g::text] FROM generate_series(1, 5000) g; \
         CREATE TABLE empty_one (x int); CREATE VIEW big_orders AS SELECT * FROM orders WHERE id > 4000;",
    )
    .await
    .unwrap();

    // What the daily timer does when it fires (tests/daily_backups.rs drives the timer itself).
    let id: DatabaseId = db.parse().unwrap();
    let (backup, op) = app.store.backup_start(None, id, BackupMethod::Scheduled, Utc::now()).await.unwrap();
    let done = app.wait_operation(&owner, &op.id.to_string(), Duration::from_secs(180)).await;
    assert_eq!(done["status"], "done", "{done}");
    let started = Instant::now();
    let verify = verification_of(&app, &owner, &db, &[]).await;
    eprintln!("verification done {:?} after the backup's operation", started.elapsed());
    assert_eq!(verify["status"], "done", "{verify}");
    assert_eq!(verify["params"]["backup_id"], json!(backup.id), "{verify}");
    let path = format!("/v1/databases/{db}/backups/{}", backup.id);
    let (_, shown) = owner.get(&path).await;
    assert_eq!(shown["method"], "scheduled", "{shown}");
    assert_eq!(shown["verification"], "passed", "{shown}");
    assert!(shown["verified_at"].is_string(), "{shown}");
    assert_eq!(shown["verification_detail"], Value::Null, "{shown}");
    let verified = events(&owner, &db, "backup_verified").await;
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(verified[0]["detail"]["backup_id"], json!(backup.id));

    // The object altered in storage (a byte flipped in the middle): the next verification of the
    // same backup fails, says why, and raises its event; the backup stays listed.
    let object = storage_dir.0.join(format!("databases/{db}/backups/{}.dump", backup.id));
    let mut bytes = std::fs::read(&object).expect("the backup's object in the storage folder");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&object, &bytes).unwrap();
    let again = {
        let mut tx = app.store.begin().await.unwrap();
        let op = pgplane_store::daily_backups::verification_start_in(&mut tx, id, backup.id).await.unwrap();
        tx.commit().await.unwrap();
        op
    };
    let failed = app.wait_operation(&owner, &again.id.to_string(), Duration::from_secs(180)).await;
    assert_eq!(failed["status"], "done", "a failed verification is an answer, not a failed operation: {failed}");
    let (_, shown) = owner.get(&path).await;
    assert_eq!(shown["verification"], "failed", "{shown}");
    let reason = shown["verification_detail"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("SHA-256") || reason.contains("pg_restore"), "{shown}");
    assert!(!reason.contains(storage_dir.0.to_str().unwrap()) && !reason.contains("/tmp"), "host detail: {reason}");
    let failures = events(&owner, &db, "backup_verification_failed").await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["detail"]["reason"], json!(reason));

    let (_, del) = owner.delete(&format!("/v1/databases/{db}")).await;
    app.wait_operation(&owner, del["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    stop_agent.send(true).unwrap();
    let _ = agent.await;
}
