//! The workflow engine with fake agents speaking the real protocol: every step of every
//! workflow run twice (a scheduler step replayed by a stale worker, an agent job re-claimed
//! after its agent restarted, a report sent twice) changes nothing the second time; a host lost
//! in the middle of a configure, a switchover or a delete ends the operation (in `error` with a
//! message a tenant can read, or done through a live member); a step past its deadline ends its
//! operation; a bigger plan moves a member whose host has no room, or waits for room.

use pgplane_core::agent::AgentTask;
use pgplane_core::ids::DatabaseId;
use pgplane_scheduler::queue::{Done, Handler, JobError};
use pgplane_scheduler::workflows::Workflows;
use pgplane_store::jobs::Claimed;
use pgplane_tests::{register_fake_agent, spawn_app, unused_etcd, Client, TestApp, AGENT_BOOTSTRAP_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a fake agent treats its jobs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Runs each job and reports it once.
    Succeed,
    /// Restarts on the first delivery of each job (registers again: the job goes back to the
    /// queue and comes again), then reports the second delivery twice (the second report must
    /// be refused and change nothing).
    Replay,
}

/// A fake agent; `lose_on` names a task kind on which its host is lost: it takes that job and
/// is never heard from again (no report, no poll, no heartbeat).
struct FakeAgent {
    /// (job id, attempt, task) of every delivery.
    seen: Arc<Mutex<Vec<(String, i32, AgentTask)>>>,
    lose_on: Arc<Mutex<Option<&'static str>>>,
    /// A task kind this agent takes and never finishes, while it stays alive (polls go on).
    stall_on: Arc<Mutex<Option<&'static str>>>,
    credential: Arc<Mutex<String>>,
    /// Problems met on the agent's side (a report answered otherwise than expected).
    problems: Arc<Mutex<Vec<String>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn kind_of(task: &AgentTask) -> String {
    serde_json::to_value(task).unwrap()["kind"].as_str().unwrap().to_string()
}

async fn fake_agent(agent_api: &str, name: &str, mode: Mode) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = register_fake_agent(&http, agent_api, name, "127.0.0.1").await;
    fake_agent_registered(agent_api, name, mode, credential)
}

/// A fake agent whose host has `memory_mb` of memory.
async fn fake_agent_sized(agent_api: &str, name: &str, memory_mb: i64) -> FakeAgent {
    let registered: pgplane_core::agent::Registered = reqwest::Client::new()
        .post(format!("{agent_api}/agent/v1/register"))
        .json(&json!({
            "bootstrap_token": AGENT_BOOTSTRAP_TOKEN, "name": name, "host": "127.0.0.1",
            "memory_mb": memory_mb, "disk_gb": 500, "port_min": 20000, "port_max": 20100
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fake_agent_registered(agent_api, name, Mode::Succeed, registered.credential)
}

fn fake_agent_registered(agent_api: &str, name: &str, mode: Mode, credential: String) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = Arc::new(Mutex::new(credential));
    let (seen, lose_on, problems) = (Arc::default(), Arc::new(Mutex::new(None)), Arc::default());
    let stall_on = Arc::new(Mutex::new(None));
    let agent = FakeAgent {
        seen: Arc::clone(&seen),
        lose_on: Arc::clone(&lose_on),
        stall_on: Arc::clone(&stall_on),
        credential: Arc::clone(&credential),
        problems: Arc::clone(&problems),
        handle: tokio::spawn({
            let (base, name) = (agent_api.to_string(), name.to_string());
            async move {
                loop {
                    let bearer = credential.lock().unwrap().clone();
                    let Ok(res) =
                        http.get(format!("{base}/agent/v1/jobs?wait_secs=2")).bearer_auth(&bearer).send().await
                    else {
                        continue;
                    };
                    if res.status() != StatusCode::OK {
                        continue;
                    }
                    let job: pgplane_core::agent::AgentJob = res.json().await.unwrap();
                    let kind = kind_of(&job.task);
                    seen.lock().unwrap().push((job.job_id.to_string(), job.attempt, job.task.clone()));
                    if lose_on.lock().unwrap().as_deref() == Some(kind.as_str()) {
                        return;
                    }
                    if stall_on.lock().unwrap().as_deref() == Some(kind.as_str()) {
                        continue;
                    }
                    if mode == Mode::Replay && job.attempt == 1 {
                        let again = register_fake_agent(&http, &base, &name, "127.0.0.1").await;
                        *credential.lock().unwrap() = again;
                        continue;
                    }
                    let report =
                        json!({ "lease_id": job.lease_id, "outcome": "succeeded", "result": result_of(&job.task) });
                    let url = format!("{base}/agent/v1/jobs/{}/report", job.job_id);
                    let times = if mode == Mode::Replay { 2 } else { 1 };
                    for i in 0..times {
                        let bearer = credential.lock().unwrap().clone();
                        let status = http.post(&url).bearer_auth(&bearer).json(&report).send().await.unwrap().status();
                        let expected = if i == 0 { StatusCode::NO_CONTENT } else { StatusCode::CONFLICT };
                        if status != expected {
                            problems.lock().unwrap().push(format!("report {i} of {kind} answered {status}"));
                        }
                    }
                }
            }
        }),
    };
    agent
}

/// What a real agent would answer: a switchover says who leads now.
fn result_of(task: &AgentTask) -> Value {
    match task {
        AgentTask::Switchover { candidate, drain_leader, .. } => {
            json!({ "from": drain_leader.clone().or(candidate.clone()), "to": candidate })
        }
        _ => json!({}),
    }
}

/// Tells the scheduler what `agent` sees of `member`: its role and whether it is synchronous.
async fn observe(agent_api: &str, agent: &FakeAgent, db: &str, member: &str, role: &str, synchronous: bool) {
    let bearer = agent.credential.lock().unwrap().clone();
    let seen = json!({ "observed": { "members": [{ "database_id": db, "member": member, "role": role,
        "state": "running", "timeline": 1, "lag_bytes": 0, "synchronous": synchronous }] } });
    let res = reqwest::Client::new()
        .post(format!("{agent_api}/agent/v1/heartbeat"))
        .bearer_auth(bearer)
        .json(&seen)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

/// The member `agent` was asked to run for database `db`.
fn member_of(agent: &FakeAgent, db: &str) -> Option<String> {
    agent.seen.lock().unwrap().iter().find_map(|(_, _, t)| match t {
        AgentTask::EnsureMember { spec } if spec.database_id.to_string() == db => Some(spec.member.clone()),
        _ => None,
    })
}

/// Every row a workflow step writes for database `db`, as one digest (rows agents' reports
/// and heartbeats write meanwhile are left out: jobs' states, agents' last news).
async fn digest(sql: &PgPool, db: DatabaseId) -> String {
    sqlx::query_scalar(
        "SELECT md5(concat_ws('|', \
            (SELECT string_agg(concat_ws(',', id, status, progress, step, error), ';' ORDER BY id) FROM operations WHERE database_id = $1), \
            (SELECT concat_ws(',', status, generation, endpoint_host, endpoint_port, plan_id) FROM databases WHERE id = $1), \
            (SELECT string_agg(concat_ws(',', name, agent_id, host, pg_port, patroni_port, memory_mb, disk_gb), ';' ORDER BY name) \
                FROM database_members WHERE database_id = $1), \
            (SELECT string_agg(g::text, ';' ORDER BY g.name) FROM database_gateways g WHERE database_id = $1), \
            (SELECT string_agg(p::text, ';' ORDER BY p.host, p.port) FROM port_allocations p WHERE database_id = $1), \
            (SELECT md5(s::text) FROM database_secrets s WHERE database_id = $1), \
            (SELECT string_agg(v::text, ';') FROM database_vips v WHERE database_id = $1), \
            (SELECT count(*) FROM database_events WHERE database_id = $1), \
            (SELECT count(*) FROM jobs WHERE database_id = $1 AND queue LIKE 'agent:%')))",
    )
    .bind(db)
    .fetch_one(sql)
    .await
    .unwrap()
}

/// The workflows, each step run a second time with the same claim right after it committed,
/// as a worker whose lease was taken over would: the second run must fail and change nothing.
struct Twice {
    inner: Workflows,
    sql: PgPool,
    /// Steps run one at a time, so that no other step writes between the two digests.
    one_at_a_time: tokio::sync::Mutex<()>,
    replayed: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl Handler for Twice {
    async fn run(&self, job: Claimed) -> Result<Done, JobError> {
        let _alone = self.one_at_a_time.lock().await;
        let outcome = self.inner.run(job.clone()).await;
        if let (Ok(_), Some(db)) = (&outcome, job.database_id) {
            let before = digest(&self.sql, db).await;
            let again = self.inner.run(job.clone()).await;
            let after = digest(&self.sql, db).await;
            let step = job.payload.get("step").cloned().unwrap_or(json!("start"));
            if again.is_ok() || before != after {
                self.problems
                    .lock()
                    .unwrap()
                    .push(format!("step {step} run twice: {again:?}, changed: {}", before != after));
            }
            self.replayed.lock().unwrap().push(step.to_string());
        }
        outcome
    }
}

/// Starts a scheduler whose workflow steps all run twice; returns its agent API's base URL.
async fn scheduler_replaying(
    app: &TestApp,
    replayed: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Vec<String>>>,
) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let config = pgplane_scheduler::config::SchedulerConfig {
        etcd: unused_etcd(),
        bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
        gateway_vips: None,
        agent_lost_after: pgplane_tests::AGENT_LOST_AFTER,
    };
    let sql = PgPool::connect(&app.db_url).await.unwrap();
    tokio::spawn(pgplane_scheduler::run::run_with(app.store.clone(), config, listener, stopped, move |inner| Twice {
        inner,
        sql,
        one_at_a_time: tokio::sync::Mutex::new(()),
        replayed,
        problems,
    }));
    (base, stop)
}

async fn run_op(app: &TestApp, owner: &Client, (status, op): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(owner, op["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["status"], "done", "{done}");
    done
}

/// `done` once the last step of the operation has been replayed too (the next request would
/// otherwise write beside the replay).
async fn settled(replayed: &Mutex<Vec<String>>, sql: &PgPool, done: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = 'scheduler' AND status = 'done'")
            .fetch_one(sql)
            .await
            .unwrap();
        if replayed.lock().unwrap().len() as i64 >= steps {
            return done;
        }
        assert!(Instant::now() < deadline, "the last step was not replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_and_report_replayed_changes_nothing() {
    let app = spawn_app().await;
    let (replayed, problems) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (agent_api, _stop) = scheduler_replaying(&app, replayed.clone(), problems.clone()).await;
    let agents =
        [fake_agent(&agent_api, "host-a", Mode::Replay).await, fake_agent(&agent_api, "host-b", Mode::Replay).await];
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let sql = PgPool::connect(&app.db_url).await.unwrap();

    let run = |request: (StatusCode, Value)| {
        let (app, owner, replayed, sql) = (&app, &owner, &replayed, &sql);
        async move { settled(replayed, sql, run_op(app, owner, request).await).await }
    };
    let created =
        run(owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "r", "plan": "business-2" })).await)
            .await;
    let db = created["database_id"].as_str().unwrap().to_string();
    let observe_roles = |leader: &'static str| {
        let (agent_api, agents, db) = (&agent_api, &agents, &db);
        async move {
            for a in agents {
                let m = member_of(a, db).unwrap();
                let lead = m == leader;
                observe(agent_api, a, db, &m, if lead { "leader" } else { "replica" }, !lead).await;
            }
        }
    };
    let path = format!("/v1/databases/{db}");
    observe_roles("m0").await;
    run(owner.post(&format!("{path}/switchover"), &json!({})).await).await;
    observe_roles("m1").await;
    run(owner.post(&format!("{path}/change-plan"), &json!({ "plan": "business-4" })).await).await;
    run(owner.patch(&format!("{path}/configuration"), &json!({ "parameters": { "work_mem": 8192 } })).await).await;
    run(owner.post(&format!("{path}/restart"), &json!({})).await).await;
    run(owner.patch(&format!("{path}/settings"), &json!({ "allowed_cidrs": ["10.0.0.0/8"] })).await).await;
    run(owner.post(&format!("{path}/change-plan"), &json!({ "plan": "starter-1" })).await).await;
    run(owner.delete(&path).await).await;

    let problems: Vec<String> = problems
        .lock()
        .unwrap()
        .iter()
        .chain(agents.iter().flat_map(|a| a.problems.lock().unwrap().clone()).collect::<Vec<_>>().iter())
        .cloned()
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // Every agent job came twice, the same task both times.
    for a in &agents {
        let seen = a.seen.lock().unwrap();
        for (job, attempt, task) in seen.iter().filter(|(_, attempt, _)| *attempt == 1) {
            let again: Vec<_> = seen.iter().filter(|(j, a, _)| j == job && *a > *attempt).collect();
            assert_eq!(again.len(), 1, "job {job} ({}) came again once", kind_of(task));
            assert_eq!(&again[0].2, task, "a re-claimed job carries the same task");
        }
    }
    // Each step of each operation ran once (its replays failed), and every kind of workflow ran.
    let twice: Vec<(String, Option<Value>, i64)> = sqlx::query_as(
        "SELECT o.kind, j.payload->'step', count(*) FROM jobs j JOIN operations o ON o.id = j.operation_id \
         WHERE j.queue = 'scheduler' GROUP BY 1, 2, j.operation_id HAVING count(*) > 1",
    )
    .fetch_all(&sql)
    .await
    .unwrap();
    assert!(twice.is_empty(), "steps enqueued twice: {twice:?}");
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT kind FROM operations ORDER BY kind").fetch_all(&sql).await.unwrap();
    assert_eq!(kinds, ["change_plan", "configure", "create", "delete", "restart", "switchover", "update_settings"]);
    let replayed = replayed.lock().unwrap().len();
    let steps: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = 'scheduler'").fetch_one(&sql).await.unwrap();
    assert_eq!(replayed as i64, steps, "every step was replayed");
}

/// A platform of fake agents on one app database; `lost_after` as the harness sets it.
struct Lab {
    app: TestApp,
    agent_api: String,
    owner: Client,
    app_id: String,
}

async fn lab() -> Lab {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    Lab { app, agent_api, owner, app_id }
}

impl Lab {
    /// A Business database on agents `a` and `b`, `a` leading; returns its id.
    async fn business(&self, a: &FakeAgent, b: &FakeAgent) -> String {
        let op = self
            .owner
            .post(&format!("/v1/apps/{}/databases", self.app_id), &json!({ "name": "lost", "plan": "business-2" }))
            .await;
        let db = run_op(&self.app, &self.owner, op).await["database_id"].as_str().unwrap().to_string();
        let (ma, mb) = (member_of(a, &db).unwrap(), member_of(b, &db).unwrap());
        observe(&self.agent_api, a, &db, &ma, "leader", false).await;
        observe(&self.agent_api, b, &db, &mb, "replica", true).await;
        db
    }

    /// Waits for an operation to end in `error` within `within`; returns its error.
    async fn fails(&self, (status, op): (StatusCode, Value), within: Duration) -> String {
        assert_eq!(status, StatusCode::ACCEPTED, "{op}");
        let t = Instant::now();
        let done = self.app.wait_operation(&self.owner, op["id"].as_str().unwrap(), within).await;
        assert_eq!(done["status"], "error", "{done}");
        let error = done["error"].as_str().unwrap().to_string();
        eprintln!("{} ended in error after {:?}: {error}", op["kind"], t.elapsed());
        assert!(error.contains("stopped responding") && error.contains("(job "), "{error}");
        assert!(
            !error.contains("agent:") && !error.contains("host-") && !error.contains("127.0.0.1"),
            "host detail: {error}"
        );
        error
    }
}

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
