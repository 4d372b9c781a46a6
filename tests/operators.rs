//! What operators do when something is lost, through the API with a real scheduler and fake
//! agents: retire a lost agent (refused while it hosts databases, forced: members lost, ports
//! released, its waiting jobs dead and their operations in `error`, its credential refused,
//! never placed on again), retry a dead job (its operation runs again) and fail one that hangs.

use pgplane_core::agent::AgentJob;
use pgplane_tests::{assert_problem, register_fake_agent, spawn_app, unused_etcd, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A fake agent that answers every job, failing fatally while `fail` is set and taking no job
/// while `paused` is set (a host that stopped answering).
struct FakeAgent {
    credential: String,
    fail: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn fake_agent(agent_api: &str, name: &str) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = register_fake_agent(&http, agent_api, name, "127.0.0.1").await;
    let (fail, paused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (c, f, p, base) = (credential.clone(), fail.clone(), paused.clone(), agent_api.to_string());
    let handle = tokio::spawn(async move {
        loop {
            if p.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let res = http.get(format!("{base}/agent/v1/jobs?wait_secs=1")).bearer_auth(&c).send().await.unwrap();
            if res.status() != StatusCode::OK {
                continue;
            }
            let job: AgentJob = res.json().await.unwrap();
            if p.load(Ordering::SeqCst) {
                // Paused while it waited: the job stays taken and unanswered.
                continue;
            }
            let report = if f.load(Ordering::SeqCst) {
                json!({ "lease_id": job.lease_id, "outcome": "failed", "error": "disk on fire", "retryable": false })
            } else {
                json!({ "lease_id": job.lease_id, "outcome": "succeeded", "result": {} })
            };
            let _ = http
                .post(format!("{base}/agent/v1/jobs/{}/report", job.job_id))
                .bearer_auth(&c)
                .json(&report)
                .send()
                .await;
        }
    });
    FakeAgent { credential, fail, paused, handle }
}

/// A 409 problem with this code.
#[track_caller]
fn conflict(status: StatusCode, body: &Value, code: &str) {
    assert_problem(status, body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], code, "{body}");
}

async fn agent_id(operator: &Client, name: &str) -> String {
    let (_, page) = operator.get("/v1/agents").await;
    let agent = page["items"].as_array().unwrap().iter().find(|a| a["name"] == name && a["retired_at"].is_null());
    agent.unwrap_or_else(|| panic!("agent {name} in {page}"))["id"].as_str().unwrap().to_string()
}

/// The agent job of an operation once its step has enqueued it (waiting or taken).
async fn agent_job_of(app: &pgplane_tests::TestApp, operation: &str) -> uuid::Uuid {
    for _ in 0..200 {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE operation_id = $1::uuid AND queue LIKE 'agent:%' \
             AND status IN ('queued', 'running')",
        )
        .bind(operation)
        .fetch_optional(app.store.pool())
        .await
        .unwrap();
        if let Some(id) = id {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no agent job for operation {operation}")
}

async fn order(app: &pgplane_tests::TestApp, owner: &Client, app_id: &str, name: &str) -> Value {
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": name, "plan": "starter-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    app.wait_operation(owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_a_lost_agent() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let lost = fake_agent(&agent_api, "host-a").await;
    let owner = app.user("owner@a.test").await;
    let operator = app.operator();
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let done = order(&app, &owner, &app_id, "main").await;
    assert_eq!(done["status"], "done", "{done}");
    let db = done["database_id"].as_str().unwrap().to_string();
    let a = agent_id(&operator, "host-a").await;

    // It hosts a database: refused, and the problem names the database.
    let (s, body) = operator.post(&format!("/v1/agents/{a}/retire"), &json!({})).await;
    conflict(s, &body, "agent_hosts_databases");
    assert!(body["detail"].as_str().unwrap().contains(&db), "{body}");

    // The host goes silent in the middle of a restart: the restart waits on it.
    lost.paused.store(true, Ordering::SeqCst);
    let (s, restart) = owner.post(&format!("/v1/databases/{db}/restart"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{restart}");
    agent_job_of(&app, restart["id"].as_str().unwrap()).await;
    let ports: i64 = sqlx::query_scalar("SELECT count(*) FROM port_allocations WHERE database_id = $1::uuid")
        .bind(&db)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(ports, 3, "member (PostgreSQL, Patroni) and gateway");

    let (s, retired) = operator.post(&format!("/v1/agents/{a}/retire?force=true"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{retired}");
    assert_eq!(retired["databases"], json!([db]));
    assert!(retired["agent"]["retired_at"].is_string(), "{retired}");
    assert_eq!(retired["agent"]["live"], false);
    // The restart's job died with the retirement: the operation ends in error, in words a
    // tenant can act on.
    let ended = app.wait_operation(&owner, restart["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(ended["status"], "error", "{ended}");
    assert!(!ended["error"].as_str().unwrap().contains("retired"), "{ended}");
    let (_, members) = owner.get(&format!("/v1/databases/{db}/members")).await;
    assert_eq!(members["items"][0]["state"], "lost", "{members}");
    assert_eq!(members["items"][0]["role"], "unknown", "{members}");
    let ports: i64 = sqlx::query_scalar("SELECT count(*) FROM port_allocations WHERE database_id = $1::uuid")
        .bind(&db)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(ports, 0, "the lost host's ports are released");
    // Again: nothing more happens.
    let (s, again) = operator.post(&format!("/v1/agents/{a}/retire"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["databases"], json!([]));

    // Its credential is refused; the host registers again as a new agent.
    let res = reqwest::Client::new()
        .post(format!("{agent_api}/agent/v1/heartbeat"))
        .bearer_auth(&lost.credential)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    drop(lost);
    let back = fake_agent(&agent_api, "host-a").await;
    let b = agent_id(&operator, "host-a").await;
    assert_ne!(a, b, "a new agent");
    // New databases go on live agents only, never the retired one.
    let done = order(&app, &owner, &app_id, "second").await;
    assert_eq!(done["status"], "done", "{done}");
    let placed: Vec<String> =
        sqlx::query_scalar("SELECT agent_id::text FROM database_members WHERE database_id = $1::uuid")
            .bind(done["database_id"].as_str().unwrap())
            .fetch_all(app.store.pool())
            .await
            .unwrap();
    assert_eq!(placed, vec![b.clone()]);
    // The restart's job died with its agent: retrying it there is refused.
    let dead: uuid::Uuid = sqlx::query_scalar("SELECT id FROM jobs WHERE operation_id = $1::uuid AND status = 'dead'")
        .bind(restart["id"].as_str().unwrap())
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    let (s, body) = operator.post(&format!("/v1/jobs/{dead}/retry"), &json!({})).await;
    conflict(s, &body, "agent_retired");
    // A live agent that registers again (a restart) keeps its identity.
    register_fake_agent(&reqwest::Client::new(), &agent_api, "host-a", "127.0.0.1").await;
    assert_eq!(agent_id(&operator, "host-a").await, b);
    let (s, _) = operator.post(&format!("/v1/agents/{}/retire", uuid::Uuid::now_v7()), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    drop(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_dead_job_and_failing_one_that_hangs() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let agent = fake_agent(&agent_api, "host-a").await;
    let owner = app.user("owner@a.test").await;
    let operator = app.operator();
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;

    // The first member fails fatally: the job dies, the create ends in error.
    agent.fail.store(true, Ordering::SeqCst);
    let failed = order(&app, &owner, &app_id, "main").await;
    assert_eq!(failed["status"], "error", "{failed}");
    let db = failed["database_id"].as_str().unwrap().to_string();
    let (_, dead) = operator.get("/v1/jobs?status=dead").await;
    let job = dead["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(dead["items"][0]["operation_id"], failed["id"]);

    // The operator fixed the host and retries: the operation runs again and ends well.
    agent.fail.store(false, Ordering::SeqCst);
    let (s, retried) = operator.post(&format!("/v1/jobs/{job}/retry"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{retried}");
    assert_eq!(retried["attempts"], 0, "{retried}");
    let done = app.wait_operation(&owner, failed["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    assert!(done["error"].is_null(), "{done}");
    let (_, database) = owner.get(&format!("/v1/databases/{db}")).await;
    assert_eq!(database["status"], "available", "{database}");
    let attempts: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT attempt, outcome FROM job_attempts WHERE job_id = $1::uuid ORDER BY started_at")
            .bind(&job)
            .fetch_all(app.store.pool())
            .await
            .unwrap();
    assert_eq!(attempts, [(-1, Some("fatal".into())), (1, Some("succeeded".into()))]);
    // Only dead jobs are retried.
    let (s, body) = operator.post(&format!("/v1/jobs/{job}/retry"), &json!({})).await;
    conflict(s, &body, "job_not_dead");

    // A restart whose agent stopped answering hangs until an operator fails its job.
    agent.paused.store(true, Ordering::SeqCst);
    let (s, restart) = owner.post(&format!("/v1/databases/{db}/restart"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{restart}");
    let waiting = agent_job_of(&app, restart["id"].as_str().unwrap()).await;
    let (s, killed) = operator.post(&format!("/v1/jobs/{waiting}/fail"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{killed}");
    assert_eq!(killed["status"], "dead");
    assert_eq!(killed["last_error"], "failed by an operator");
    let ended = app.wait_operation(&owner, restart["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(ended["status"], "error", "{ended}");
    // Failing it again changes nothing; a done job cannot be failed.
    let (s, _) = operator.post(&format!("/v1/jobs/{waiting}/fail"), &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = operator.post(&format!("/v1/jobs/{job}/fail"), &json!({})).await;
    conflict(s, &body, "job_done");
    drop(agent);
}
