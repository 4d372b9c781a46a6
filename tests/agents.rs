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
        pgbackrest: Some("2.45".into()),
        checks: vec![Check { name: "postgres 15".into(), status: CheckStatus::Ok, detail: "15.18".into() }, etcd],
    }
}

/// Registers an agent the way `pgplane agent` does; returns its id.
async fn register(agent_api: &str, name: &str, capabilities: Capabilities) -> String {
    let registration = AgentRegistration {
        bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
        name: name.into(),
        host: "127.0.0.1".into(),
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
