//! The agent's hold on its node over its own life: on start, one reconcile pass re-adopts what
//! runs and starts what should (before any job), then a pass every few seconds; on a graceful
//! exit, the databases are stopped or left running as asked. A crash leaves them running.

use crate::node::Node;
use crate::{reaper, reconcile};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the reconciler looks at what runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// What a graceful stop of the agent does to the databases it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Stop them (`pgplane up`, tests): everything the agent started ends with it. Also done
    /// if the agent's task is dropped without a graceful stop.
    StopDatabases,
    /// Leave them running (`pgplane agent`): restarting or upgrading the agent costs the
    /// tenants nothing; the next agent re-adopts them.
    LeaveRunning,
}

pub struct Lifecycle {
    node: Arc<Node>,
    on_exit: OnExit,
    reconciler: JoinHandle<()>,
    reaper: JoinHandle<()>,
    finished: bool,
}

/// The kernel setting that hands the connections queued on a closing listening socket to
/// another socket of its SO_REUSEPORT group instead of resetting them (Linux 5.14+).
pub(crate) const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Gateways share their port (SO_REUSEPORT): an HAProxy replaced by a new one (a configuration
/// change) or removed (Business → Starter) closes its listening socket, and the connections
/// queued on it were reset, 1–2 failed client queries per change. Turned on when this agent
/// may (as root); otherwise said once.
fn migrate_queued_connections() {
    match std::fs::read_to_string(TCP_MIGRATE_REQ).map(|v| v.trim().to_string()) {
        Ok(v) if v == "1" => {}
        Ok(_) => match std::fs::write(TCP_MIGRATE_REQ, "1") {
            Ok(()) => tracing::info!("set net.ipv4.tcp_migrate_req = 1: gateway reloads keep queued connections"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot set net.ipv4.tcp_migrate_req = 1 (run as root, or set it on the host): a gateway \
                 reload may reset the connections queued on it"
            ),
        },
        Err(_) => tracing::debug!("no net.ipv4.tcp_migrate_req on this kernel"),
    }
}

/// The kernel setting that lets a process bind an address the host does not have (yet).
pub(crate) const IP_NONLOCAL_BIND: &str = "/proc/sys/net/ipv4/ip_nonlocal_bind";

/// Every gateway of a database with a VIP binds it on its host, while keepalived gives the
/// address to one host only: the others bind it before they have it. Turned on when this
/// agent may (as root); otherwise said once (a gateway whose host lacks the VIP then fails).
fn bind_vips_anywhere() {
    match std::fs::read_to_string(IP_NONLOCAL_BIND).map(|v| v.trim().to_string()) {
        Ok(v) if v == "1" => {}
        Ok(_) => match std::fs::write(IP_NONLOCAL_BIND, "1") {
            Ok(()) => tracing::info!("set net.ipv4.ip_nonlocal_bind = 1: gateways bind their database's VIP"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot set net.ipv4.ip_nonlocal_bind = 1 (run as root, or set it on the host): a gateway \
                 cannot bind its database's VIP while another host holds it"
            ),
        },
        Err(_) => tracing::debug!("no net.ipv4.ip_nonlocal_bind on this kernel"),
    }
}

impl Lifecycle {
    /// Becomes the reaper of the data plane's orphans, reconciles once, then every
    /// `RECONCILE_EVERY` until `shutdown`.
    pub async fn start(node: Arc<Node>, on_exit: OnExit, shutdown: watch::Receiver<bool>) -> Self {
        reaper::become_subreaper();
        migrate_queued_connections();
        bind_vips_anywhere();
        let reaper = tokio::spawn(reap_on_sigchld());
        let t0 = Instant::now();
        let pass = node.reconcile().await;
        tracing::info!(?pass, ms = t0.elapsed().as_millis() as u64, "first reconcile pass done");
        let reconciler = tokio::spawn(reconcile::run_loop(node.clone(), RECONCILE_EVERY, shutdown));
        Lifecycle { node, on_exit, reconciler, reaper, finished: false }
    }

    /// Stops reconciling (waiting for a pass under way, so it starts nothing behind our back),
    /// then stops the databases when asked to.
    pub async fn finish(mut self) {
        self.reconciler.abort();
        let _ = (&mut self.reconciler).await;
        self.reaper.abort();
        self.finished = true;
        if self.on_exit == OnExit::StopDatabases {
            let node = self.node.clone();
            tracing::info!("stopping the databases of this node");
            let _ = tokio::task::spawn_blocking(move || node.stop_all()).await;
        } else {
            tracing::info!("leaving the databases of this node running");
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if !self.finished {
            self.reconciler.abort();
            self.reaper.abort();
            if self.on_exit == OnExit::StopDatabases {
                self.node.stop_all();
            }
        }
    }
}

/// Reaps orphans as soon as one exits (a postmaster zombie would stall Patroni's stop, which
/// waits for its pid to vanish); the reconciler's passes reap too, should a signal be missed.
async fn reap_on_sigchld() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut children) = signal(SignalKind::child()) else { return };
    while children.recv().await.is_some() {
        let _ = tokio::task::spawn_blocking(reaper::reap_orphans).await;
    }
}
