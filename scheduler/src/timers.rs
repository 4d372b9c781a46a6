//! The scheduler's clock-driven work: a loop that fires due timers (the store's
//! `timer_fire_due`: each due time exactly once across schedulers, a missed one once), and a
//! worker for the jobs of the timer queue: the retention sweep, a timer made at start (`every`
//! N minutes, upserted by name, so several schedulers share one; it applies the backups'
//! retention too), and each database's daily backup (`crate::daily`). The clock is injectable:
//! tests move it.

use chrono::{DateTime, Utc};
use pgplane_core::timer::Schedule;
use pgplane_store::jobs::Claimed;
use pgplane_store::retention::Retention;
use pgplane_store::timers::{NewTimer, BACKUP_JOB, TIMER_QUEUE};
use pgplane_store::Store;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use crate::queue::{run_worker, Done, Handler, JobError, Wakers, WorkerConfig};

/// The retention sweep's timer and job kind.
pub const RETENTION_TIMER: &str = "retention";
pub const RETENTION_JOB: &str = "retention_sweep";

/// What time it is.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock(Arc::new(Mutex::new(at)))
    }
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Tunables of the timers.
#[derive(Debug, Clone)]
pub struct TimersConfig {
    /// How often the loop looks for due timers.
    pub tick: Duration,
    /// The retention sweep's period, in minutes.
    pub retention_every_minutes: u32,
    pub retention: Retention,
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig { tick: Duration::from_secs(1), retention_every_minutes: 60, retention: Retention::default() }
    }
}

impl TimersConfig {
    /// The defaults, with `PGPLANE_JOB_RETENTION_DAYS` (finished jobs) and
    /// `PGPLANE_RETENTION_EVERY_MINUTES` when set.
    pub fn from_env() -> Self {
        let mut config = TimersConfig::default();
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u32>().ok());
        if let Some(days) = number("PGPLANE_JOB_RETENTION_DAYS") {
            config.retention.finished_jobs = Duration::from_secs(u64::from(days) * 24 * 3600);
        }
        if let Some(minutes) = number("PGPLANE_RETENTION_EVERY_MINUTES").filter(|m| *m > 0) {
            config.retention_every_minutes = minutes;
        }
        config
    }
}

/// `run` on the system's clock, with the settings of the environment (`TimersConfig::from_env`).
pub async fn run_default(store: Store, wakers: Wakers, name: String, shutdown: watch::Receiver<bool>) {
    run(store, Arc::new(SystemClock), TimersConfig::from_env(), wakers, name, shutdown).await
}

/// Runs the timers until `shutdown`: makes the scheduler's own timers, then fires due timers
/// every tick and runs the timer queue's jobs.
pub async fn run<C: Clock>(
    store: Store,
    clock: Arc<C>,
    config: TimersConfig,
    wakers: Wakers,
    name: String,
    shutdown: watch::Receiver<bool>,
) {
    let retention =
        NewTimer::new(RETENTION_TIMER, Schedule::Every { minutes: config.retention_every_minutes }, RETENTION_JOB);
    // A scheduler starting while the database is away keeps trying: the sweep is not urgent.
    let mut shutdown_wait = shutdown.clone();
    while let Err(e) = store.timer_upsert(&retention, clock.now()).await {
        tracing::warn!(error = %e, "cannot create the retention timer yet");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown_wait.changed() => return,
        }
    }
    // Databases made before their daily backup timers existed, or whose timer a crash left
    // behind, get what their state says (idempotent: several schedulers may do it at once).
    match store.daily_backup_timers_reconcile(clock.now()).await {
        Ok(n) => tracing::info!(databases = n, "daily backup timers reconciled"),
        Err(e) => {
            tracing::warn!(error = %e, "reconciling the daily backup timers failed; workflows set them as they go")
        }
    }
    let mut worker = WorkerConfig::new(TIMER_QUEUE, name);
    worker.concurrency = 2;
    let handler = Arc::new(TimerJobs { store: store.clone(), clock: clock.clone(), retention: config.retention });
    let jobs = tokio::spawn(run_worker(store.clone(), worker, handler, wakers, shutdown.clone()));
    fire_loop(&store, clock.as_ref(), config.tick, shutdown).await;
    let _ = jobs.await;
}

/// Fires due timers every `tick` until `shutdown`.
pub async fn fire_loop<C: Clock>(store: &Store, clock: &C, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match store.timer_fire_due(clock.now(), 100).await {
            Ok(fired) => {
                for f in &fired {
                    tracing::info!(timer = %f.name, due_at = %f.due_at, job = %f.job_id, "timer fired");
                }
                // A full batch: more may be due.
                if fired.len() == 100 {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "firing timers failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Runs the jobs timers enqueue on the timer queue.
struct TimerJobs<C> {
    store: Store,
    clock: Arc<C>,
    retention: Retention,
}

impl<C: Clock> Handler for TimerJobs<C> {
    async fn run(&self, job: Claimed) -> Result<Done, JobError> {
        match job.kind.as_str() {
            RETENTION_JOB => {
                let swept = self
                    .store
                    .retention_sweep(self.clock.now(), &self.retention)
                    .await
                    .map_err(|e| JobError::Retryable(e.to_string()))?;
                // Scheduled backups a plan change no longer keeps (each backup's own success
                // applies retention too).
                let backups = self
                    .store
                    .backup_retention_sweep(self.clock.now())
                    .await
                    .map_err(|e| JobError::Retryable(e.to_string()))?;
                if backups > 0 {
                    tracing::info!(backups, "retention dropped scheduled backups");
                }
                if swept != Default::default() {
                    tracing::info!(
                        jobs = swept.jobs,
                        attempts = swept.job_attempts,
                        idempotency_keys = swept.idempotency_keys,
                        "retention sweep"
                    );
                }
                Ok(Done::Result(json!(swept)))
            }
            BACKUP_JOB => crate::daily::run_timer_job(&self.store, &job, self.clock.now()).await,
            other => Err(JobError::Fatal(format!("no handler for timer jobs of kind {other:?}"))),
        }
    }
}
