//! The databases placed on this host: idempotent `ensure_member` and `ensure_gateway`, fenced by
//! generation, each database in `<root>/<database id>/`, one job at a time per database. Each
//! applied spec is persisted before its process starts, and a running process is re-adopted.

use crate::fence;
use crate::files::{check_name, ensure_dir, write_atomic};
use crate::haproxy::{self, GatewayPaths};
use crate::keepalived::{self, VipPaths};
use crate::patroni::{self, MemberPaths};
use crate::pgbackrest::{PgServer, Stanza};
use crate::process::{self, Managed};
use crate::specs;
use crate::tenant;
use anyhow::{bail, Context, Result};
use pgplane_core::agent::{GatewaySpec, MemberSpec};
use pgplane_core::ids::DatabaseId;
use pgplane_core::pitr::{stanza_name, PitrSpec};
use pgplane_localpg::{find_bindir, RunAs};
use pgplane_storage::StorageConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::fence::NodeError;

/// How long Patroni may take to bring its PostgreSQL to `running` (bootstrap, clone, recovery).
const MEMBER_START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long Patroni gets to stop PostgreSQL before SIGKILL.
pub(crate) const MEMBER_STOP_GRACE: Duration = Duration::from_secs(60);
pub(crate) const GATEWAY_STOP_GRACE: Duration = Duration::from_secs(10);

/// The processes of one database this agent knows: members' Patroni and gateways' HAProxy.
#[derive(Default)]
pub(crate) struct Processes {
    pub members: HashMap<String, Managed>,
    pub gateways: HashMap<String, Managed>,
    /// keepalived of the gateways that carry the database's VIP, by gateway name.
    pub vips: HashMap<String, Managed>,
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

/// What making a process run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Already ours and running this configuration.
    Unchanged,
    /// Found running this configuration after a restart of the agent, and kept.
    Adopted,
    /// Started (it was not running, had exited, or ran another configuration).
    Started,
    /// Running, and told to re-read its changed configuration.
    Reloaded,
    /// Stopped while running another configuration, and started with this one.
    Restarted,
}

/// The processes this node drives outlive it: dropping a `Node` (or the agent's crash) leaves
/// them running, and a new `Node` on the same folder re-adopts them. `stop_all` stops them.
pub struct Node {
    pub(crate) root: PathBuf,
    pub(crate) runas: RunAs,
    pub(crate) databases: Mutex<HashMap<DatabaseId, Arc<tokio::sync::Mutex<Processes>>>>,
    /// Where members of PITR plans keep their pgBackRest repository (see `with_backup_storage`).
    pub(crate) backup_storage: Option<StorageConfig>,
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
        Ok(Node { root, runas: RunAs::for_postgres()?, databases: Mutex::new(HashMap::new()), backup_storage: None })
    }

    /// The backup storage of this host's agent: members of PITR plans archive into their
    /// database's stanza there (without it, such a member is refused).
    pub fn with_backup_storage(mut self, storage: StorageConfig) -> Self {
        self.backup_storage = Some(storage);
        self
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

    pub(crate) fn database(&self, database_id: DatabaseId) -> Arc<tokio::sync::Mutex<Processes>> {
        let mut map = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(database_id).or_default().clone()
    }

    /// Pids of the processes this node runs for a database (Patroni members, then gateways).
    pub async fn pids(&self, database_id: DatabaseId) -> Vec<u32> {
        let db = self.database(database_id);
        let procs = db.lock().await;
        procs.members.values().chain(procs.gateways.values()).map(Managed::pid).collect()
    }

    /// Makes the member run `spec`: writes its files and the spec, starts Patroni unless it
    /// already runs this configuration (ours, or adopted after a restart of the agent; restarted
    /// if the configuration changed), waits until PostgreSQL runs, and on the primary makes the
    /// tenant's role and database exist.
    pub async fn ensure_member(&self, spec: &MemberSpec) -> Result<MemberStatus, NodeError> {
        check_name("scope", &spec.scope)?;
        check_name("member", &spec.member)?;
        let db = self.database(spec.database_id);
        let mut procs = db.lock().await;
        self.admit(spec.database_id, spec.generation)?;
        let paths = MemberPaths::new(self.member_dir(spec.database_id, &spec.member));
        let bin_dir = bin_dir_for(&spec.version)?;
        let applied = self.write_member_files(spec, &paths, &bin_dir)?;
        let outcome = self.run_member(&mut procs, spec, &paths, &applied).await?;
        let proc = &procs.members[&spec.member];
        let state = patroni::wait_running(spec, &paths, proc, MEMBER_START_TIMEOUT).await?;
        if outcome == Outcome::Reloaded {
            patroni::apply_hba(spec, &paths, &bin_dir, &self.runas).await?;
        }
        if state.is_primary() {
            tenant::ensure(spec, &paths, &bin_dir, &self.runas).await?;
        } else if outcome == Outcome::Restarted {
            // What follows a restart (a switchover to it, in a rolling resize) needs the
            // cluster to count it as a healthy replica again, which it does once Patroni
            // has published its state.
            patroni::wait_listed(spec, MEMBER_START_TIMEOUT).await?;
        }
        let started = matches!(outcome, Outcome::Started | Outcome::Restarted);
        Ok(MemberStatus { patroni_pid: proc.pid(), role: state.role, started })
    }

    /// Fences a task that acts through Patroni (restart, configuration, switchover, re-clone)
    /// under the database's lock: refused when older than the newest generation applied here or
    /// not newer than a removal under way, else its generation is recorded.
    pub async fn fence(&self, database_id: DatabaseId, generation: i64) -> Result<(), NodeError> {
        let db = self.database(database_id);
        let _procs = db.lock().await;
        self.admit(database_id, generation)
    }

    /// Fences the job, and refuses one not newer than a removal under way (a newer one
    /// places the database here again).
    pub(crate) fn admit(&self, database_id: DatabaseId, generation: i64) -> Result<(), NodeError> {
        fence::advance(&self.root, database_id, generation)?;
        if let Some(removal) = specs::removing(&self.root, database_id) {
            if generation <= removal {
                return Err(NodeError::StaleGeneration { database_id, requested: generation, applied: removal });
            }
            specs::unmark_removing(&self.root, database_id)?;
        }
        Ok(())
    }

    /// Persists the spec, then makes Patroni run what `applied` describes.
    pub(crate) async fn run_member(
        &self,
        procs: &mut Processes,
        spec: &MemberSpec,
        paths: &MemberPaths,
        applied: &str,
    ) -> Result<Outcome> {
        let previous: Option<MemberSpec> = specs::load_one(&paths.spec);
        specs::save(&paths.spec, spec)?;
        let adopted = adopt_into(&mut procs.members, &spec.member, || patroni::adopt(paths));
        if previous.is_some_and(|p| reloadable(&p, spec)) {
            if let Some(proc) = runs_another(&mut procs.members, &spec.member, applied) {
                tracing::info!(member = %spec.member, pid = proc.pid(), "configuration changed; reloading Patroni");
                proc.reload(&paths.pidfile, applied)?;
                return Ok(Outcome::Reloaded);
            }
        }
        let (runas, stop_paths) = (self.runas.clone(), paths.clone());
        let stop = move |old: Managed| {
            old.stop(MEMBER_STOP_GRACE);
            crate::removal::stop_postmaster(&stop_paths, &runas);
        };
        let start = || patroni::start(paths, &self.runas, applied);
        Ok(run_one(&mut procs.members, &spec.member, applied, start, stop).await?.adopted_if(adopted))
    }

    /// Writes the member's folder; returns everything Patroni's behaviour depends on.
    pub(crate) fn write_member_files(&self, spec: &MemberSpec, paths: &MemberPaths, bin_dir: &Path) -> Result<String> {
        // A unix socket path holds at most 107 bytes; PostgreSQL adds "/.s.PGSQL.<port>".
        if paths.socket_dir.as_os_str().len() + 16 > 107 {
            bail!("{} is too long for a unix socket folder; use a shorter node folder", paths.socket_dir.display());
        }
        let owner = Some(&self.runas);
        ensure_dir(&self.database_dir(spec.database_id), 0o711, None)?;
        for dir in [&paths.dir, &paths.tls_dir, &paths.socket_dir] {
            ensure_dir(dir, 0o700, owner)?;
        }
        if let Some(pitr) = &spec.pitr {
            self.write_stanza(spec, pitr, paths)?;
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

    /// The pgBackRest configuration of a PITR member's stanza (before Patroni starts, so that
    /// its first `archive_command` finds it). Creating the stanza in the repository is the
    /// workflow's step, on the member that leads.
    fn write_stanza(&self, spec: &MemberSpec, pitr: &PitrSpec, paths: &MemberPaths) -> Result<()> {
        let Some(storage) = &self.backup_storage else {
            bail!("this agent has no backup storage configured (--backup-storage): it cannot run a PITR member");
        };
        if pitr.stanza != stanza_name(spec.database_id) {
            bail!("stanza {} is not database {}'s", pitr.stanza, spec.database_id);
        }
        let server = PgServer {
            data: paths.data.clone(),
            socket_dir: paths.socket_dir.clone(),
            port: spec.pg_port,
            user: patroni::SUPERUSER.into(),
        };
        Stanza::configure(&paths.pgbackrest, spec.database_id, storage, &server, pitr.window_days, &self.runas)?;
        Ok(())
    }

    /// Makes the gateway run `spec`, restarting HAProxy only when its configuration changed
    /// (a new allowlist alone goes through the admin socket). Returns HAProxy's pid.
    pub async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<u32, NodeError> {
        check_name("gateway", &spec.name)?;
        for b in &spec.backends {
            check_name("member", &b.member)?;
        }
        let db = self.database(spec.database_id);
        let mut procs = db.lock().await;
        self.admit(spec.database_id, spec.generation)?;
        let paths = GatewayPaths::new(self.gateway_dir(spec.database_id, &spec.name));
        let applied = self.write_gateway_files(spec, &paths)?;
        let outcome = self.run_gateway(&mut procs, spec, &paths, &applied).await?;
        if matches!(outcome, Outcome::Unchanged | Outcome::Adopted) {
            sync_allowlist(spec, &paths).await?;
        }
        let proc = &procs.gateways[&spec.name];
        haproxy::wait_routing(spec, &paths, proc, Duration::from_secs(30)).await?;
        let pid = proc.pid();
        self.run_vip(&mut procs, spec, &paths).await?;
        Ok(pid)
    }

    /// Makes the gateway's keepalived carry the spec's VIP (started, adopted, or reloaded with
    /// SIGHUP when its configuration changed), or stops it and forgets its folder when the spec
    /// has none.
    pub(crate) async fn run_vip(
        &self,
        procs: &mut Processes,
        spec: &GatewaySpec,
        gateway: &GatewayPaths,
    ) -> Result<Outcome> {
        let paths = VipPaths::new(self.database_dir(spec.database_id).join(keepalived::dir_name(&spec.name)));
        let Some((config, check)) = keepalived::render_for(spec, &paths, gateway)? else {
            let known = procs.vips.remove(&spec.name);
            if known.is_none() && !paths.dir.exists() {
                return Ok(Outcome::Unchanged);
            }
            if let Some(old) = known.or_else(|| keepalived::adopt(&paths)) {
                tracing::info!(gateway = %spec.name, pid = old.pid(), "no VIP any more; stopping keepalived");
                tokio::task::spawn_blocking(move || old.stop(GATEWAY_STOP_GRACE)).await.context("stopping")?;
            }
            std::fs::remove_dir_all(&paths.dir).with_context(|| format!("removing {}", paths.dir.display()))?;
            return Ok(Outcome::Restarted);
        };
        let applied = keepalived::write_files(&paths, &config, &check)?;
        let adopted = adopt_into(&mut procs.vips, &spec.name, || keepalived::adopt(&paths));
        if let Some(proc) = runs_another(&mut procs.vips, &spec.name, &applied) {
            tracing::info!(gateway = %spec.name, pid = proc.pid(), "VIP configuration changed; reloading keepalived");
            keepalived::reload(proc, &paths, &applied)?;
            return Ok(Outcome::Reloaded);
        }
        let start = || keepalived::start(&paths, &applied);
        let stop = |old: Managed| old.stop(GATEWAY_STOP_GRACE);
        Ok(run_one(&mut procs.vips, &spec.name, &applied, start, stop).await?.adopted_if(adopted))
    }

    /// Writes the gateway's folder; returns everything HAProxy's configuration depends on (not
    /// the allowlist, which a running HAProxy takes without a replacement: `sync_allowlist`).
    pub(crate) fn write_gateway_files(&self, spec: &GatewaySpec, paths: &GatewayPaths) -> Result<String> {
        ensure_dir(&self.database_dir(spec.database_id), 0o711, None)?;
        ensure_dir(&paths.dir, 0o700, Some(&self.runas))?;
        let config = haproxy::render(spec, paths);
        write_atomic(&paths.ca, &spec.ca_pem, Some(&self.runas))?;
        write_atomic(&paths.allowlist, &haproxy::render_allowlist(spec), Some(&self.runas))?;
        write_atomic(&paths.config, &config, Some(&self.runas))?;
        // The generation is in a comment: compare without the first line.
        Ok(format!("{}\n{}", config.split_once('\n').map_or("", |(_, rest)| rest), spec.ca_pem))
    }

    /// Persists the spec, then makes HAProxy run what `applied` describes. A live HAProxy with
    /// another configuration is replaced seamlessly (see `haproxy::start`), a dead one started
    /// again. A started HAProxy routes to a server once its `/primary` check passes (see
    /// `haproxy::put_in_service`).
    pub(crate) async fn run_gateway(
        &self,
        procs: &mut Processes,
        spec: &GatewaySpec,
        paths: &GatewayPaths,
        applied: &str,
    ) -> Result<Outcome> {
        specs::save(&paths.spec, spec)?;
        let adopted = adopt_into(&mut procs.gateways, &spec.name, || haproxy::adopt(paths));
        let mut primary = Vec::new();
        let outcome = match runs_another(&mut procs.gateways, &spec.name, applied) {
            Some(_) => {
                let old = procs.gateways.remove(&spec.name).expect("just seen");
                primary = haproxy::server_states(paths)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(_, status)| status == "UP")
                    .map(|(name, _)| name)
                    .collect();
                tracing::info!(gateway = %spec.name, pid = old.pid(), "configuration changed; replacing HAProxy seamlessly");
                let new = haproxy::start(paths, &self.runas, applied, Some(old.pid()))?;
                tracing::info!(gateway = %spec.name, pid = new.pid(), "started");
                procs.gateways.insert(spec.name.clone(), new);
                // `old` finishes its sessions and exits by itself; it is reaped meanwhile.
                Outcome::Reloaded
            }
            None => {
                let start = || haproxy::start(paths, &self.runas, applied, None);
                let stop = |old: Managed| old.stop(GATEWAY_STOP_GRACE);
                run_one(&mut procs.gateways, &spec.name, applied, start, stop).await?.adopted_if(adopted)
            }
        };
        if matches!(outcome, Outcome::Started | Outcome::Restarted | Outcome::Reloaded) {
            if primary.is_empty() {
                primary = haproxy::probe_primary(spec).await;
            }
            let proc = &procs.gateways[&spec.name];
            haproxy::wait_listening(spec, paths, proc, Duration::from_secs(10)).await?;
            haproxy::put_in_service(spec, paths, proc, &primary).await?;
        }
        Ok(outcome)
    }
}

/// Gives a running HAProxy (kept, or adopted after a restart of the agent) the spec's allowlist
/// when its public listener admits another one; a started HAProxy read it from its file.
pub(crate) async fn sync_allowlist(spec: &GatewaySpec, paths: &GatewayPaths) -> Result<()> {
    if spec.public_host.is_none() {
        return Ok(());
    }
    if haproxy::running_allowlist(paths).await.ok().as_deref() == Some(haproxy::allowlist(spec).as_slice()) {
        return Ok(());
    }
    tracing::info!(gateway = %spec.name, "allowlist changed; giving it to the running HAProxy");
    haproxy::set_allowlist(paths, spec).await
}

/// True when a running Patroni can take `new` by reloading (SIGHUP: Patroni re-reads its file,
/// rewrites pg_hba and postgresql.conf, reloads PostgreSQL, which re-reads its TLS files, and its
/// REST API's certificate) instead of a restart that stops PostgreSQL: certificates, pg_hba,
/// generation and settings PostgreSQL applies live. Addresses, etcd access, passwords, the
/// version and settings that need a PostgreSQL restart take a restart.
fn reloadable(old: &MemberSpec, new: &MemberSpec) -> bool {
    let (a, b) = (&old.sizing, &new.sizing);
    old.database_id == new.database_id
        && old.scope == new.scope
        && old.member == new.member
        && old.version == new.version
        && old.host == new.host
        && old.pg_port == new.pg_port
        && old.patroni_port == new.patroni_port
        && old.etcd == new.etcd
        && old.secrets == new.secrets
        && old.tls.ca_pem == new.tls.ca_pem
        && a.max_connections == b.max_connections
        && a.shared_buffers_mb == b.shared_buffers_mb
}

/// After a restart of the agent, puts the live process found for `name` (if any) in `slot`;
/// true when it did.
fn adopt_into(slot: &mut HashMap<String, Managed>, name: &str, adopt: impl FnOnce() -> Option<Managed>) -> bool {
    if slot.contains_key(name) {
        return false;
    }
    let Some(found) = adopt() else { return false };
    tracing::info!(%name, pid = found.pid(), "re-adopted a running process");
    slot.insert(name.to_string(), found);
    true
}

/// The process of `name` when it is alive and runs a known configuration other than `applied`
/// (one that may take the change without a restart).
fn runs_another<'a>(slot: &'a mut HashMap<String, Managed>, name: &str, applied: &str) -> Option<&'a mut Managed> {
    let proc = slot.get_mut(name)?;
    let other = proc.exited().is_none() && !proc.applied().is_empty() && proc.applied() != process::digest(applied);
    other.then_some(proc)
}

impl Outcome {
    /// `Adopted` for a process left as found right after `adopt_into` took it.
    fn adopted_if(self, adopted: bool) -> Outcome {
        match self {
            Outcome::Unchanged if adopted => Outcome::Adopted,
            outcome => outcome,
        }
    }
}

/// Leaves a live process running `applied` alone, else stops what runs (a crashed process
/// needs no stop: a Patroni started again keeps the PostgreSQL that outlived it) and starts a
/// new one.
async fn run_one(
    slot: &mut HashMap<String, Managed>,
    name: &str,
    applied: &str,
    start: impl FnOnce() -> Result<Managed>,
    stop: impl FnOnce(Managed) + Send + 'static,
) -> Result<Outcome> {
    if let Some(proc) = slot.get(name) {
        if proc.exited().is_none() && proc.applied() == process::digest(applied) {
            return Ok(Outcome::Unchanged);
        }
    }
    let mut restarted = false;
    if let Some(old) = slot.remove(name) {
        match old.exited() {
            Some(how) => tracing::warn!(%name, pid = old.pid(), %how, "process exited; starting it again"),
            None => {
                tracing::info!(%name, pid = old.pid(), "configuration changed; restarting");
                tokio::task::spawn_blocking(move || stop(old)).await.context("stopping")?;
                restarted = true;
            }
        }
    }
    let proc = start()?;
    tracing::info!(%name, pid = proc.pid(), "started");
    slot.insert(name.to_string(), proc);
    Ok(if restarted { Outcome::Restarted } else { Outcome::Started })
}

/// `/usr/lib/postgresql/<version>/bin` when present, else whatever `find_bindir` finds.
pub(crate) fn bin_dir_for(version: &str) -> Result<PathBuf> {
    if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit()) {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        if let Ok(dir) = find_bindir(Some(&dir)) {
            return Ok(dir);
        }
    }
    find_bindir(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_task_is_fenced_by_the_database_generation() {
        let root = std::env::temp_dir().join(format!("pgplane-node-fence-{}", std::process::id()));
        let node = Node::new(&root).unwrap();
        let db = DatabaseId::new();
        node.fence(db, 5).await.unwrap();
        node.fence(db, 5).await.unwrap();
        let stale = node.fence(db, 4).await.unwrap_err();
        assert!(matches!(stale, NodeError::StaleGeneration { requested: 4, applied: 5, .. }), "{stale}");
        assert!(!stale.is_retryable());
        node.fence(db, 6).await.unwrap();
        assert_eq!(fence::applied(&root, db).unwrap(), Some(6));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
