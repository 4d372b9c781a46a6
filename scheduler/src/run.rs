//! Everything a scheduler process runs: the NOTIFY listener, the workflow worker, the lease
//! reaper, the sweep that fails operations whose jobs died, the reading of each database's leader
//! from etcd (`truth`), the timers (`timers`), and the agent API. Several
//! schedulers may run against one database: the queue's leases keep them from double work.

use pgplane_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent_api::{self, AgentApiState};
use crate::config::SchedulerConfig;
use crate::queue::{run_reaper, run_worker, Wakers, WorkerConfig};
use crate::workflows::Workflows;

/// Runs a scheduler until `shutdown` turns true.
pub async fn run(store: Store, config: SchedulerConfig, agent_listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let wakers = Wakers::default();
    let name = format!("scheduler-{}", std::process::id());
    let mut worker = WorkerConfig::new(pgplane_store::databases::SCHEDULER_QUEUE, name);
    // Workflow steps take milliseconds: a short lease lets another scheduler take over the
    // step of one that died within seconds (heartbeats keep a slow step's lease alive).
    worker.lease = Duration::from_secs(6);
    let state = AgentApiState {
        store: store.clone(),
        wakers: wakers.clone(),
        bootstrap_token: config.bootstrap_token.clone(),
        backoff: worker.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(wakers.clone().listen(store.clone(), shutdown.clone()));
    tasks.spawn(run_reaper(store.clone(), Duration::from_secs(2), shutdown.clone()));
    tasks.spawn(sweep_dead_operations(store.clone(), shutdown.clone()));
    tasks.spawn(crate::timers::run_default(store.clone(), wakers.clone(), worker.name.clone(), shutdown.clone()));
    let etcd = match crate::etcd_users::admin_client(&config.etcd) {
        Ok(etcd) => etcd,
        Err(e) => return tracing::error!(error = %e, "the etcd access of the configuration is unusable"),
    };
    if !config.etcd.endpoints.is_empty() {
        match pgplane_etcd::Client::with_timeout(&config.etcd, crate::truth::ETCD_TIMEOUT) {
            Ok(reader) => {
                let grace = config.not_streaming_grace;
                tasks.spawn(crate::truth::run_truth(store.clone(), reader, grace, shutdown.clone()));
            }
            Err(e) => tracing::error!(error = %e, "cannot read etcd: roles come from the agents' reports"),
        }
    }
    let handler = Arc::new(Workflows { store: store.clone(), config, etcd });
    tasks.spawn(run_worker(store.clone(), worker, handler, wakers, shutdown.clone()));
    let mut stop = shutdown.clone();
    tasks.spawn(async move {
        let app = agent_api::app(state);
        let graceful = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(agent_listener, app).with_graceful_shutdown(graceful).await {
            tracing::error!(error = %e, "agent API stopped");
        }
    });
    while tasks.join_next().await.is_some() {}
}

/// Operations whose jobs died end in `error` (a dead job never reports by itself).
async fn sweep_dead_operations(store: Store, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep_once(&store).await {
            tracing::warn!(error = %e, "sweeping dead operations failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn sweep_once(store: &Store) -> pgplane_store::Result<()> {
    let mut conn = store.pool().acquire().await.map_err(pgplane_store::db_error)?;
    for dead in pgplane_store::workflow::operations_with_dead_jobs_in(&mut conn).await? {
        let (op, job, error) = (dead.operation_id, dead.job_id, &dead.error);
        tracing::error!(operation = %op, %job, %error, "operation failed: one of its jobs died");
        let tenant = crate::queue::tenant_error(dead.task_kind.as_deref(), job);
        pgplane_store::workflow::operation_finish_in(&mut conn, op, Some(&tenant)).await?;
    }
    Ok(())
}
