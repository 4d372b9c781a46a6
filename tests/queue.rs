//! The job queue on real PostgreSQL: leases, fencing, retries with backoff, dead jobs,
//! exactly-once completion under concurrent workers, and NOTIFY wake-ups.

use pgplane_scheduler::queue::{run_reaper, run_worker, Done, Handler, JobError, Wakers, WorkerConfig};
use pgplane_store::jobs::{AfterFailure, Claimed, NewJob};
use pgplane_store::Store;
use pgplane_tests::fresh_database;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

async fn store() -> Store {
    Store::connect(&fresh_database().await.unwrap(), 10).await.unwrap()
}

async fn status(store: &Store, id: pgplane_core::ids::JobId) -> (String, i32) {
    let job = store.job_get(id).await.unwrap();
    (job.status.to_string(), job.attempts)
}

#[tokio::test]
async fn claim_complete_and_fencing() {
    let store = store().await;
    let id = store.job_enqueue(&NewJob::new("q", "noop", json!({ "n": 1 }))).await.unwrap();
    let claimed = store.job_claim("q", "w1", Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    assert_eq!(claimed[0].payload, json!({ "n": 1 }));
    // Claimed jobs are not handed out twice.
    assert!(store.job_claim("q", "w2", Duration::from_secs(30), 10).await.unwrap().is_empty());
    // Only the lease holder may finish it.
    let stranger = pgplane_core::ids::LeaseId::new();
    assert!(!store.job_complete(id, stranger, &json!({})).await.unwrap());
    assert!(store.job_complete(id, claimed[0].lease_id, &json!({ "ok": true })).await.unwrap());
    assert!(!store.job_complete(id, claimed[0].lease_id, &json!({})).await.unwrap(), "completing twice");
    assert_eq!(status(&store, id).await, ("done".into(), 1));
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM job_attempts WHERE job_id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(outcome, "succeeded");
}

#[tokio::test]
async fn retries_back_off_then_die() {
    let store = store().await;
    let mut job = NewJob::new("q", "flaky", json!({}));
    job.max_attempts = 2;
    let id = store.job_enqueue(&job).await.unwrap();
    let c = store.job_claim("q", "w", Duration::from_secs(30), 1).await.unwrap().remove(0);
    let after = store.job_fail(id, c.lease_id, "host unreachable", Some(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(after, AfterFailure::Retrying);
    // Backing off: not claimable before its time.
    assert!(store.job_claim("q", "w", Duration::from_secs(30), 1).await.unwrap().is_empty());
    sqlx::query("UPDATE jobs SET run_at = now() WHERE id = $1").bind(id).execute(store.pool()).await.unwrap();
    let c = store.job_claim("q", "w", Duration::from_secs(30), 1).await.unwrap().remove(0);
    assert_eq!(c.attempts, 2);
    let after = store.job_fail(id, c.lease_id, "still unreachable", Some(Duration::from_secs(1))).await.unwrap();
    assert_eq!(after, AfterFailure::Dead, "out of attempts");
    let job = store.job_get(id).await.unwrap();
    assert_eq!(job.last_error.as_deref(), Some("still unreachable"));
    let dead = store
        .job_list(pgplane_core::model::JobStatus::Dead, &pgplane_core::page::PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(dead.0.len(), 1);
    let attempts: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempt, outcome FROM job_attempts WHERE job_id = $1 ORDER BY attempt")
            .bind(id)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(attempts, vec![(1, "retryable".into()), (2, "retryable".into())]);
}

#[tokio::test]
async fn fatal_errors_kill_at_once() {
    let store = store().await;
    let id = store.job_enqueue(&NewJob::new("q", "bad", json!({}))).await.unwrap();
    let c = store.job_claim("q", "w", Duration::from_secs(30), 1).await.unwrap().remove(0);
    assert_eq!(store.job_fail(id, c.lease_id, "no such plan", None).await.unwrap(), AfterFailure::Dead);
    assert_eq!(status(&store, id).await, ("dead".into(), 1));
}

#[tokio::test]
async fn an_expired_lease_puts_the_job_back_and_fences_the_old_worker() {
    let store = store().await;
    let id = store.job_enqueue(&NewJob::new("q", "slow", json!({}))).await.unwrap();
    let old = store.job_claim("q", "dead-worker", Duration::from_millis(1), 1).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !store.job_heartbeat(id, old.lease_id, Duration::from_secs(30)).await.unwrap(),
        "an expired lease cannot be renewed"
    );
    assert_eq!(store.job_reap_expired().await.unwrap(), 1);
    let new = store.job_claim("q", "live-worker", Duration::from_secs(30), 1).await.unwrap().remove(0);
    assert_eq!(new.attempts, 2);
    // The stalled worker wakes up: its heartbeat, completion and failure are all refused.
    assert!(!store.job_heartbeat(id, old.lease_id, Duration::from_secs(30)).await.unwrap());
    assert!(!store.job_complete(id, old.lease_id, &json!({})).await.unwrap());
    assert_eq!(store.job_fail(id, old.lease_id, "late", Some(Duration::ZERO)).await.unwrap(), AfterFailure::LeaseLost);
    assert!(store.job_complete(id, new.lease_id, &json!({})).await.unwrap());
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM job_attempts WHERE job_id = $1 ORDER BY attempt")
            .bind(id)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(outcomes, vec!["lease_expired", "succeeded"]);
}

/// Counts runs per job; fails each job's first attempt when asked to.
struct Counting {
    runs: Arc<std::sync::Mutex<std::collections::HashMap<i64, usize>>>,
    done: Arc<AtomicUsize>,
    fail_first: bool,
}

impl Handler for Counting {
    async fn run(&self, job: Claimed) -> Result<Done, JobError> {
        let n = job.payload["n"].as_i64().unwrap();
        *self.runs.lock().unwrap().entry(n).or_default() += 1;
        if self.fail_first && job.attempts == 1 {
            return Err(JobError::Retryable("first attempt fails".into()));
        }
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(Done::Result(json!({ "n": n })))
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_complete_every_job_exactly_once() {
    let store = store().await;
    let (stop_tx, stop) = watch::channel(false);
    let wakers = Wakers::default();
    tokio::spawn(wakers.clone().listen(store.clone(), stop.clone()));
    let handler = Arc::new(Counting { runs: Default::default(), done: Default::default(), fail_first: true });
    let mut workers = Vec::new();
    for w in 0..3 {
        let mut config = WorkerConfig::new("q", format!("worker-{w}"));
        config.base_backoff = Duration::from_millis(10);
        workers.push(tokio::spawn(run_worker(store.clone(), config, handler.clone(), wakers.clone(), stop.clone())));
    }
    const N: i64 = 200;
    for n in 0..N {
        store.job_enqueue(&NewJob::new("q", "count", json!({ "n": n }))).await.unwrap();
    }
    let done = handler.done.clone();
    wait_until("every job to finish", || done.load(Ordering::SeqCst) == N as usize).await;
    let runs = handler.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), N as usize);
    assert!(runs.values().all(|&r| r == 2), "each job failed once and succeeded once: {runs:?}");
    let not_done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status <> 'done'").fetch_one(store.pool()).await.unwrap();
    assert_eq!(not_done, 0);
    stop_tx.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_s_job_is_retried_by_another() {
    let store = store().await;
    let (stop_tx, stop) = watch::channel(false);
    // A worker that claimed the job and died (never heartbeats).
    let id = store.job_enqueue(&NewJob::new("q", "count", json!({ "n": 7 }))).await.unwrap();
    store.job_claim("q", "killed", Duration::from_millis(200), 1).await.unwrap();
    let wakers = Wakers::default();
    tokio::spawn(wakers.clone().listen(store.clone(), stop.clone()));
    tokio::spawn(run_reaper(store.clone(), Duration::from_millis(100), stop.clone()));
    let handler = Arc::new(Counting { runs: Default::default(), done: Default::default(), fail_first: false });
    tokio::spawn(run_worker(store.clone(), WorkerConfig::new("q", "survivor"), handler.clone(), wakers, stop));
    let done = handler.done.clone();
    wait_until("the orphaned job to run", || done.load(Ordering::SeqCst) == 1).await;
    stop_tx.send(true).unwrap();
    wait_until_done(&store, id).await;
    assert_eq!(status(&store, id).await, ("done".into(), 2));
}

async fn wait_until_done(store: &Store, id: pgplane_core::ids::JobId) {
    for _ in 0..100 {
        if store.job_get(id).await.unwrap().status == pgplane_core::model::JobStatus::Done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never completed");
}
