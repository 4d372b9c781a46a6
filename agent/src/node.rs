//! The databases placed on this host: idempotent `ensure_member`, `ensure_gateway` and
//! `remove_database`, fenced by generation, each database in `<root>/<database id>/`, one job at
//! a time per database. The node is the parent of what it starts and keeps their handles.

use crate::fence;
use crate::files::{check_name, ensure_dir, write_atomic};
use crate::haproxy::{self, GatewayPaths};
use crate::patroni::{self, MemberPaths};
use crate::tenant;
use anyhow::{bail, Context, Result};
use pgplane_core::agent::{GatewaySpec, MemberSpec};
use pgplane_core::ids::DatabaseId;
use pgplane_localpg::{find_bindir, RunAs, Supervised};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::fence::NodeError;

/// How long Patroni may take to bring its PostgreSQL to `running` (bootstrap, clone, recovery).
const MEMBER_START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long Patroni gets to stop PostgreSQL before SIGKILL.
const MEMBER_STOP_GRACE: Duration = Duration::from_secs(60);
const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(10);

/// A process this node started, and the configuration it runs.
struct Running {
    proc: Supervised,
    applied: String,
}

#[derive(Default)]
struct Processes {
    members: HashMap<String, Running>,
    gateways: HashMap<String, Running>,
}

/// What `ensure_member` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub patroni_pid: u32,
    /// Patroni's role for the member (`master`/`primary` or `replica`).
    pub role: String,
    /// False when Patroni was already running this very configuration.
    pub started: bool,
}

pub struct Node {
    root: PathBuf,
    runas: RunAs,
    databases: Mutex<HashMap<DatabaseId, Arc<tokio::sync::Mutex<Processes>>>>,
}

impl Node {
    /// A node keeping its databases under `root`; PostgreSQL, Patroni and HAProxy run as the
    /// unprivileged user of `RunAs::for_postgres` (root's ancestors must let it through).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if root.to_str().is_none() {
            bail!("the node's folder {} must be valid UTF-8", root.display());
        }
        ensure_dir(&root, 0o711, None)?;
        Ok(Node { root, runas: RunAs::for_postgres()?, databases: Mutex::new(HashMap::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database_dir(&self, database_id: DatabaseId) -> PathBuf {
        self.root.join(database_id.to_string())
    }

    pub fn member_dir(&self, database_id: DatabaseId, member: &str) -> PathBuf {
        self.database_dir(database_id).join(format!("member-{member}"))
    }

    pub fn gateway_dir(&self, database_id: DatabaseId, name: &str) -> PathBuf {
        self.database_dir(database_id).join(format!("gateway-{name}"))
    }

    fn database(&self, database_id: DatabaseId) -> Arc<tokio::sync::Mutex<Processes>> {
        let mut map = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(database_id).or_default().clone()
    }

    /// Pids of the processes this node runs for a database (Patroni members, then gateways).
    pub async fn pids(&self, database_id: DatabaseId) -> Vec<u32> {
        let db = self.database(database_id);
        let procs = db.lock().await;
        procs.members.values().chain(procs.gateways.values()).map(|r| r.proc.pid()).collect()
    }

    /// Makes the member run `spec`: writes its files, starts Patroni unless it already runs
    /// this configuration (restarts it if the configuration changed), waits until PostgreSQL
    /// runs, and on the primary makes the tenant's role and database exist.
    pub async fn ensure_member(&self, spec: &MemberSpec) -> Result<MemberStatus, NodeError> {
        check_name("scope", &spec.scope)?;
        check_name("member", &spec.member)?;
        let db = self.database(spec.database_id);
        let mut procs = db.lock().await;
        fence::advance(&self.root, spec.database_id, spec.generation)?;
        let paths = MemberPaths::new(self.member_dir(spec.database_id, &spec.member));
        let bin_dir = bin_dir_for(&spec.version)?;
        let applied = self.write_member_files(spec, &paths, &bin_dir)?;
        let running = procs.members.get(&spec.member);
        let started = !running.is_some_and(|r| r.applied == applied && r.proc.exit_status().is_none());
        if started {
            if let Some(old) = procs.members.remove(&spec.member) {
                let (paths, runas) = (paths.clone(), self.runas.clone());
                tokio::task::spawn_blocking(move || stop_member(old, &paths, &runas)).await.context("stopping")?;
            }
            let proc = patroni::start(&paths, &self.runas)?;
            procs.members.insert(spec.member.clone(), Running { proc, applied });
        }
        let proc = &procs.members[&spec.member].proc;
        let state = patroni::wait_running(spec, &paths, proc, MEMBER_START_TIMEOUT).await?;
        if state.is_primary() {
            tenant::ensure(spec, &paths, &bin_dir, &self.runas).await?;
        }
        Ok(MemberStatus { patroni_pid: proc.pid(), role: state.role, started })
    }

    /// Writes the member's folder; returns everything Patroni's behaviour depends on.
    fn write_member_files(&self, spec: &MemberSpec, paths: &MemberPaths, bin_dir: &Path) -> Result<String> {
        // A unix socket path holds at most 107 bytes; PostgreSQL adds "/.s.PGSQL.<port>".
        if paths.socket_dir.as_os_str().len() + 16 > 107 {
            bail!("{} is too long for a unix socket folder; use a shorter node folder", paths.socket_dir.display());
        }
        let owner = Some(&self.runas);
        ensure_dir(&self.database_dir(spec.database_id), 0o711, None)?;
        for dir in [&paths.dir, &paths.tls_dir, &paths.socket_dir] {
            ensure_dir(dir, 0o700, owner)?;
        }
        let config = patroni::render(spec, paths, bin_dir);
        let tls = &spec.tls;
        let etcd_ca = spec.etcd.ca_pem.clone().unwrap_or_default();
        for (file, text) in [
            (&paths.ca, &tls.ca_pem),
            (&paths.cert, &tls.cert_pem),
            (&paths.key, &tls.key_pem),
            (&paths.config, &config),
        ] {
            write_atomic(file, text, owner)?;
        }
        if spec.etcd.ca_pem.is_some() {
            write_atomic(&paths.etcd_ca, &etcd_ca, owner)?;
        }
        Ok([config, tls.ca_pem.clone(), tls.cert_pem.clone(), tls.key_pem.clone(), etcd_ca].join("\n"))
    }

    /// Makes the gateway run `spec`, restarting HAProxy only when its configuration changed.
    /// Returns HAProxy's pid.
    pub async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<u32, NodeError> {
        check_name("gateway", &spec.name)?;
        for b in &spec.backends {
            check_name("member", &b.member)?;
        }
        let db = self.database(spec.database_id);
        let mut procs = db.lock().await;
        fence::advance(&self.root, spec.database_id, spec.generation)?;
        let paths = GatewayPaths::new(self.gateway_dir(spec.database_id, &spec.name));
        ensure_dir(&self.database_dir(spec.database_id), 0o711, None)?;
        ensure_dir(&paths.dir, 0o700, Some(&self.runas))?;
        // The generation is in a comment: compare without the first line.
        let config = haproxy::render(spec, &paths);
        let applied = format!("{}\n{}", config.split_once('\n').map_or("", |(_, rest)| rest), spec.ca_pem);
        write_atomic(&paths.ca, &spec.ca_pem, Some(&self.runas))?;
        write_atomic(&paths.config, &config, Some(&self.runas))?;
        if let Some(r) = procs.gateways.get(&spec.name) {
            if r.applied == applied && r.proc.exit_status().is_none() {
                haproxy::wait_listening(spec, &paths, &r.proc, Duration::from_secs(10)).await?;
                return Ok(r.proc.pid());
            }
        }
        if let Some(old) = procs.gateways.remove(&spec.name) {
            tokio::task::spawn_blocking(move || old.proc.stop(GATEWAY_STOP_GRACE)).await.context("stopping")?;
        }
        let proc = haproxy::start(&paths, &self.runas)?;
        let pid = proc.pid();
        let result = haproxy::wait_listening(spec, &paths, &proc, Duration::from_secs(10)).await;
        procs.gateways.insert(spec.name.clone(), Running { proc, applied });
        result?;
        Ok(pid)
    }

    /// Stops the database's gateways, then its members, and removes its folder. Removing a
    /// database that is not here is fine; the generation is remembered after removal.
    /// Patroni's keys in etcd (`/service/<scope>/`) stay: they belong to the whole database, so
    /// whoever removes its last member deletes them (a new cluster with the same scope would
    /// otherwise inherit its `/config` and `initialize` keys and never bootstrap).
    pub async fn remove_database(&self, database_id: DatabaseId, generation: i64) -> Result<(), NodeError> {
        let db = self.database(database_id);
        let mut procs = db.lock().await;
        fence::advance(&self.root, database_id, generation)?;
        let taken = std::mem::take(&mut *procs);
        let dir = self.database_dir(database_id);
        let runas = self.runas.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            stop_all(taken, &dir, &runas);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", dir.display()))
                }
                _ => Ok(()),
            }
        })
        .await
        .context("removing the database")??;
        Ok(())
    }
}

impl Drop for Node {
    /// Stops everything this node started (their folders stay).
    fn drop(&mut self) {
        let map = std::mem::take(&mut *self.databases.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, db) in map {
            if let Ok(mut procs) = db.try_lock() {
                stop_all(std::mem::take(&mut *procs), &self.database_dir(id), &self.runas);
            }
        }
    }
}

/// Gateways first (clients stop reaching the database), then members, then any PostgreSQL
/// left behind in the database's member folders.
fn stop_all(procs: Processes, database_dir: &Path, runas: &RunAs) {
    for (_, gateway) in procs.gateways {
        gateway.proc.stop(GATEWAY_STOP_GRACE);
    }
    for (_, member) in procs.members {
        member.proc.stop(MEMBER_STOP_GRACE);
    }
    let Ok(entries) = std::fs::read_dir(database_dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("member-") {
            stop_postmaster(&MemberPaths::new(entry.path()), runas);
        }
    }
}

fn stop_member(member: Running, paths: &MemberPaths, runas: &RunAs) {
    member.proc.stop(MEMBER_STOP_GRACE);
    stop_postmaster(paths, runas);
}

/// Patroni stops its PostgreSQL when it stops; if it was killed first, `pg_ctl` stops the
/// PostgreSQL that `data/postmaster.pid` names (fast, then immediate).
fn stop_postmaster(paths: &MemberPaths, runas: &RunAs) {
    if !paths.data.join("postmaster.pid").exists() {
        return;
    }
    let bin_dir = std::fs::read_to_string(&paths.config)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config["postgresql"]["bin_dir"].as_str().map(PathBuf::from))
        .or_else(|| find_bindir(None).ok());
    let Some(bin_dir) = bin_dir else { return };
    for mode in ["fast", "immediate"] {
        let mut cmd = Command::new(bin_dir.join("pg_ctl"));
        cmd.arg("-D").arg(&paths.data).args(["stop", "-w", "-t", "30", "-m", mode]);
        cmd.current_dir(&paths.dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        runas.apply(&mut cmd);
        if cmd.status().is_ok_and(|s| s.success()) || !paths.data.join("postmaster.pid").exists() {
            return;
        }
    }
    tracing::warn!(data = %paths.data.display(), "could not stop a PostgreSQL left behind by Patroni");
}

/// `/usr/lib/postgresql/<version>/bin` when present, else whatever `find_bindir` finds.
fn bin_dir_for(version: &str) -> Result<PathBuf> {
    if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit()) {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        if let Ok(dir) = find_bindir(Some(&dir)) {
            return Ok(dir);
        }
    }
    find_bindir(None)
}
