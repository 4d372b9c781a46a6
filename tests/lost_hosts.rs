//! Operations that cannot end well still end: a host lost in the middle of a configure, a
//! switchover or a delete (in `error` with a message a tenant can read, or done through a live
//! member, the lost host's part skipped and removed when it comes back), a step past its
//! deadline; and plan changes that do not fit: a member moves to a host with room, or the
//! operation waits for one.

use pgplane_core::agent::AgentTask;
use pgplane_tests::fake_agent::{fake_agent, fake_agent_sized, lab, member_of, observe, run_op, FakeAgent, Mode};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Long enough for a lost agent to count as lost and for the sweep to see it.
const LOSS_SEEN_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_during_a_configure_ends_it_and_the_next_goes_through_a_live_member() {
    let lab = lab().await;
    let a = fake_agent(&lab.agent_api, "host-a", Mode::Succeed).await;
    let b = fake_agent(&lab.agent_api, "host-b", Mode::Succeed).await;
    let db = lab.business(&a, &b).await;
    *a.lose_on.lock().unwrap() = Some("patch_config");
    let configure = |mem: i64| {
        let (owner, path) = (&lab.owner, format!("/v1/databases/{db}/configuration"));
        async move { owner.patch(&path, &json!({ "parameters": { "work_mem": mem } })).await }
    };
    let error = lab.fails(configure(8192).await, LOSS_SEEN_WITHIN).await;
    assert!(error.starts_with("Applying the configuration could not finish"), "{error}");
    // The leader's host is gone: the next configure goes through the follower's.
    run_op(&lab.app, &lab.owner, configure(4096).await).await;
    assert!(b.seen.lock().unwrap().iter().any(|(_, _, t)| matches!(t, AgentTask::PatchConfig { .. })));
    // A restart restarts what it can reach: the live member, not the lost host's.
    run_op(&lab.app, &lab.owner, lab.owner.post(&format!("/v1/databases/{db}/restart"), &json!({})).await).await;
    let restarted = |agent: &FakeAgent| {
        agent.seen.lock().unwrap().iter().filter(|(_, _, t)| matches!(t, AgentTask::RestartMember { .. })).count()
    };
    assert_eq!((restarted(&a), restarted(&b)), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_during_a_switchover_ends_it_and_the_next_goes_through_a_live_member() {
    let lab = lab().await;
    let a = fake_agent(&lab.agent_api, "host-a", Mode::Succeed).await;
    let b = fake_agent(&lab.agent_api, "host-b", Mode::Succeed).await;
    let db = lab.business(&a, &b).await;
    *a.lose_on.lock().unwrap() = Some("switchover");
    let error =
        lab.fails(lab.owner.post(&format!("/v1/databases/{db}/switchover"), &json!({})).await, LOSS_SEEN_WITHIN).await;
    assert!(error.starts_with("Moving the leader could not finish"), "{error}");
    let (_, dbrow) = lab.owner.get(&format!("/v1/databases/{db}")).await;
    assert_eq!(dbrow["status"], "available", "a failed switchover leaves a running database: {dbrow}");
    // Again, through the live follower's agent, naming the follower.
    run_op(&lab.app, &lab.owner, lab.owner.post(&format!("/v1/databases/{db}/switchover"), &json!({})).await).await;
    let asked = b.seen.lock().unwrap().iter().find_map(|(_, _, t)| match t {
        AgentTask::Switchover { candidate, .. } => Some(candidate.clone()),
        _ => None,
    });
    assert_eq!(asked, Some(member_of(&b, &db)), "the scheduler names the candidate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_during_a_delete_is_skipped_and_its_resources_released() {
    let lab = lab().await;
    let a = fake_agent(&lab.agent_api, "host-a", Mode::Succeed).await;
    let b = fake_agent(&lab.agent_api, "host-b", Mode::Succeed).await;
    let db = lab.business(&a, &b).await;
    *b.lose_on.lock().unwrap() = Some("remove_database");
    let op = lab.owner.delete(&format!("/v1/databases/{db}")).await;
    let t = Instant::now();
    assert_eq!(op.0, StatusCode::ACCEPTED, "{}", op.1);
    let done = lab.app.wait_operation(&lab.owner, op.1["id"].as_str().unwrap(), LOSS_SEEN_WITHIN).await;
    assert_eq!(done["status"], "done", "{done}");
    eprintln!("delete with a lost host: done after {:?}", t.elapsed());
    let sql = PgPool::connect(&lab.app.db_url).await.unwrap();
    for table in ["port_allocations", "database_members", "database_gateways"] {
        let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&sql).await.unwrap();
        assert_eq!(left, 0, "{table} released");
    }
    let skipped: Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE kind = 'remove_database' AND result ? 'skipped'")
            .fetch_one(&sql)
            .await
            .unwrap();
    assert!(skipped["skipped"].as_str().unwrap().contains("host-b"), "{skipped}");

    // The host comes back still running its member: it is asked to remove it.
    let member = member_of(&b, &db).unwrap();
    let back = fake_agent(&lab.agent_api, "host-b", Mode::Succeed).await;
    observe(&lab.agent_api, &back, &db, &member, "replica", false).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !back
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, t)| matches!(t, AgentTask::RemoveDatabase { database_id, .. } if database_id.to_string() == db))
    {
        assert!(Instant::now() < deadline, "the returning host was not asked to remove its leftovers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bigger_plan_waits_for_capacity_and_overcommits_no_host() {
    let lab = lab().await;
    let _a = fake_agent(&lab.agent_api, "host-a", Mode::Succeed).await;
    let _b = fake_agent(&lab.agent_api, "host-b", Mode::Succeed).await;
    let order = |name: &'static str, plan: &'static str| {
        let (owner, path) = (&lab.owner, format!("/v1/apps/{}/databases", lab.app_id));
        async move { owner.post(&path, &json!({ "name": name, "plan": plan })).await }
    };
    let big = run_op(&lab.app, &lab.owner, order("big", "business-4").await).await["database_id"]
        .as_str()
        .unwrap()
        .to_string();
    let small = run_op(&lab.app, &lab.owner, order("small", "business-2").await).await["database_id"]
        .as_str()
        .unwrap()
        .to_string();
    // 8 GB hosts holding 4 + 2 GB: 8 GB members do not fit beside the small database.
    let (s, op) = lab.owner.post(&format!("/v1/databases/{big}/change-plan"), &json!({ "plan": "business-8" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, now) = lab.owner.get(&format!("/v1/operations/{id}")).await;
        if now["step"] == "waiting for capacity" {
            assert!(["pending", "running"].contains(&now["status"].as_str().unwrap()), "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "the operation does not say it waits: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, agents) = lab.app.operator().get("/v1/agents").await;
    for agent in agents["items"].as_array().unwrap() {
        assert!(agent["free_memory_mb"].as_i64().unwrap() >= 0, "overcommitted: {agent}");
    }
    // Room is made: the plan change goes on by itself.
    run_op(&lab.app, &lab.owner, lab.owner.delete(&format!("/v1/databases/{small}")).await).await;
    let done = lab.app.wait_operation(&lab.owner, &id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "done", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_deadline_ends_the_operation() {
    let lab = lab().await;
    let a = fake_agent(&lab.agent_api, "host-a", Mode::Succeed).await;
    *a.stall_on.lock().unwrap() = Some("ensure_gateway");
    let (s, op) = lab
        .owner
        .post(&format!("/v1/apps/{}/databases", lab.app_id), &json!({ "name": "slow", "plan": "sandbox" }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let sql = PgPool::connect(&lab.app.db_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.seen.lock().unwrap().iter().any(|(_, _, t)| matches!(t, AgentTask::EnsureGateway { .. })) {
        assert!(Instant::now() < deadline, "the gateway was never asked for");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent is alive but the gateway never comes: the clock moves past the job's deadline.
    let allowed: f64 = sqlx::query_scalar(
        "UPDATE jobs SET deadline_at = now() - interval '1 second' WHERE kind = 'ensure_gateway' AND status = 'running' \
         RETURNING time_allowed_ms::float8 / 1000",
    )
    .fetch_one(&sql)
    .await
    .unwrap();
    assert!(allowed > 60.0, "a gateway gets minutes, not seconds: {allowed}");
    let done = lab.app.wait_operation(&lab.owner, op["id"].as_str().unwrap(), Duration::from_secs(10)).await;
    assert_eq!(done["status"], "error", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("Starting or updating a gateway did not finish in time"), "{error}");
    assert!(!error.contains("agent:") && !error.contains("host-a"), "{error}");
    let (_, dead) = lab
        .app
        .operator()
        .get(&format!("/v1/jobs/{}", error.split("(job ").nth(1).unwrap().split(')').next().unwrap()))
        .await;
    assert!(dead["last_error"].as_str().unwrap().contains("deadline passed"), "{dead}");
    assert_eq!(dead["status"], "dead", "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bigger_plan_moves_a_member_whose_host_has_no_room() {
    let lab = lab().await;
    let a = fake_agent_sized(&lab.agent_api, "host-a", 8192).await;
    let b = fake_agent_sized(&lab.agent_api, "host-b", 8192).await;
    let order = |name: &'static str, plan: &'static str| {
        let (owner, path) = (&lab.owner, format!("/v1/apps/{}/databases", lab.app_id));
        async move { owner.post(&path, &json!({ "name": name, "plan": plan })).await }
    };
    // 4 GB members on both hosts, and a small database beside the first one: 3.75 GB left there.
    let big = run_op(&lab.app, &lab.owner, order("big", "business-4").await).await["database_id"]
        .as_str()
        .unwrap()
        .to_string();
    run_op(&lab.app, &lab.owner, order("tiny", "sandbox").await).await;
    assert_eq!(member_of(&a, &big).as_deref(), Some("m0"));
    observe(&lab.agent_api, &a, &big, "m0", "leader", false).await;
    observe(&lab.agent_api, &b, &big, "m1", "replica", true).await;
    let c = fake_agent_sized(&lab.agent_api, "host-c", 16384).await;

    // 8 GB members: m1 grows where it is, m0 (the leader) moves to the host with room.
    run_op(
        &lab.app,
        &lab.owner,
        lab.owner.post(&format!("/v1/databases/{big}/change-plan"), &json!({ "plan": "business-8" })).await,
    )
    .await;
    let (_, members) = lab.owner.get(&format!("/v1/databases/{big}/members")).await;
    let names: Vec<&str> = members["items"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m1", "m2"], "{members}");
    assert_eq!(member_of(&c, &big).as_deref(), Some("m2"));
    let switched = a.seen.lock().unwrap().iter().find_map(|(_, _, t)| match t {
        AgentTask::Switchover { candidate, .. } => candidate.clone(),
        _ => None,
    });
    assert_eq!(switched.as_deref(), Some("m1"), "the lead went to the synchronous standby before m0 left");
    let removed =
        a.seen.lock().unwrap().iter().any(
            |(_, _, t)| matches!(t, AgentTask::RemoveDatabase { database_id, .. } if database_id.to_string() == big),
        );
    assert!(removed, "host-a removed its part of the database");
    let (_, agents) = lab.app.operator().get("/v1/agents").await;
    let free: Vec<(String, i64)> = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a["free_memory_mb"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        free,
        [("host-a".to_string(), 8192 - 256), ("host-b".to_string(), 0), ("host-c".to_string(), 16384 - 8192)],
        "no host overcommitted"
    );
    let gateways: Vec<String> = c
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, _, t)| match t {
            AgentTask::EnsureGateway { spec } if spec.database_id.to_string() == big => Some(spec.name.clone()),
            _ => None,
        })
        .collect();
    assert!(!gateways.is_empty(), "a gateway moved with the member");
}
