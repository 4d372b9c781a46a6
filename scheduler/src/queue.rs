//! A queue worker: claims jobs of one queue under a lease, keeps the lease alive with
//! heartbeats while the handler runs, and records success, a retryable failure (with
//! exponential backoff) or a fatal one. Idle workers wake on PostgreSQL NOTIFY within
//! milliseconds of an enqueue, and poll once a second in case a notification was missed.

use pgplane_store::jobs::{AfterFailure, Claimed};
use pgplane_store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// The NOTIFY channel the jobs table's trigger speaks on (payload: the queue).
pub const CHANNEL: &str = "pgplane_jobs";

/// Why a job failed.
#[derive(Debug)]
pub enum JobError {
    /// Worth another attempt after a backoff (a host unreachable, a lock held).
    Retryable(String),
    /// Will never succeed (bad input, a resource that is gone): dead at once.
    Fatal(String),
    /// The platform cannot do what the operation asks (no host can run it): the operation ends
    /// in `error` with `tenant` (what the tenant can act on, no host details), the job dies with
    /// `operator` (the detail, for the job's `last_error` and the logs).
    Refused { tenant: String, operator: String },
}

impl JobError {
    /// A failure worth another attempt.
    pub fn retry(why: impl std::fmt::Display) -> Self {
        JobError::Retryable(why.to_string())
    }

    /// A failure another attempt cannot mend.
    pub fn fatal(why: impl std::fmt::Display) -> Self {
        JobError::Fatal(why.to_string())
    }
}

/// The one mapping of the domain error to a job's: what another attempt cannot mend (a row that
/// is gone, a conflict, input the store refuses) is fatal; the database or a dependency being
/// unavailable, or an internal failure, is retried.
impl From<pgplane_core::Error> for JobError {
    fn from(e: pgplane_core::Error) -> Self {
        use pgplane_core::Error as E;
        match e {
            E::Internal(_) | E::Unavailable(_) | E::RateLimited { .. } => JobError::Retryable(e.to_string()),
            E::NotFound { .. }
            | E::Validation { .. }
            | E::BadRequest { .. }
            | E::Conflict { .. }
            | E::Forbidden { .. }
            | E::Unauthorized { .. }
            | E::QuotaExceeded { .. }
            | E::PayloadTooLarge => JobError::Fatal(e.to_string()),
        }
    }
}

/// Our own wire types always serialize; one that does not is a bug no retry mends.
impl From<serde_json::Error> for JobError {
    fn from(e: serde_json::Error) -> Self {
        JobError::Fatal(format!("serializing a job: {e}"))
    }
}

/// What a tenant reads when a job of their operation died: which part of the work failed and
/// that the operators have the rest (the job's `last_error`, the logs). Never the job's own
/// error, which names host paths and ends with log tails.
pub fn tenant_error(task_kind: Option<&str>, job: pgplane_core::ids::JobId) -> String {
    let what = task_description(task_kind);
    format!(
        "{what} failed on the platform's side, not because of your request; the platform's operators \
         have the details (job {job}). Try again later, or contact support with the job id."
    )
}

/// What an agent task (by its `kind`) does, for tenants; a scheduler step without one.
pub fn task_description(task_kind: Option<&str>) -> &'static str {
    match task_kind {
        Some("ensure_member") => "starting or updating a PostgreSQL member",
        Some("ensure_gateway") => "starting or updating a gateway",
        Some("remove_database") => "removing the database's processes and data",
        Some("restart_member") => "restarting a member",
        Some("patch_config") => "applying the configuration",
        Some("switchover") => "moving the leader",
        Some("drain_member") => "draining a member in the gateways",
        Some("reinit_member") => "re-cloning a replica",
        Some("backup_dump") => "dumping the database into backup storage",
        Some("backup_restore") => "restoring the backup",
        Some("backup_verify") => "verifying the backup",
        _ => "a step of the operation",
    }
}

/// How a job succeeded.
#[derive(Debug)]
pub enum Done {
    /// Record this as the job's result.
    Result(serde_json::Value),
    /// The handler already completed the job inside its own transaction (with `job_complete_in`),
    /// together with the step's effects.
    Committed,
}

/// Runs one claimed job.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, job: Claimed) -> impl Future<Output = Result<Done, JobError>> + Send;
}

/// Wakes the workers of a queue when a job is enqueued on it.
#[derive(Clone, Default)]
pub struct Wakers {
    queues: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Wakers {
    pub fn for_queue(&self, queue: &str) -> Arc<Notify> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).entry(queue.to_string()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        if let Some(n) = self.queues.lock().unwrap_or_else(|e| e.into_inner()).get(queue) {
            n.notify_waiters();
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        for n in self.queues.lock().unwrap_or_else(|e| e.into_inner()).values() {
            n.notify_waiters();
            n.notify_one();
        }
    }

    /// Listens for NOTIFY until `shutdown` turns true, reconnecting after errors. After a
    /// reconnect every queue is woken, since notifications may have been missed meanwhile.
    pub async fn listen(self, store: Store, mut shutdown: watch::Receiver<bool>) {
        loop {
            let mut listener = match store.listener().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "job listener cannot connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            self.wake_all();
            loop {
                tokio::select! {
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => self.wake(n.payload()),
                        Ok(None) => { self.wake_all(); }
                        Err(e) => { tracing::warn!(error = %e, "job listener lost its connection"); break; }
                    },
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Tunables of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub queue: String,
    /// Name recorded in attempts and leases (host and process).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// A claim lasts this long without a heartbeat.
    pub lease: Duration,
    /// First retry delay; doubles each attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl WorkerConfig {
    pub fn new(queue: impl Into<String>, name: impl Into<String>) -> Self {
        WorkerConfig {
            queue: queue.into(),
            name: name.into(),
            concurrency: 8,
            lease: Duration::from_secs(30),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }

    /// Backoff before attempt `attempts + 1`, with ±20% jitter.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = self.base_backoff.saturating_mul(1u32 << attempts.clamp(0, 20).saturating_sub(1));
        let capped = exp.min(self.max_backoff);
        capped.mul_f64(0.8 + rand::random::<f64>() * 0.4)
    }
}

/// Runs `handler` on the jobs of `config.queue` until `shutdown` turns true; jobs in flight
/// then finish (or their lease expires and another worker retries them).
pub async fn run_worker<H: Handler>(
    store: Store,
    config: WorkerConfig,
    handler: Arc<H>,
    wakers: Wakers,
    mut shutdown: watch::Receiver<bool>,
) {
    let notify = wakers.for_queue(&config.queue);
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let config = Arc::new(config);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match store.job_claim(&config.queue, &config.name, config.lease, free as i64).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %config.queue, "claiming jobs failed");
                    Vec::new()
                }
            }
        };
        let got = claimed.len();
        for job in claimed {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let (store, config, handler, notify) = (store.clone(), config.clone(), handler.clone(), notify.clone());
            tokio::spawn(async move {
                run_one(&store, &config, handler.as_ref(), job).await;
                drop(permit);
                // A slot is free: look for more work at once.
                notify.notify_one();
            });
        }
        if got == 0 || slots.available_permits() == 0 {
            // Wait for a NOTIFY, a finished job freeing a slot, or the poll interval.
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    // Let jobs in flight finish.
    let _ = slots.acquire_many(config.concurrency as u32).await;
}

async fn run_one<H: Handler>(store: &Store, config: &WorkerConfig, handler: &H, job: Claimed) {
    let (id, lease, attempts, kind) = (job.id, job.lease_id, job.attempts, job.kind.clone());
    let heartbeat = {
        let store = store.clone();
        let every = config.lease / 3;
        let extend = config.lease;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.job_heartbeat(id, lease, extend).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job = %id, "lease lost while running");
                        return;
                    }
                    Err(e) => tracing::warn!(job = %id, error = %e, "heartbeat failed"),
                }
            }
        })
    };
    let operation = job.operation_id;
    let outcome = handler.run(job).await;
    heartbeat.abort();
    // What the tenant reads when this job's death ends its operation.
    let tenant = match &outcome {
        Err(JobError::Refused { tenant, .. }) => Some(tenant.clone()),
        _ => None,
    };
    let recorded = match outcome {
        Ok(Done::Committed) => Ok("done"),
        Ok(Done::Result(result)) => {
            store.job_complete(id, lease, &result).await.map(|ok| if ok { "done" } else { "lease lost" })
        }
        Err(JobError::Retryable(e)) => {
            store.job_fail(id, lease, &e, Some(config.backoff(attempts))).await.map(|after| match after {
                AfterFailure::Retrying => "retrying",
                AfterFailure::Dead => "dead",
                AfterFailure::LeaseLost => "lease lost",
            })
        }
        Err(JobError::Fatal(e) | JobError::Refused { operator: e, .. }) => {
            store.job_fail(id, lease, &e, None).await.map(|_| "dead")
        }
    };
    if let (Ok("dead"), Some(op)) = (&recorded, operation) {
        crate::engine::operation_job_died(store, op, id, None, tenant).await;
    }
    match recorded {
        Ok(state) => tracing::debug!(job = %id, %kind, attempts, state, "job finished"),
        // The lease will expire and the job will run again: handlers are idempotent.
        Err(e) => tracing::warn!(job = %id, error = %e, "could not record a job's outcome"),
    }
}

/// Reaps expired leases every `every` until shutdown.
pub async fn run_reaper(store: Store, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match store.job_reap_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "requeued jobs whose lease expired"),
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
