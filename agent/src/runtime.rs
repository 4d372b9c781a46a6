//! The agent's loop: register with the scheduler, heartbeat, long-poll for jobs, run each on
//! the `Node` while extending its lease, and report the outcome. Jobs run one at a time.

use pgplane_core::agent::{
    AgentJob, AgentRegistration, AgentTask, Capabilities, Heartbeat, JobOutcome, JobReport, LeaseBody, Registered,
};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::lifecycle::{Lifecycle, OnExit};
use crate::node::{Node, NodeError};
use pgplane_storage::{BackupStore, StorageConfig};

/// How an agent finds the scheduler and describes its host.
#[derive(Clone)]
pub struct AgentConfig {
    /// Base URL of the scheduler's agent API, e.g. `http://127.0.0.1:8081`.
    pub scheduler_url: String,
    pub bootstrap_token: String,
    pub name: String,
    /// The private address: other hosts and the platform's clients reach this host's services at it.
    pub host: String,
    /// The address clients on the internet reach this host at: the gateways of databases
    /// exposed to the internet bind it (`host` on a machine with one address).
    pub public_host: String,
    pub memory_mb: i64,
    pub disk_gb: i64,
    pub port_min: i32,
    pub port_max: i32,
    /// Where databases' files live on this host.
    pub root: PathBuf,
    /// Where backups go (`--backup-storage`); without it, backup tasks fail with a clear error.
    pub backup_storage: Option<StorageConfig>,
}

pgplane_core::redacted_debug!(AgentConfig { scheduler_url, name, host, public_host, memory_mb, disk_gb, port_min, port_max, root, backup_storage } secret { bootstrap_token });

/// Staging files of uploads interrupted longer ago than this are removed (at start, then every
/// `STAGING_SWEEP_EVERY`): an upload in progress writes its staging file all the time.
const STAGING_ABANDONED_AFTER: Duration = Duration::from_secs(600);
const STAGING_SWEEP_EVERY: Duration = Duration::from_secs(600);

struct Session {
    http: reqwest::Client,
    config: AgentConfig,
    /// What this host can do, from the checks run at start; sent with each registration.
    capabilities: Capabilities,
    credential: tokio::sync::RwLock<String>,
    /// The backup storage, when configured.
    backups: Option<BackupStore>,
}

impl Session {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.scheduler_url.trim_end_matches('/'))
    }

    /// Registers (again), keeping the new credential.
    async fn register(&self) -> anyhow::Result<()> {
        let c = &self.config;
        let res = self
            .http
            .post(self.url("/agent/v1/register"))
            .json(&AgentRegistration {
                bootstrap_token: c.bootstrap_token.clone(),
                name: c.name.clone(),
                host: c.host.clone(),
                public_host: Some(c.public_host.clone()),
                memory_mb: c.memory_mb,
                disk_gb: c.disk_gb,
                port_min: c.port_min,
                port_max: c.port_max,
                capabilities: Some(self.capabilities.clone()),
            })
            .send()
            .await?
            .error_for_status()?;
        let registered: Registered = res.json().await?;
        *self.credential.write().await = registered.credential;
        tracing::info!(agent = %c.name, id = %registered.agent_id, "registered with the scheduler");
        Ok(())
    }

    async fn bearer(&self) -> String {
        self.credential.read().await.clone()
    }
}

/// Runs the agent until `shutdown` turns true, then stops the databases it runs.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    run_with(config, shutdown, OnExit::StopDatabases).await
}

/// Runs the agent until `shutdown` turns true: first re-adopts what runs on this node and starts
/// what should (from the persisted specs), then serves jobs while reconciling every few seconds.
/// A job in progress at shutdown is dropped (it comes back when the agent registers again).
pub async fn run_with(config: AgentConfig, shutdown: watch::Receiver<bool>, on_exit: OnExit) -> anyhow::Result<()> {
    let mut node = Node::new(config.root.clone())?;
    if let Some(storage) = &config.backup_storage {
        // Members of PITR plans archive into their stanza in the same storage as the dumps.
        node = node.with_backup_storage(storage.clone());
    }
    let node = Arc::new(node);
    let capabilities = check_host(&config).await;
    let lifecycle = Lifecycle::start(node.clone(), on_exit, shutdown.clone()).await;
    let result = serve(config, capabilities, node, shutdown).await;
    lifecycle.finish().await;
    result
}

/// `pgplane doctor`'s checks of this host, logged one line each. They run once per process:
/// the agents of one process (`pgplane up`'s three, a test's) share one host, and each run
/// starts an etcd and an HAProxy for a moment.
async fn check_host(config: &AgentConfig) -> Capabilities {
    static CHECKED: tokio::sync::OnceCell<Capabilities> = tokio::sync::OnceCell::const_new();
    let options = crate::doctor::Options { state_dir: config.root.clone(), versions: Vec::new(), exercise: true };
    let started = std::time::Instant::now();
    let capabilities = CHECKED
        .get_or_init(|| async move {
            tokio::task::spawn_blocking(move || crate::doctor::run(&options)).await.unwrap_or_else(|e| {
                let check = crate::doctor::fail("doctor", format!("the checks panicked: {e}"));
                Capabilities { checks: vec![check], ..Capabilities::default() }
            })
        })
        .await
        .clone();
    tracing::info!(
        postgres = ?capabilities.postgres_versions, patroni = capabilities.patroni, haproxy = capabilities.haproxy,
        keepalived = capabilities.keepalived, pgbackrest = ?capabilities.pgbackrest, ms = started.elapsed().as_millis() as u64, "checked this host"
    );
    for problem in capabilities.problems() {
        tracing::warn!("host check: {problem}");
    }
    capabilities
}

/// Why this host cannot do `task`, if it cannot (trying again here cannot help).
fn cannot_do(capabilities: &Capabilities, task: &AgentTask) -> Option<String> {
    match task {
        AgentTask::EnsureMember { spec } => capabilities.cannot_run_member(&spec.version),
        AgentTask::EnsureGateway { spec } => capabilities
            .cannot_run_gateway()
            .or_else(|| spec.vip.as_ref().and_then(|_| capabilities.cannot_carry_vip())),
        _ => None,
    }
}

async fn serve(
    config: AgentConfig,
    capabilities: Capabilities,
    node: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let backups = match &config.backup_storage {
        None => None,
        Some(storage) => {
            let store = BackupStore::open(storage)?;
            tracing::info!(agent = %config.name, "backups go to {store}");
            Some(store)
        }
    };
    let session = Arc::new(Session {
        http: reqwest::Client::builder().timeout(Duration::from_secs(90)).build()?,
        config,
        capabilities,
        credential: Default::default(),
        backups: backups.clone(),
    });
    let _sweeps = backups.map(|store| AbortOnDrop(tokio::spawn(sweep_staging(store))));
    while let Err(e) = session.register().await {
        tracing::warn!(error = %e, "cannot register with the scheduler; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
    // Heartbeats stop with this loop, even when it is dropped rather than shut down: an agent
    // that is gone must not go on vouching for its members.
    let heartbeats = AbortOnDrop(tokio::spawn(heartbeat_loop(session.clone(), shutdown.clone())));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let poll =
            session.http.get(session.url("/agent/v1/jobs?wait_secs=25")).bearer_auth(session.bearer().await).send();
        let res = tokio::select! {
            r = poll => r,
            _ = shutdown.changed() => break,
        };
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::OK => match r.json::<AgentJob>().await {
                Ok(job) => tokio::select! {
                    _ = execute(&session, &node, job) => {}
                    _ = shutdown.changed() => break,
                },
                Err(e) => tracing::warn!(error = %e, "unreadable job"),
            },
            Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => {}
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                if let Err(e) = session.register().await {
                    tracing::warn!(error = %e, "re-registration failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "polling for jobs failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduler unreachable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(heartbeats);
    Ok(())
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the staging files of uploads a killed agent left behind, now and then.
async fn sweep_staging(store: BackupStore) {
    loop {
        let swept = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.sweep(STAGING_ABANDONED_AFTER)).await
        };
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::warn!(files = n, "removed the staging files of interrupted uploads"),
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping the backup storage's staging files failed"),
            Err(e) => tracing::warn!(error = %e, "sweeping the backup storage's staging files panicked"),
        }
        tokio::time::sleep(STAGING_SWEEP_EVERY).await;
    }
}

async fn heartbeat_loop(session: Arc<Session>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let res = session
            .http
            .post(session.url("/agent/v1/heartbeat"))
            .bearer_auth(session.bearer().await)
            .json(&Heartbeat { observed: crate::observe::observe(&session.config.root).await })
            .send()
            .await;
        if let Err(e) = res.and_then(|r| r.error_for_status()) {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long the drain of a switchover's leader holds at most (it is lifted once the
/// switchover is done; this bounds one that never finishes).
const SWITCHOVER_DRAIN_SECS: u32 = 20;

/// Runs one job while extending its lease, then reports how it ended.
async fn execute(session: &Arc<Session>, node: &Node, job: AgentJob) {
    let id = job.job_id;
    let lease = job.lease_id;
    let keepalive = {
        let session = session.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let res = session
                    .http
                    .post(session.url(&format!("/agent/v1/jobs/{id}/heartbeat")))
                    .bearer_auth(session.bearer().await)
                    .json(&LeaseBody { lease_id: lease })
                    .send()
                    .await;
                if let Ok(r) = res {
                    if r.status() == reqwest::StatusCode::CONFLICT {
                        tracing::warn!(job = %id, "lease lost; the scheduler gave this job to another attempt");
                        return;
                    }
                }
            }
        })
    };
    let started = std::time::Instant::now();
    let unable = cannot_do(&session.capabilities, &job.task);
    // Every task is fenced by the database's generation: those that act through Patroni here,
    // the others where they take the database's lock (ensure, drain, remove).
    let stale = match &job.task {
        AgentTask::RestartMember { .. }
        | AgentTask::PatchConfig { .. }
        | AgentTask::Switchover { .. }
        | AgentTask::ReinitMember { .. } => {
            let (database_id, generation) = job.task.fence();
            node.fence(database_id, generation).await.err()
        }
        _ => None,
    };
    let outcome = match &job.task {
        _ if unable.is_some() => {
            Err(NodeError::Unable(format!("agent {}: {}", session.config.name, unable.unwrap_or_default())))
        }
        _ if stale.is_some() => Err(stale.expect("a stale task")),
        AgentTask::EnsureMember { spec } => {
            node.ensure_member(spec).await.map(|s| json!({ "member": format!("{s:?}") }))
        }
        AgentTask::EnsureGateway { spec } => node.ensure_gateway(spec).await.map(|pid| json!({ "gateway_pid": pid })),
        AgentTask::RestartMember { api, .. } => crate::restart::restart_member(api, Duration::from_secs(120))
            .await
            .map(|_| json!({ "restarted": true }))
            .map_err(crate::node::NodeError::from),
        AgentTask::ReinitMember { database_id, member, api, .. } => {
            async {
                let answer = crate::restart::reinit_member(api).await?;
                tracing::warn!(database = %database_id, %member, "re-cloning a replica: {answer}");
                Ok(json!({ "reinitialized": member }))
            }
            .await
        }
        AgentTask::PatchConfig { api, patch, .. } => {
            crate::control::patch_config(api, patch).await.map_err(crate::node::NodeError::from)
        }
        AgentTask::Switchover { database_id, generation, api, candidate, drain_leader } => {
            async {
                if let Some(leader) = drain_leader {
                    node.drain_member(*database_id, *generation, leader, true, SWITCHOVER_DRAIN_SECS).await?;
                }
                Ok(crate::control::switchover(api, candidate.as_deref()).await?)
            }
            .await
        }
        AgentTask::DrainMember { database_id, generation, member, drain, for_secs } => node
            .drain_member(*database_id, *generation, member, *drain, *for_secs)
            .await
            .map(|gateways| json!({ "gateways": gateways })),
        AgentTask::RemoveDatabase { database_id, generation } => {
            node.remove_database(*database_id, *generation).await.map(|_| json!({}))
        }
        AgentTask::Backup { task } => match &session.backups {
            Some(store) => crate::backup::run(node, store, task).await,
            None => Err(NodeError::Unable(format!(
                "agent {} has no backup storage configured (--backup-storage / PGPLANE_BACKUP_STORAGE)",
                session.config.name
            ))),
        },
    };
    keepalive.abort();
    let outcome = match outcome {
        Ok(result) => JobOutcome::Succeeded { result },
        Err(e) => JobOutcome::Failed { error: e.to_string(), retryable: e.is_retryable() },
    };
    tracing::info!(job = %id, ms = started.elapsed().as_millis() as u64, ok = matches!(outcome, JobOutcome::Succeeded { .. }), "job ran");
    let report = JobReport { lease_id: lease, outcome };
    for _ in 0..10 {
        let res = session
            .http
            .post(session.url(&format!("/agent/v1/jobs/{id}/report")))
            .bearer_auth(session.bearer().await)
            .json(&report)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT => return,
            Ok(r) => tracing::warn!(status = %r.status(), "report refused; retrying"),
            Err(e) => tracing::warn!(error = %e, "report failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Unreported: the lease expires and the job runs again; ensure/remove are idempotent.
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::ids::DatabaseId;

    #[test]
    fn a_host_refuses_only_what_it_cannot_do() {
        let caps = Capabilities {
            postgres_versions: vec!["15".into()],
            patroni: true,
            haproxy: true,
            ..Capabilities::default()
        };
        let remove = AgentTask::RemoveDatabase { database_id: DatabaseId::new(), generation: 1 };
        assert_eq!(cannot_do(&caps, &remove), None);
        let drain = AgentTask::DrainMember {
            database_id: DatabaseId::new(),
            generation: 1,
            member: "m0".into(),
            drain: true,
            for_secs: 5,
        };
        assert_eq!(cannot_do(&caps, &drain), None);
        let gateway = serde_json::from_value::<AgentTask>(json!({
            "kind": "ensure_gateway",
            "spec": {
                "database_id": DatabaseId::new(), "generation": 1, "name": "g0", "listen_host": "127.0.0.1",
                "listen_port": 25000, "backends": [], "ca_pem": "CA"
            }
        }))
        .unwrap();
        assert_eq!(cannot_do(&caps, &gateway), None);
        let AgentTask::EnsureGateway { mut spec } = gateway.clone() else { unreachable!() };
        spec.vip = Some(pgplane_core::agent::GatewayVip {
            address: "10.213.7.100".into(),
            port: 25000,
            router_id: 1,
            priority: 150,
            peers: vec!["10.213.7.2".into()],
        });
        let with_vip = AgentTask::EnsureGateway { spec };
        assert!(cannot_do(&caps, &with_vip).unwrap().contains("keepalived"));
        let caps_vip = Capabilities { keepalived: true, ..caps.clone() };
        assert_eq!(cannot_do(&caps_vip, &with_vip), None);
        let no_haproxy_caps = Capabilities { haproxy: false, ..caps };
        assert!(cannot_do(&no_haproxy_caps, &gateway).unwrap().contains("HAProxy"));
    }
}
