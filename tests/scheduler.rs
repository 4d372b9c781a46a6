//! Workflows through the scheduler and its agent API, with fake agents that speak the real
//! protocol over HTTP (fast; the real agent has its own end-to-end test).

use pgplane_core::agent::{AgentJob, AgentTask};
use pgplane_tests::{register_fake_agent, spawn_app, unused_etcd, Client, AGENT_BOOTSTRAP_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a fake agent answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    FailFatally,
}

/// A fake agent: registers, long-polls, records every task and answers per `behaviour`.
struct FakeAgent {
    tasks: Arc<Mutex<Vec<AgentTask>>>,
    credential: String,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn fake_agent(agent_api: &str, name: &str, behaviour: Behaviour) -> FakeAgent {
    fake_agent_on(agent_api, name, "127.0.0.1", behaviour).await
}

/// A fake agent whose host has the private address `host`.
async fn fake_agent_on(agent_api: &str, name: &str, host: &str, behaviour: Behaviour) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = register_fake_agent(&http, agent_api, name, host).await;
    let credential_copy = credential.clone();
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let seen = tasks.clone();
    let base = agent_api.to_string();
    let handle = tokio::spawn(async move {
        loop {
            let res =
                http.get(format!("{base}/agent/v1/jobs?wait_secs=5")).bearer_auth(&credential).send().await.unwrap();
            if res.status() == StatusCode::NO_CONTENT {
                continue;
            }
            let job: AgentJob = res.json().await.unwrap();
            seen.lock().unwrap().push(job.task.clone());
            let report = match behaviour {
                Behaviour::Succeed => json!({ "lease_id": job.lease_id, "outcome": "succeeded", "result": {} }),
                Behaviour::FailFatally => {
                    json!({ "lease_id": job.lease_id, "outcome": "failed", "error": "/var/lib/pgplane/agent/x/patroni.log ends with: disk on fire", "retryable": false })
                }
            };
            let res = http
                .post(format!("{base}/agent/v1/jobs/{}/report", job.job_id))
                .bearer_auth(&credential)
                .json(&report)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::NO_CONTENT);
        }
    });
    FakeAgent { tasks, handle, credential: credential_copy }
}

async fn order(client: &Client, app: &str, name: &str, plan: &str) -> Value {
    let (s, op) = client.post(&format!("/v1/apps/{app}/databases"), &json!({ "name": name, "plan": plan })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    op
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_then_delete_a_starter_database() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let agent = fake_agent(&agent_api, "host-a", Behaviour::Succeed).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;

    let op = order(&owner, &app_id, "main", "starter-1").await;
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["progress"], 100);
    let db_id = op["database_id"].as_str().unwrap();
    let (_, db) = owner.get(&format!("/v1/databases/{db_id}")).await;
    assert_eq!(db["status"], "available", "{db}");
    assert_eq!(db["endpoint"]["host"], "127.0.0.1");
    let port = db["endpoint"]["port"].as_i64().unwrap();
    assert!((20000..=20100).contains(&port));

    let (s, conn) = owner.get(&format!("/v1/databases/{db_id}/connection")).await;
    assert_eq!(s, StatusCode::OK, "{conn}");
    let url = conn["url"].as_str().unwrap();
    assert!(
        url.starts_with("postgres://main:") && url.ends_with(&format!("@127.0.0.1:{port}/main?sslmode=verify-full")),
        "{url}"
    );
    let ca = owner.send(owner.request(reqwest::Method::GET, &format!("/v1/databases/{db_id}/ca.pem"))).await;
    assert_eq!(ca.headers["content-type"], "application/x-pem-file");
    assert_eq!(ca.body.as_str().unwrap(), conn["ca_pem"].as_str().unwrap());

    let tasks = agent.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let AgentTask::EnsureMember { spec } = &tasks[0] else { panic!("first a member: {tasks:?}") };
    assert_eq!(spec.database_id.to_string(), db_id);
    assert_eq!(spec.sizing.max_connections, 100);
    assert_eq!(spec.sizing.shared_buffers_mb, 256);
    assert!(spec.tls.cert_pem.contains("BEGIN CERTIFICATE") && spec.tls.key_pem.contains("PRIVATE KEY"));
    assert_eq!(spec.secrets.app_database, "main");
    assert_eq!(spec.secrets.app_password, conn["password"].as_str().unwrap());
    let AgentTask::EnsureGateway { spec: gw } = &tasks[1] else { panic!("then a gateway: {tasks:?}") };
    assert_eq!(i64::from(gw.listen_port), port);
    assert_eq!(gw.backends.len(), 1);

    // Members are listed as provisioned until their agent reports on them.
    let (_, members) = owner.get(&format!("/v1/databases/{db_id}/members")).await;
    assert_eq!(members["items"][0]["name"], "m0");
    assert_eq!(members["items"][0]["state"], "provisioning");
    let observed = json!({ "observed": { "members": [
        { "database_id": db_id, "member": "m0", "role": "leader", "state": "running", "timeline": 1, "lag_bytes": 0 },
        // Another agent's (or an unknown) member is ignored.
        { "database_id": db_id, "member": "m9", "role": "leader", "state": "running", "timeline": 7, "lag_bytes": null }
    ] } });
    let res = reqwest::Client::new()
        .post(format!("{agent_api}/agent/v1/heartbeat"))
        .bearer_auth(&agent.credential)
        .json(&observed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (_, members) = owner.get(&format!("/v1/databases/{db_id}/members")).await;
    assert_eq!(members["items"].as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members["items"][0]["role"], "leader");
    assert_eq!(members["items"][0]["state"], "running");
    assert_eq!(members["items"][0]["timeline"], 1);
    // An observation without `synchronous` (an older agent's) reads as not synchronous.
    assert_eq!(members["items"][0]["synchronous"], false);
    assert!(members["items"][0]["observed_at"].is_string());

    let (s, restart) = owner.post(&format!("/v1/databases/{db_id}/restart"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{restart}");
    assert_eq!(restart["kind"], "restart");
    let done = app.wait_operation(&owner, restart["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    assert!(
        matches!(agent.tasks.lock().unwrap().last(), Some(AgentTask::RestartMember { member, .. }) if member == "m0")
    );

    let (s, del) = owner.delete(&format!("/v1/databases/{db_id}")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let done = app.wait_operation(&owner, del["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    assert!(matches!(agent.tasks.lock().unwrap().last(), Some(AgentTask::RemoveDatabase { .. })));
    let (s, _) = owner.get(&format!("/v1/databases/{db_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM port_allocations").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(held, 0, "ports released");
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM database_members").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(members, 0, "capacity released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_members_go_on_distinct_agents_and_wait_for_capacity() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let first = fake_agent(&agent_api, "host-a", Behaviour::Succeed).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let op = order(&owner, &app_id, "ha", "business-2").await;
    // One agent cannot hold both members: the operation waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, waiting) = owner.get(&format!("/v1/operations/{}", op["id"].as_str().unwrap())).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert!(first.tasks.lock().unwrap().is_empty());

    let second = fake_agent(&agent_api, "host-b", Behaviour::Succeed).await;
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "done", "{done}");
    for agent in [&first, &second] {
        let tasks = agent.tasks.lock().unwrap();
        let members = tasks.iter().filter(|t| matches!(t, AgentTask::EnsureMember { .. })).count();
        let gateways = tasks.iter().filter(|t| matches!(t, AgentTask::EnsureGateway { .. })).count();
        assert_eq!((members, gateways), (1, 1), "each agent runs one member and one gateway: {tasks:?}");
    }

    // Each agent reports its member as Patroni sees it: m0 leads, m1 is the synchronous standby.
    let db_id = op["database_id"].as_str().unwrap();
    for agent in [&first, &second] {
        let member = agent
            .tasks
            .lock()
            .unwrap()
            .iter()
            .find_map(|t| match t {
                AgentTask::EnsureMember { spec } => Some(spec.member.clone()),
                _ => None,
            })
            .unwrap();
        let seen = if member == "m0" {
            json!({ "database_id": db_id, "member": member, "role": "leader", "state": "running", "timeline": 1,
                    "lag_bytes": 0, "synchronous": false })
        } else {
            json!({ "database_id": db_id, "member": member, "role": "replica", "state": "streaming", "timeline": 1,
                    "lag_bytes": 0, "synchronous": true })
        };
        let res = reqwest::Client::new()
            .post(format!("{agent_api}/agent/v1/heartbeat"))
            .bearer_auth(&agent.credential)
            .json(&json!({ "observed": { "members": [seen] } }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    let (_, members) = owner.get(&format!("/v1/databases/{db_id}/members")).await;
    let items = members["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{members}");
    assert_eq!(
        (&items[0]["name"], &items[0]["role"], &items[0]["synchronous"]),
        (&json!("m0"), &json!("leader"), &json!(false)),
        "{members}"
    );
    assert_eq!(
        (&items[1]["name"], &items[1]["role"], &items[1]["synchronous"]),
        (&json!("m1"), &json!("replica"), &json!(true)),
        "{members}"
    );

    // What each agent was asked from here on, in order, as (kind, member, drain).
    let mark = |agent: &FakeAgent| agent.tasks.lock().unwrap().len();
    let since = |agent: &FakeAgent, from: usize| -> Vec<(String, String, Option<bool>)> {
        agent.tasks.lock().unwrap()[from..]
            .iter()
            .map(|t| match t {
                AgentTask::DrainMember { member, drain, .. } => ("drain".into(), member.clone(), Some(*drain)),
                AgentTask::EnsureMember { spec } => ("member".into(), spec.member.clone(), None),
                AgentTask::Switchover { .. } => ("switchover".into(), String::new(), None),
                AgentTask::PatchConfig { .. } => ("config".into(), String::new(), None),
                other => (format!("{other:?}"), String::new(), None),
            })
            .collect()
    };
    let drain = |on: bool| ("drain".to_string(), "m0".to_string(), Some(on));
    let switchover = ("switchover".to_string(), String::new(), None);

    // A planned switchover drains the leader in every gateway and lifts the drain after.
    let (a, b) = (mark(&first), mark(&second));
    let (s, op) = owner.post(&format!("/v1/databases/{db_id}/switchover"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    // The agent asking Patroni (m0's) drains its own gateway within the switchover job.
    assert_eq!(since(&first, a), vec![switchover.clone(), drain(false)]);
    let drains_own = first
        .tasks
        .lock()
        .unwrap()
        .iter()
        .any(|t| matches!(t, AgentTask::Switchover { drain_leader: Some(l), .. } if l == "m0"));
    assert!(drains_own, "the switchover job drains m0 on its agent");
    assert_eq!(since(&second, b), vec![drain(true), drain(false)]);

    // A new memory size restarts PostgreSQL: the connection limit first, then the follower
    // resized, a drained switchover onto it, then the former leader resized.
    let (a, b) = (mark(&first), mark(&second));
    let (s, op) = owner.post(&format!("/v1/databases/{db_id}/change-plan"), &json!({ "plan": "business-4" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    let member = |m: &str| ("member".to_string(), m.to_string(), None);
    let config = ("config".to_string(), String::new(), None);
    assert_eq!(since(&first, a), vec![config, switchover, drain(false), member("m0")]);
    assert_eq!(since(&second, b), vec![member("m1"), drain(true), drain(false), member("m1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_two_hosts_share_a_vip_from_the_pool() {
    let mut app = spawn_app().await;
    let pool = "10.213.7.100-10.213.7.101".parse().unwrap();
    let agent_api = app.start_scheduler_with(unused_etcd(), Some(pool)).await;
    let agents = [
        fake_agent_on(&agent_api, "host-a", "10.0.0.1", Behaviour::Succeed).await,
        fake_agent_on(&agent_api, "host-b", "10.0.0.2", Behaviour::Succeed).await,
    ];
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let create = |name: &'static str| {
        let (owner, app, app_id) = (&owner, &app, &app_id);
        async move {
            let op = order(owner, app_id, name, "business-2").await;
            let done = app.wait_operation(owner, op["id"].as_str().unwrap(), Duration::from_secs(60)).await;
            assert_eq!(done["status"], "done", "{done}");
            let db_id = op["database_id"].as_str().unwrap().to_string();
            let (_, db) = owner.get(&format!("/v1/databases/{db_id}")).await;
            (db_id, db["endpoint"]["host"].as_str().unwrap().to_string(), db["endpoint"]["port"].as_i64().unwrap())
        }
    };

    let (first, host, port) = create("one").await;
    assert_eq!(host, "10.213.7.100", "the endpoint is the VIP");
    let (_, conn) = owner.get(&format!("/v1/databases/{first}/connection")).await;
    assert!(conn["url"].as_str().unwrap().contains(&format!("@10.213.7.100:{port}/")), "{conn}");
    for (i, agent) in agents.iter().enumerate() {
        let tasks = agent.tasks.lock().unwrap().clone();
        let vip = tasks
            .iter()
            .find_map(|t| match t {
                AgentTask::EnsureGateway { spec } => spec.vip.clone(),
                _ => None,
            })
            .expect("the gateway carries the VIP");
        let other = if i == 0 { "10.0.0.2" } else { "10.0.0.1" };
        assert_eq!(
            (vip.address.as_str(), i64::from(vip.port), vip.router_id, vip.peers),
            ("10.213.7.100", port, 1, vec![other.to_string()]),
            "every gateway binds the VIP on one port and peers with the other host"
        );
        assert_eq!(vip.priority, if i == 0 { 150 } else { 140 });
        let cert = tasks
            .iter()
            .find_map(|t| match t {
                AgentTask::EnsureMember { spec } => Some(spec.tls.cert_pem.clone()),
                _ => None,
            })
            .unwrap();
        let text = openssl_text(&cert);
        assert!(text.contains("IP Address:10.213.7.100"), "the member's certificate names the VIP: {text}");
    }

    let (_, host, _) = create("two").await;
    assert_eq!(host, "10.213.7.101");
    let (_, host, _) = create("three").await;
    assert!(host == "10.0.0.1" || host == "10.0.0.2", "the pool is used up: the first gateway's host, got {host}");

    // A deleted database gives its VIP back.
    let (s, op) = owner.delete(&format!("/v1/databases/{first}")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "done", "{done}");
    let (_, host, _) = create("four").await;
    assert_eq!(host, "10.213.7.100", "the released VIP is taken again");
}

/// `openssl x509 -text` of a PEM certificate.
fn openssl_text(pem: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_agent_failure_ends_the_operation_in_error() {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let _agent = fake_agent(&agent_api, "host-a", Behaviour::FailFatally).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let op = order(&owner, &app_id, "main", "sandbox").await;
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "error", "{done}");
    // The tenant reads which part failed and the job to quote, not the agent's host paths or log
    // tails; operators keep those in the job.
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("starting or updating a PostgreSQL member failed"), "{error}");
    assert!(!error.contains("/var/lib") && !error.contains("disk on fire"), "{error}");
    let job = error.split("(job ").nth(1).and_then(|r| r.split(')').next()).expect("a job id");
    let operator = app.operator();
    let (_, dead) = operator.get(&format!("/v1/jobs/{job}")).await;
    assert!(dead["last_error"].as_str().unwrap().contains("disk on fire"), "{dead}");
    let (_, db) = owner.get(&format!("/v1/databases/{}", op["database_id"].as_str().unwrap())).await;
    assert_eq!(db["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_do_each_step_once() {
    let mut app = spawn_app().await;
    let first = app.start_scheduler(unused_etcd()).await;
    // A second scheduler process on the same database (its own listener and workers).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = format!("http://{}", listener.local_addr().unwrap());
    let (stop_second, stopped) = tokio::sync::watch::channel(false);
    let config = pgplane_scheduler::config::SchedulerConfig {
        etcd: unused_etcd(),
        bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
        gateway_vips: None,
        not_streaming_grace: pgplane_scheduler::truth::NOT_STREAMING_GRACE,
        agent_lost_after: pgplane_tests::AGENT_LOST_AFTER,
        backup_storage: None,
    };
    tokio::spawn(pgplane_scheduler::run::run(app.store.clone(), config, listener, stopped));
    // One agent talks to each scheduler.
    let a = fake_agent(&first, "host-a", Behaviour::Succeed).await;
    let b = fake_agent(&second, "host-b", Behaviour::Succeed).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let mut ops = Vec::new();
    for i in 0..6 {
        ops.push(order(&owner, &app_id, &format!("db{i}"), "sandbox").await);
    }
    for op in &ops {
        let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(60)).await;
        assert_eq!(done["status"], "done", "{done}");
    }
    let tasks: Vec<AgentTask> = a.tasks.lock().unwrap().iter().chain(b.tasks.lock().unwrap().iter()).cloned().collect();
    assert_eq!(tasks.len(), 12, "one member and one gateway per database, no more: {tasks:?}");
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = 'scheduler'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(steps, 6 * 3, "start, gateways and finish once per database");
    let _ = stop_second.send(true);
}
