//! Everything a scheduler process runs: the NOTIFY listener, the workflow worker, the lease
//! reaper, the engine's sweep (operations whose jobs died, passed their deadline or wait on a
//! lost host end in `error`), the reading of each database's leader from etcd (`truth`), the
//! timers (`timers`), and the agent API. Several schedulers may run against one database: the
//! queue's leases keep them from double work.

use pgplane_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent_api::{self, AgentApiState};
use crate::config::SchedulerConfig;
use crate::queue::{run_reaper, run_worker, Handler, Wakers, WorkerConfig};
use crate::workflows::Workflows;

/// Workflow steps run at once in one scheduler.
pub const WORKER_CONCURRENCY: usize = 8;

/// Connections a scheduler's pool needs: one per workflow step running at once (a step holds
/// one connection, its transaction, and never asks for a second), and a few for the reading of
/// etcd, the sweep and the lease reaper.
pub const POOL_SIZE: u32 = WORKER_CONCURRENCY as u32 + 4;

/// The agent API's own pool: heartbeats, claims and reports never wait for a connection behind
/// workflow steps.
pub const AGENT_API_POOL_SIZE: u32 = 6;

/// The timers' own pool: one firing loop and up to two timer jobs at once.
pub const TIMER_POOL_SIZE: u32 = 3;

/// Runs a scheduler until `shutdown` turns true.
pub async fn run(store: Store, config: SchedulerConfig, agent_listener: TcpListener, shutdown: watch::Receiver<bool>) {
    run_with(store, config, agent_listener, shutdown, |workflows| workflows).await
}

/// `run`, with the workflows wrapped by `handler` (tests replay every step through it).
pub async fn run_with<H: Handler>(
    store: Store,
    config: SchedulerConfig,
    agent_listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    handler: impl FnOnce(Workflows) -> H,
) {
    let wakers = Wakers::default();
    let name = format!("scheduler-{}", std::process::id());
    let mut worker = WorkerConfig::new(pgplane_store::databases::SCHEDULER_QUEUE, name);
    // Workflow steps take milliseconds: a short lease lets another scheduler take over the
    // step of one that died within seconds (heartbeats keep a slow step's lease alive).
    worker.lease = Duration::from_secs(6);
    worker.concurrency = WORKER_CONCURRENCY;
    let state = AgentApiState {
        store: store.with_own_pool(AGENT_API_POOL_SIZE),
        wakers: wakers.clone(),
        bootstrap_token: config.bootstrap_token.clone(),
        backoff: worker.clone(),
    };
    let timer_store = store.with_own_pool(TIMER_POOL_SIZE);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(wakers.clone().listen(store.clone(), shutdown.clone()));
    tasks.spawn(run_reaper(store.clone(), Duration::from_secs(2), shutdown.clone()));
    tasks.spawn(crate::engine::run_sweep(store.clone(), config.agent_lost_after, shutdown.clone()));
    tasks.spawn(crate::timers::run_default(timer_store, wakers.clone(), worker.name.clone(), shutdown.clone()));
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
    let handler = Arc::new(handler(Workflows { store: store.clone(), config, etcd }));
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
