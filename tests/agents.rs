//! What each agent's host can do: registered with the agent, shown to platform operators by
//! `GET /v1/agents`, and used by placement, which ends an operation no host can run in `error`
//! at once (a message the tenant can act on; the detail in the job for operators).

use pgplane_core::agent::{AgentRegistration, Capabilities, Check, CheckStatus};
use pgplane_tests::{spawn_app, unused_etcd, AGENT_BOOTSTRAP_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn capabilities(versions: &[&str], patroni: bool) -> Capabilities {
    let etcd = if patroni {
        Check { name: "patroni → etcd over https".into(), status: CheckStatus::Ok, detail: "reached etcd".into() }
    } else {
        Check {
            name: "patroni → etcd over https".into(),
            status: CheckStatus::Fail,
            detail: "missing python module idna for pyOpenSSL: apt-get install python3-idna".into(),
        }
    };
    Capabilities {
        postgres_versions: versions.iter().map(|v| v.to_string()).collect(),
        patroni,
        haproxy: true,
        keepalived: true,
        pgbackrest: Some("2.45".into()),
        checks: vec![Check { name: "postgres 15".into(), status: CheckStatus::Ok, detail: "15.18".into() }, etcd],
    }
}

/// Registers an agent the way `pgplane agent` does; returns its id.
async fn register(agent_api: &str, name: &str, capabilities: Capabilities) -> String {
    register_on(agent_api, name, "127.0.0.1", capabilities).await
}

/// `register` for a host at `host`.
async fn register_on(agent_api: &str, name: &str, host: &str, capabilities: Capabilities) -> String {
    let registration = AgentRegistration {
        bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
        name: name.into(),
        host: host.into(),
        public_host: None,
        memory_mb: 8192,
        disk_gb: 500,
        port_min: 21000,
        port_max: 21100,
        capabilities: Some(capabilities),
    };
    let res =
        reqwest::Client::new().post(format!("{agent_api}/agent/v1/register")).json(&registration).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["agent_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_what_each_agents_host_can_do() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let able = register(&agent_api, "host-a", capabilities(&["15"], true)).await;
    register(&agent_api, "host-b", capabilities(&["15"], false)).await;
    let operator = app.operator();

    let (s, page) = operator.get("/v1/agents?limit=1").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["name"], "host-a");
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, rest) = operator.get(&format!("/v1/agents?limit=1&cursor={cursor}")).await;
    assert_eq!(rest["items"][0]["name"], "host-b", "{rest}");
    assert_eq!(rest["items"][0]["capabilities"]["patroni"], false);
    assert!(rest["next_cursor"].is_null(), "{rest}");

    let (s, agent) = operator.get(&format!("/v1/agents/{able}")).await;
    assert_eq!(s, StatusCode::OK, "{agent}");
    assert_eq!(
        (agent["host"].as_str(), agent["memory_mb"].as_i64(), agent["live"].as_bool()),
        (Some("127.0.0.1"), Some(8192), Some(true))
    );
    assert_eq!(agent["free_memory_mb"], 8192);
    assert_eq!(agent["capabilities"]["postgres_versions"], json!(["15"]));
    assert_eq!(agent["capabilities"]["pgbackrest"], "2.45");
    assert_eq!(agent["capabilities"]["checks"][1]["status"], "ok", "{agent}");

    let (s, _) = operator.get(&format!("/v1/agents/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let tenant_user = app.user("someone@a.test").await;
    let (s, _) = tenant_user.get("/v1/agents").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_no_host_can_run_ends_in_error_at_once() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    // One host without PostgreSQL 15, one whose Patroni cannot reach etcd over https.
    register(&agent_api, "host-old", capabilities(&["14"], true)).await;
    register(&agent_api, "host-no-idna", capabilities(&["15"], false)).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;

    let (s, op) = owner
        .post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "starter-1", "version": "15" }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "error", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("PostgreSQL 15"), "{error}");
    for secret in ["host-old", "host-no-idna", "127.0.0.1", "idna", "/"] {
        assert!(!error.contains(secret), "the tenant sees {secret:?}: {error}");
    }
    let (_, db) = owner.get(&format!("/v1/databases/{}", op["database_id"].as_str().unwrap())).await;
    assert_eq!(db["status"], "error", "{db}");

    // Operators find the detail in the dead job, and nothing was placed.
    let (_, dead) = app.operator().get("/v1/jobs?status=dead").await;
    let last_error = dead["items"][0]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("host-old")
            && last_error.contains("no PostgreSQL 15")
            && last_error.contains("host-no-idna"),
        "{dead}"
    );
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM database_members").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(members, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_that_carry_a_vip_go_only_to_hosts_that_run_keepalived() {
    let mut app = spawn_app().await;
    let pool = "10.213.9.100-10.213.9.101".parse().unwrap();
    let agent_api = app.start_scheduler_with(unused_etcd(), Some(pool)).await;
    let no_keepalived = Capabilities { keepalived: false, ..capabilities(&["15"], true) };
    register_on(&agent_api, "host-a", "10.0.0.1", capabilities(&["15"], true)).await;
    let without = register_on(&agent_api, "host-b", "10.0.0.2", no_keepalived).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let order = |name: &'static str| {
        let (owner, app_id) = (&owner, &app_id);
        async move {
            let (s, op) = owner
                .post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": name, "plan": "business-1" }))
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{op}");
            op
        }
    };

    // Two hosts live, one can carry the VIP: a Business database is refused at once.
    let op = order("one").await;
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "error", "{done}");
    let (_, dead) = app.operator().get("/v1/jobs?status=dead").await;
    let last_error = dead["items"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("host-b") && last_error.contains("keepalived"), "{dead}");

    // A third host with keepalived: the members (and so the gateways) go to the two that have it.
    register_on(&agent_api, "host-c", "10.0.0.3", capabilities(&["15"], true)).await;
    let op = order("two").await;
    let db = uuid::Uuid::parse_str(op["database_id"].as_str().unwrap()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let placed: Vec<uuid::Uuid> = loop {
        let agents: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT agent_id FROM database_gateways WHERE database_id = $1 ORDER BY name")
                .bind(db)
                .fetch_all(app.store.pool())
                .await
                .unwrap();
        if agents.len() == 2 {
            break agents;
        }
        assert!(std::time::Instant::now() < deadline, "the database was not placed: {agents:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let without = uuid::Uuid::parse_str(&without).unwrap();
    assert!(!placed.contains(&without), "a gateway went to the host without keepalived: {placed:?}");
    assert_ne!(placed[0], placed[1], "the gateways are on two hosts");
}
