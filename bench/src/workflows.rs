//! `workflows`: many operations at once through the real API and scheduler (in this process, on
//! a private durable PostgreSQL), with in-process fake agents that answer every task over the
//! agent HTTP API after `--task-ms`. `--databases` databases are created at once, then all
//! change plan at once, then all are deleted at once. Printed per phase: operations done /
//! error / unfinished at the timeout, the time until the last one ended, the latency of a step
//! (job enqueued → done, scheduler steps and agent tasks apart), attempts that were retried or
//! whose lease expired, and the fake agents' heartbeat round trips meanwhile (a heartbeat must
//! never wait behind workflow steps).

use anyhow::{bail, Context, Result};
use pgplane_api::{ApiConfig, AppState, JwtKeys};
use pgplane_core::agent::AgentJob;
use pgplane_core::model::CreateUser;
use pgplane_store::Store;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::controlpg::ControlPg;
use crate::figures::{dur, footer, header, ms, Summary, Table};

#[derive(clap::Args)]
pub struct Args {
    /// Databases created, changed and deleted at once.
    #[arg(long, default_value_t = 50)]
    databases: usize,
    /// Fake agents (hosts) they are placed on.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    #[arg(long, default_value = "starter-1")]
    plan: String,
    /// The plan every database changes to.
    #[arg(long, default_value = "starter-2")]
    to_plan: String,
    /// How long a fake agent works on each task before it reports.
    #[arg(long, default_value_t = 100)]
    task_ms: u64,
    /// Tasks a fake agent runs at once (the agent runs one at a time).
    #[arg(long, default_value_t = 1)]
    agent_concurrency: usize,
    /// Connections of the scheduler's pool (as `pgplane scheduler` opens).
    #[arg(long, default_value_t = pgplane_scheduler::run::POOL_SIZE)]
    scheduler_pool: u32,
    /// A phase stops waiting after this many seconds and counts what has not ended.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Run the control-plane PostgreSQL with fsync off instead of durable.
    #[arg(long)]
    no_fsync: bool,
}

const BOOTSTRAP: &str = "bench-bootstrap";

pub async fn run(args: Args) -> Result<()> {
    header(&format!(
        "workflows: {} databases created, changed and deleted at once on {} fake agents",
        args.databases, args.agents
    ));
    let mut pg = ControlPg::start(!args.no_fsync).await?;
    let result = measure(&args, &pg).await;
    pg.stop();
    let phases = result?;
    println!();
    println!(
        "control plane: {}; API and scheduler (pool of {} connections, default worker) in this process; fake \
         agents answer each task after {} ms, {} task(s) at once each, heartbeat every second",
        pg.describe(),
        args.scheduler_pool,
        args.task_ms,
        args.agent_concurrency
    );
    let mut t = Table::new(&[
        "phase",
        "done / error / unfinished",
        "until the last ended",
        "step p50",
        "step p99",
        "step max",
        "agent task p50 / p99",
        "retried / lease expired attempts",
        "heartbeat p50 / p99 / max",
    ]);
    for p in &phases {
        let steps = Summary::of(&p.scheduler_steps);
        let tasks = Summary::of(&p.agent_tasks);
        let beats = Summary::of(&p.heartbeats);
        t.row(vec![
            p.name.clone(),
            format!("{} / {} / {}", p.done, p.error, p.unfinished),
            dur(p.total),
            steps.map_or("-".into(), |s| ms(s.p50)),
            steps.map_or("-".into(), |s| ms(s.p99)),
            steps.map_or("-".into(), |s| ms(s.max)),
            tasks.map_or("-".into(), |s| format!("{} / {}", ms(s.p50), ms(s.p99))),
            format!("{} / {}", p.retried, p.lease_expired),
            beats.map_or("-".into(), |s| format!("{} / {} / {}", ms(s.p50), ms(s.p99), ms(s.max))),
        ]);
    }
    t.print();
    println!();
    println!(
        "step: a scheduler job of these operations, enqueued → done; agent task: an agent job, enqueued → \
         reported (includes the {} ms of work)",
        args.task_ms
    );
    for p in &phases {
        for line in &p.notes {
            println!("{}: {line}", p.name);
        }
    }
    footer();
    Ok(())
}

/// What one phase measured.
struct Phase {
    name: String,
    done: usize,
    error: usize,
    unfinished: usize,
    total: f64,
    scheduler_steps: Vec<f64>,
    agent_tasks: Vec<f64>,
    retried: i64,
    lease_expired: i64,
    heartbeats: Vec<f64>,
    notes: Vec<String>,
}

async fn measure(args: &Args, pg: &ControlPg) -> Result<Vec<Phase>> {
    let admin = Store::connect(&pg.url, 4).await?;
    admin.migrate().await?;
    let (stop, stopped) = watch::channel(false);

    // The API.
    let api_store = Store::connect(&pg.url, 16).await?;
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let state = AppState::new(
        api_store,
        JwtKeys::from_secret(&secret),
        &ApiConfig { rate_per_second: 100_000, rate_burst: 100_000 },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let mut api_stop = stopped.clone();
    tokio::spawn(pgplane_api::serve(listener, state, async move {
        let _ = api_stop.wait_for(|s| *s).await;
    }));

    // The scheduler, without etcd (fake agents run no Patroni).
    let scheduler_store = Store::connect(&pg.url, args.scheduler_pool).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_api = format!("http://{}", listener.local_addr()?);
    let config = pgplane_scheduler::config::SchedulerConfig {
        etcd: pgplane_core::agent::EtcdAccess {
            endpoints: Vec::new(),
            protocol: "http".into(),
            ca_pem: None,
            username: None,
            password: None,
        },
        bootstrap_token: BOOTSTRAP.into(),
        gateway_vips: None,
        not_streaming_grace: pgplane_scheduler::truth::NOT_STREAMING_GRACE,
        agent_lost_after: pgplane_scheduler::engine::AGENT_LOST_AFTER,
        backup_storage: None,
    };
    tokio::spawn(pgplane_scheduler::run::run(scheduler_store, config, listener, stopped.clone()));

    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let heartbeats = Arc::new(Mutex::new(Vec::new()));
    let counters = Counters::default();
    for i in 0..args.agents {
        start_fake_agent(&http, &agent_api, i, args, heartbeats.clone(), counters.clone(), stopped.clone()).await?;
    }

    // A tenant's owner with an app.
    let user = admin
        .user_create(&CreateUser { email: "owner@bench.test".into(), name: "owner".into(), platform_role: None })
        .await?;
    let (_, token) = admin.token_create(user.id, "bench", None).await?;
    let access: Value =
        http.post(format!("{api}/v1/auth/token")).json(&json!({ "api_token": token })).send().await?.json().await?;
    let bearer = access["access_token"].as_str().context("access token")?.to_string();
    let client = Api { http: http.clone(), base: api.clone(), bearer, unavailable: Arc::default() };
    let tenant = client.call("POST", "/v1/tenants", Some(json!({ "name": "bench" }))).await?;
    let tenant = tenant["id"].as_str().context("tenant id")?.to_string();
    let app = client.call("POST", &format!("/v1/tenants/{tenant}/apps"), Some(json!({ "name": "web" }))).await?;
    let app = app["id"].as_str().context("app id")?.to_string();

    let mut phases = Vec::new();
    let mut databases = Vec::new();
    let create: Vec<(String, Option<Value>)> = (0..args.databases)
        .map(|i| (format!("/v1/apps/{app}/databases"), Some(json!({ "name": format!("db{i:03}"), "plan": args.plan }))))
        .collect();
    let (created, ops) = phase(&admin, &client, "create", "POST", create, args, &heartbeats, &counters).await?;
    for op in &ops {
        databases.push(op["database_id"].as_str().context("database id")?.to_string());
    }
    phases.push(created);
    let change: Vec<_> = databases
        .iter()
        .map(|d| (format!("/v1/databases/{d}/change-plan"), Some(json!({ "plan": args.to_plan }))))
        .collect();
    let name = format!("change plan → {}", args.to_plan);
    phases.push(phase(&admin, &client, &name, "POST", change, args, &heartbeats, &counters).await?.0);
    let delete: Vec<_> = databases.iter().map(|d| (format!("/v1/databases/{d}"), None)).collect();
    phases.push(phase(&admin, &client, "delete", "DELETE", delete, args, &heartbeats, &counters).await?.0);

    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin.pool().close().await;
    Ok(phases)
}

/// Sends every request at once, waits until every operation ended (or the timeout), and reads
/// the jobs of those operations.
#[allow(clippy::too_many_arguments)]
async fn phase(
    admin: &Store,
    client: &Api,
    name: &str,
    method: &str,
    requests: Vec<(String, Option<Value>)>,
    args: &Args,
    heartbeats: &Mutex<Vec<f64>>,
    counters: &Counters,
) -> Result<(Phase, Vec<Value>)> {
    heartbeats.lock().unwrap().clear();
    let lost_before = counters.lease_lost.load(Ordering::SeqCst);
    let refused_before = counters.reports_refused.load(Ordering::SeqCst);
    let unavailable_before = client.unavailable.load(Ordering::SeqCst);
    let started = Instant::now();
    let calls = requests.iter().map(|(path, body)| client.call(method, path, body.clone()));
    let answers = futures_join_all(calls).await;
    let mut ops = Vec::new();
    for a in answers {
        let op = a?;
        if op["id"].is_null() {
            bail!("{name}: not an operation: {op}");
        }
        ops.push(op);
    }
    let ids: Vec<uuid::Uuid> =
        ops.iter().map(|o| o["id"].as_str().unwrap_or_default().parse()).collect::<Result<_, _>>()?;
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM operations WHERE id = ANY($1) AND status IN ('pending', 'running')",
        )
        .bind(&ids)
        .fetch_one(admin.pool())
        .await?;
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed().as_secs_f64();
    let unavailable = client.unavailable.load(Ordering::SeqCst) - unavailable_before;
    let statuses: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT status, step, error FROM operations WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(admin.pool())
            .await?;
    let count = |s: &str| statuses.iter().filter(|(x, _, _)| x == s).count();
    let mut notes = Vec::new();
    for (status, step, error) in statuses.iter().filter(|(s, _, _)| s != "done").take(5) {
        notes.push(format!("an operation ended {status} at step {step:?}: {error:?}"));
    }
    let jobs: Vec<(String, f64)> = sqlx::query_as(
        "SELECT queue, EXTRACT(EPOCH FROM finished_at - created_at)::float8 FROM jobs \
         WHERE operation_id = ANY($1) AND status = 'done'",
    )
    .bind(&ids)
    .fetch_all(admin.pool())
    .await?;
    let (agent, scheduler): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(q, _)| q.starts_with("agent:"));
    let attempts: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT a.outcome, count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE j.operation_id = ANY($1) GROUP BY a.outcome",
    )
    .bind(&ids)
    .fetch_all(admin.pool())
    .await?;
    let of = |o: &str| attempts.iter().filter(|(x, _)| x.as_deref() == Some(o)).map(|(_, n)| n).sum::<i64>();
    // Where the slowest steps spent their time: waiting to be claimed, or running.
    let slow: Vec<(String, Option<String>, f64, f64, i32)> = sqlx::query_as(
        "SELECT j.kind, j.payload->>'step', EXTRACT(EPOCH FROM a.started_at - j.created_at)::float8, \
            EXTRACT(EPOCH FROM j.finished_at - a.started_at)::float8, j.attempts \
         FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = j.attempts \
         WHERE j.operation_id = ANY($1) AND j.status = 'done' AND j.queue NOT LIKE 'agent:%' \
         ORDER BY j.finished_at - j.created_at DESC LIMIT 3",
    )
    .bind(&ids)
    .fetch_all(admin.pool())
    .await?;
    for (kind, step, waited, ran, attempts) in slow {
        notes.push(format!(
            "a slow step: {kind} {:?}, waited {} to be claimed, then ran {} (attempt {attempts})",
            step.unwrap_or_else(|| "start".into()),
            ms(waited),
            ms(ran)
        ));
    }
    let errors: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT a.error FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE j.operation_id = ANY($1) AND a.error IS NOT NULL LIMIT 5",
    )
    .bind(&ids)
    .fetch_all(admin.pool())
    .await?;
    for (e,) in errors {
        notes.push(format!("a failed attempt: {e}"));
    }
    if unavailable > 0 {
        notes.push(format!(
            "{unavailable} request(s) answered 503 (the API's pool timed out after 5 s) and were sent again"
        ));
    }
    let lost = counters.lease_lost.load(Ordering::SeqCst) - lost_before;
    if lost > 0 {
        notes.push(format!("{lost} agent report(s) answered 409 lease lost"));
    }
    let refused = counters.reports_refused.load(Ordering::SeqCst) - refused_before;
    if refused > 0 {
        notes.push(format!("{refused} agent report(s) failed (not 409) and were sent again a second later"));
    }
    let phase = Phase {
        name: name.to_string(),
        done: count("done"),
        error: count("error") + count("canceled"),
        unfinished: count("pending") + count("running"),
        total,
        scheduler_steps: scheduler.into_iter().map(|(_, s)| s).collect(),
        agent_tasks: agent.into_iter().map(|(_, s)| s).collect(),
        retried: of("retryable") + of("fatal"),
        lease_expired: of("lease_expired"),
        heartbeats: heartbeats.lock().unwrap().clone(),
        notes,
    };
    Ok((phase, ops))
}

/// Runs futures at once, in order of their answers' positions.
async fn futures_join_all<F: std::future::Future<Output = Result<Value>> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<Result<Value>> {
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| Err(anyhow::anyhow!("request task: {e}"))));
    }
    out
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    bearer: String,
    /// 503 answers (the API's pool timed out), retried.
    unavailable: Arc<AtomicUsize>,
}

impl Api {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> impl std::future::Future<Output = Result<Value>> + Send + 'static {
        let me = self.clone();
        let (method, path) = (method.to_string(), path.to_string());
        async move {
            let method: reqwest::Method = method.parse()?;
            // A 503 says "retry shortly": a client does, and the phase counts it.
            for _ in 0..20 {
                let mut rb = me.http.request(method.clone(), format!("{}{path}", me.base)).bearer_auth(&me.bearer);
                if let Some(b) = &body {
                    rb = rb.json(b);
                }
                let res = rb.send().await?;
                let status = res.status();
                let answer: Value = res.json().await.unwrap_or(Value::Null);
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    me.unavailable.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                if !status.is_success() {
                    bail!("{path}: {status} {answer}");
                }
                return Ok(answer);
            }
            bail!("{path}: 503 twenty times")
        }
    }
}

/// What the fake agents count.
#[derive(Clone, Default)]
struct Counters {
    /// Reports answered 409 (lease lost).
    lease_lost: Arc<AtomicUsize>,
    /// Reports that failed otherwise (and were sent again).
    reports_refused: Arc<AtomicUsize>,
}

/// Registers fake agent `i` and starts its pollers (tasks of several databases at once, as a
/// real agent runs them) and its heartbeat, until `stop`.
async fn start_fake_agent(
    http: &reqwest::Client,
    agent_api: &str,
    i: usize,
    args: &Args,
    heartbeats: Arc<Mutex<Vec<f64>>>,
    counters: Counters,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let lease_lost = counters.lease_lost.clone();
    let reg: Value = http
        .post(format!("{agent_api}/agent/v1/register"))
        .json(&json!({
            "bootstrap_token": BOOTSTRAP, "name": format!("fake-{i}"), "host": format!("127.0.1.{}", i + 1),
            "memory_mb": 1_000_000, "disk_gb": 100_000, "port_min": 20000, "port_max": 29999
        }))
        .send()
        .await?
        .json()
        .await?;
    let credential = reg["credential"].as_str().with_context(|| format!("registering: {reg}"))?.to_string();
    let task = Duration::from_millis(args.task_ms);
    for _ in 0..args.agent_concurrency {
        let (http, base, credential, lease_lost, stop) =
            (http.clone(), agent_api.to_string(), credential.clone(), lease_lost.clone(), stop.clone());
        let reports_refused = counters.reports_refused.clone();
        tokio::spawn(async move {
            while !*stop.borrow() {
                let res =
                    match http.get(format!("{base}/agent/v1/jobs?wait_secs=2")).bearer_auth(&credential).send().await {
                        Ok(r) => r,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                if res.status() != reqwest::StatusCode::OK {
                    continue;
                }
                let Ok(job) = res.json::<AgentJob>().await else { continue };
                tokio::time::sleep(task).await;
                // As the agent does: up to 10 tries, a second apart; 409 is a lost lease.
                let report = json!({ "lease_id": job.lease_id, "outcome": "succeeded", "result": {} });
                for _ in 0..10 {
                    let answer = http
                        .post(format!("{base}/agent/v1/jobs/{}/report", job.job_id))
                        .bearer_auth(&credential)
                        .json(&report)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                            lease_lost.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        _ => {
                            reports_refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        });
    }
    let (http, base) = (http.clone(), agent_api.to_string());
    tokio::spawn(async move {
        while !*stop.borrow() {
            let t = Instant::now();
            let ok = http
                .post(format!("{base}/agent/v1/heartbeat"))
                .bearer_auth(&credential)
                .json(&json!({ "observed": { "members": [] } }))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                heartbeats.lock().unwrap().push(t.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(())
}
