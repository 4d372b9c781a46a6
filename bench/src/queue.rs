//! `queue`: the job queue on a private, durable PostgreSQL.
//!
//! 1. enqueue → claim latency with an idle consumer woken by LISTEN/NOTIFY, jobs enqueued one at
//!    a time with a small gap: through `Wakers` + a bare claim loop, and through the real
//!    `run_worker` (time until the handler starts);
//! 2. throughput of no-op jobs: N enqueued first, then drained by `run_worker` at several
//!    concurrencies; and one at a time by hand: claim + complete in separate commits (the
//!    store's calls), in one transaction, and ten claimed per statement.

use anyhow::{bail, Context, Result};
use pgplane_core::ids::{JobId, LeaseId};
use pgplane_scheduler::queue::{run_worker, Done, Handler, JobError, Wakers, WorkerConfig};
use pgplane_store::jobs::{job_complete_in, Claimed, NewJob};
use pgplane_store::Store;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

use crate::controlpg::ControlPg;
use crate::figures::{busy_percent, cpu_times, footer, header, met, ms, Summary, Table};

#[derive(clap::Args)]
pub struct Args {
    /// Jobs enqueued one at a time for each latency run.
    #[arg(long, default_value_t = 2000)]
    latency_jobs: usize,
    /// Pause after each enqueue of the latency runs, in milliseconds.
    #[arg(long, default_value_t = 2)]
    gap_ms: u64,
    /// Jobs enqueued before each throughput run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// `run_worker` concurrencies to drain with (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    concurrency: Vec<usize>,
    /// Each throughput run stops after this many seconds (the rate is then of what was done).
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Run the control-plane PostgreSQL with fsync off (as the tests do) instead of durable.
    #[arg(long)]
    no_fsync: bool,
}

const LEASE: Duration = Duration::from_secs(30);

pub async fn run(args: Args) -> Result<()> {
    header("queue: enqueue → claim latency and throughput of no-op jobs");
    let mut pg = ControlPg::start(!args.no_fsync).await?;
    let result = measure(&args, &pg).await;
    pg.stop();
    let rows = result?;
    print(&args, &pg, &rows);
    footer();
    Ok(())
}

/// One printed figure: what, the value, the goal (and whether met), this machine's limit.
struct Row {
    what: String,
    value: String,
    goal: String,
    limit: &'static str,
}

async fn measure(args: &Args, pg: &ControlPg) -> Result<Vec<Row>> {
    let store = Store::connect(&pg.url, 24).await?;
    store.migrate().await?;
    let mut rows = Vec::new();

    let (lat, enq) = latency_bare(&store, args).await?;
    let enq = Summary::of(&enq).context("no enqueues")?;
    rows.push(Row {
        what: format!("enqueue (INSERT + NOTIFY, one commit) p50 / p99, {} jobs", enq.n),
        value: format!("{} / {}", ms(enq.p50), ms(enq.p99)),
        goal: "-".into(),
        limit: "~0.08 ms (12,600/s)",
    });
    for (name, s) in [("Wakers + claim loop", lat), ("run_worker, handler start", latency_worker(&store, args).await?)]
    {
        let s = Summary::of(&s).context("no latencies")?;
        rows.push(Row {
            what: format!("enqueue → claimed, {name}: p50"),
            value: ms(s.p50),
            goal: format!("≤ 2 ms: {}", met(s.p50 <= 0.002)),
            limit: "~0.86 ms",
        });
        rows.push(Row {
            what: format!("enqueue → claimed, {name}: p99"),
            value: ms(s.p99),
            goal: format!("≤ 10 ms: {}", met(s.p99 <= 0.010)),
            limit: "~1.3 ms",
        });
        rows.push(Row {
            what: format!("enqueue → claimed, {name}: max"),
            value: ms(s.max),
            goal: "-".into(),
            limit: "",
        });
    }

    let last = args.concurrency.last().copied();
    let runs = args.concurrency.iter().map(|&c| (c, true)).chain(last.map(|c| (c, false)));
    for (c, ping) in runs {
        let queue = format!("drain-{c}-{ping}");
        let rate = enqueue_many(&store, &queue, args.jobs).await?;
        rows.push(Row {
            what: format!("enqueue {} jobs one at a time (Store::job_enqueue, for the next row)", args.jobs),
            value: format!("{rate:.0} jobs/s"),
            goal: "-".into(),
            limit: "~12,600/s (plain INSERT)",
        });
        let cpu = cpu_times();
        let (done, secs) = drain_with_worker(&pg.url, &queue, args.jobs, c, ping, args.max_seconds).await?;
        let busy = busy_percent(cpu, cpu_times());
        let rate = done as f64 / secs;
        let how = if ping { "" } else { ", pool without test_before_acquire (diagnostic)" };
        rows.push(Row {
            what: format!("run_worker, concurrency {c}{how}: {done} jobs in {secs:.2} s, machine {busy:.0}% busy"),
            value: format!("{rate:.0} jobs/s"),
            goal: format!("≥ 4,000/s: {}", met(rate >= 4000.0)),
            limit: "~5,500/s (1 tx/job, 1 conn.)",
        });
        vacuum(&store).await?;
    }

    for (variant, what, limit) in [
        (Variant::SeparateCommits, "claim 1 + complete in two commits, Store calls (pool)", "~4,100/s"),
        (Variant::OneTransaction, "claim 1 + complete in one transaction, one connection", "~5,500/s"),
        (Variant::TenPerStatement, "claim 10 per statement + complete, one tx, one connection", "~22,000/s"),
    ] {
        let queue = format!("manual-{variant:?}");
        enqueue_many(&store, &queue, args.jobs).await?;
        let cpu = cpu_times();
        let (done, secs) = drain_by_hand(&store, &queue, args.jobs, variant, args.max_seconds).await?;
        let busy = busy_percent(cpu, cpu_times());
        let rate = done as f64 / secs;
        rows.push(Row {
            what: format!("{what}: {done} jobs in {secs:.2} s, machine {busy:.0}% busy"),
            value: format!("{rate:.0} jobs/s"),
            goal: "-".into(),
            limit,
        });
        vacuum(&store).await?;
    }
    store.pool().close().await;
    Ok(rows)
}

fn print(args: &Args, pg: &ControlPg, rows: &[Row]) {
    println!();
    println!(
        "control plane: {}; latency runs: {} jobs each, {} ms apart; throughput runs: {} no-op jobs each",
        pg.describe(),
        args.latency_jobs,
        args.gap_ms,
        args.jobs
    );
    let mut t = Table::new(&["measurement", "figure", "goal", "limit here (FACTS.md)"]);
    for r in rows {
        t.row(vec![r.what.clone(), r.value.clone(), r.goal.clone(), r.limit.to_string()]);
    }
    t.print();
}

async fn vacuum(store: &Store) -> Result<()> {
    sqlx::query("VACUUM ANALYZE jobs").execute(store.pool()).await?;
    sqlx::query("VACUUM ANALYZE job_attempts").execute(store.pool()).await?;
    Ok(())
}

/// A listener and a claim loop that complete each job at once. Returns the latencies
/// (enqueue call started → claim answered) and the enqueue calls' durations, in seconds.
async fn latency_bare(store: &Store, args: &Args) -> Result<(Vec<f64>, Vec<f64>)> {
    let queue = "latency-bare";
    let n = args.latency_jobs;
    let (stop_tx, stop_rx) = watch::channel(false);
    let wakers = Wakers::default();
    let notify = wakers.for_queue(queue);
    let listener = tokio::spawn(wakers.clone().listen(store.clone(), stop_rx.clone()));
    let claimed_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let consumer = {
        let (store, claimed_at, mut stop) = (store.clone(), claimed_at.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < n {
                let jobs = store.job_claim(queue, "bench-bare", LEASE, 10).await?;
                let now = Instant::now();
                for job in &jobs {
                    if let Some(i) = job.payload["n"].as_u64() {
                        claimed_at.lock().unwrap()[i as usize] = Some(now);
                    }
                }
                // Completed aside, so the loop is back to claiming at once (as run_worker does).
                for job in &jobs {
                    let (store, id, lease) = (store.clone(), job.id, job.lease_id);
                    tokio::spawn(async move { store.job_complete(id, lease, &json!(null)).await });
                }
                seen += jobs.len();
                if jobs.is_empty() {
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let result = produce(store, queue, n, args.gap_ms, &claimed_at).await;
    let _ = stop_tx.send(true);
    let _ = listener.await;
    consumer.await??;
    result
}

/// The real worker; latency until the handler runs.
async fn latency_worker(store: &Store, args: &Args) -> Result<Vec<f64>> {
    let queue = "latency-worker";
    let n = args.latency_jobs;
    let (stop_tx, stop_rx) = watch::channel(false);
    let wakers = Wakers::default();
    let listener = tokio::spawn(wakers.clone().listen(store.clone(), stop_rx.clone()));
    let handler = Arc::new(Recording {
        started: Arc::new(Mutex::new(vec![None; n])),
        done: Arc::new(AtomicUsize::new(0)),
        all_done: Arc::new(Notify::new()),
        expect: n,
    });
    let worker = tokio::spawn(run_worker(
        store.clone(),
        WorkerConfig::new(queue, "bench-worker"),
        handler.clone(),
        wakers,
        stop_rx,
    ));
    let result = produce(store, queue, n, args.gap_ms, &handler.started).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while handler.done.load(Ordering::SeqCst) < n {
            handler.all_done.notified().await;
        }
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = listener.await;
    let _ = worker.await;
    result.map(|(lat, _)| lat)
}

/// Enqueues `n` jobs one at a time, `gap_ms` apart, after a warm-up job; then waits (up to
/// 10 s) until all were seen and returns (latencies, enqueue durations).
async fn produce(
    store: &Store,
    queue: &str,
    n: usize,
    gap_ms: u64,
    seen_at: &Mutex<Vec<Option<Instant>>>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    // Let the listener subscribe before the first job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut started = Vec::with_capacity(n);
    let mut enqueue = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        store.job_enqueue(&NewJob::new(queue, "noop", json!({ "n": i }))).await?;
        enqueue.push(t.elapsed().as_secs_f64());
        started.push(t);
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing = seen_at.lock().unwrap().iter().filter(|s| s.is_none()).count();
        if missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{missing} of {n} jobs on {queue} were not claimed within 10 s of the last enqueue");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen_at.lock().unwrap();
    let latencies =
        started.iter().zip(seen.iter()).map(|(t, s)| s.expect("checked").duration_since(*t).as_secs_f64()).collect();
    Ok((latencies, enqueue))
}

/// Records when each job's handler started; counts finished jobs.
struct Recording {
    started: Arc<Mutex<Vec<Option<Instant>>>>,
    done: Arc<AtomicUsize>,
    all_done: Arc<Notify>,
    expect: usize,
}

impl Handler for Recording {
    async fn run(&self, job: Claimed) -> Result<Done, JobError> {
        let now = Instant::now();
        if let Some(i) = job.payload["n"].as_u64() {
            if let Some(slot) = self.started.lock().unwrap().get_mut(i as usize) {
                slot.get_or_insert(now);
            }
        }
        if self.done.fetch_add(1, Ordering::SeqCst) + 1 >= self.expect {
            self.all_done.notify_one();
        }
        Ok(Done::Result(json!(null)))
    }
}

/// Enqueues `n` jobs one at a time; returns jobs/s.
async fn enqueue_many(store: &Store, queue: &str, n: usize) -> Result<f64> {
    let t = Instant::now();
    for i in 0..n {
        store.job_enqueue(&NewJob::new(queue, "noop", json!({ "n": i }))).await?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Drains `queue` with `run_worker`; returns (jobs recorded done, seconds). The clock stops
/// when the handler has run `n` times and every job is marked done in the table.
async fn drain_with_worker(
    url: &str,
    queue: &str,
    n: usize,
    concurrency: usize,
    ping: bool,
    max: u64,
) -> Result<(usize, f64)> {
    let pool = PgPoolOptions::new()
        .max_connections(concurrency as u32 + 4)
        .test_before_acquire(ping)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let store = Store::new(pool);
    let (stop_tx, stop_rx) = watch::channel(false);
    let wakers = Wakers::default();
    let listener = tokio::spawn(wakers.clone().listen(store.clone(), stop_rx.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handler = Arc::new(Recording {
        started: Arc::new(Mutex::new(Vec::new())),
        done: Arc::new(AtomicUsize::new(0)),
        all_done: Arc::new(Notify::new()),
        expect: n,
    });
    let mut config = WorkerConfig::new(queue, format!("bench-drain-{concurrency}"));
    config.concurrency = concurrency;
    let t = Instant::now();
    let worker = tokio::spawn(run_worker(store.clone(), config, handler.clone(), wakers, stop_rx));
    let deadline = t + Duration::from_secs(max);
    let done = loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1 AND status = 'done'")
            .bind(queue)
            .fetch_one(store.pool())
            .await?;
        if done as usize >= n || Instant::now() > deadline {
            break done as usize;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = listener.await;
    let _ = worker.await;
    store.pool().close().await;
    Ok((done, secs))
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    SeparateCommits,
    OneTransaction,
    TenPerStatement,
}

/// `Store::job_claim`'s statements, run inside the caller's transaction.
const CLAIM: &str = "WITH next AS ( \
        SELECT id FROM jobs WHERE queue = $1 AND status = 'queued' AND run_at <= now() \
        ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, lease_id = gen_random_uuid(), \
        lease_owner = $2, lease_expires_at = now() + interval '30 seconds', updated_at = now() \
     FROM next WHERE j.id = next.id RETURNING j.id, j.attempts, j.lease_id";
const ATTEMPTS: &str =
    "INSERT INTO job_attempts (job_id, attempt, worker) SELECT *, $3::text FROM UNNEST($1::uuid[], $2::int[])";

/// One consumer draining `queue` by hand; returns (jobs done, seconds).
async fn drain_by_hand(store: &Store, queue: &str, n: usize, variant: Variant, max: u64) -> Result<(usize, f64)> {
    let url = store.pool().connect_options();
    let mut conn = PgConnection::connect_with(&url).await?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(max);
    let mut done = 0;
    while done < n && Instant::now() < deadline {
        let got = match variant {
            Variant::SeparateCommits => {
                let jobs = store.job_claim(queue, "bench-hand", LEASE, 1).await?;
                for j in &jobs {
                    store.job_complete(j.id, j.lease_id, &json!(null)).await?;
                }
                jobs.len()
            }
            Variant::OneTransaction => claim_complete_in_one(&mut conn, queue, 1).await?,
            Variant::TenPerStatement => claim_complete_in_one(&mut conn, queue, 10).await?,
        };
        if got == 0 {
            break;
        }
        done += got;
    }
    let secs = t.elapsed().as_secs_f64();
    conn.close().await?;
    Ok((done, secs))
}

async fn claim_complete_in_one(conn: &mut PgConnection, queue: &str, limit: i64) -> Result<usize> {
    let mut tx = conn.begin().await?;
    let claimed: Vec<(JobId, i32, LeaseId)> =
        sqlx::query_as(CLAIM).bind(queue).bind("bench-hand").bind(limit).fetch_all(&mut *tx).await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<JobId> = claimed.iter().map(|c| c.0).collect();
    let attempts: Vec<i32> = claimed.iter().map(|c| c.1).collect();
    sqlx::query(ATTEMPTS).bind(&ids).bind(&attempts).bind("bench-hand").execute(&mut *tx).await?;
    for (id, _, lease) in &claimed {
        if !job_complete_in(&mut tx, *id, *lease, &json!(null)).await? {
            bail!("job {id} was not ours to complete");
        }
    }
    tx.commit().await?;
    Ok(claimed.len())
}
