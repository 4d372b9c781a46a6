//! Every step of every workflow run twice changes nothing the second time: a scheduler step
//! replayed by a stale worker right after it committed, an agent job claimed again after its
//! agent restarted (the same task both times), a report sent twice (the second refused).

use pgplane_core::ids::DatabaseId;
use pgplane_scheduler::queue::{Done, Handler, JobError};
use pgplane_scheduler::workflows::Workflows;
use pgplane_store::jobs::Claimed;
use pgplane_tests::fake_agent::{fake_agent, kind_of, member_of, observe, run_op, Mode};
use pgplane_tests::{spawn_app, unused_etcd, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let config = pgplane_tests::scheduler_config(unused_etcd());
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
