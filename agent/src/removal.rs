//! Stopping databases: `remove_database` (marked first, so nothing brings it back; then every
//! process stopped (the VIP's keepalived first), Patroni's etcd keys deleted when its last member is gone, the folder
//! removed) and `stop_all` (for `pgplane up`'s Ctrl-C: stops everything, keeps what to restart).

use crate::dcs;
use crate::fence;
use crate::haproxy::{self, GatewayPaths};
use crate::keepalived::{self, VipPaths};
use crate::node::{Node, NodeError, Processes, GATEWAY_STOP_GRACE, MEMBER_STOP_GRACE};
use crate::patroni::{self, MemberPaths};
use crate::process::{self, Managed};
use crate::reaper::reaping;
use crate::specs;
use anyhow::Context;
use pgplane_core::ids::DatabaseId;
use pgplane_localpg::{find_bindir, RunAs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

impl Node {
    /// Stops the database's gateways, then its members, deletes its keys in etcd when no other
    /// member is up (a plan change removes one member of a running database), and removes its
    /// folder. Removing a database that is not here is fine; the generation is remembered after
    /// removal. A marker written first keeps the reconciler from bringing the database back if
    /// the agent dies half-way; running the removal again ends it.
    pub async fn remove_database(&self, database_id: DatabaseId, generation: i64) -> Result<(), NodeError> {
        let db = self.database(database_id);
        let mut procs = db.lock().await;
        fence::advance(&self.root, database_id, generation)?;
        let dir = self.database_dir(database_id);
        if !dir.exists() {
            specs::unmark_removing(&self.root, database_id)?;
            return Ok(());
        }
        specs::mark_removing(&self.root, database_id, generation)?;
        let members = specs::load(&dir, database_id).members;
        let taken = std::mem::take(&mut *procs);
        let (stop_dir, runas) = (dir.clone(), self.runas.clone());
        tokio::task::spawn_blocking(move || {
            reaping(|| stop_database(taken, &stop_dir, &runas, true));
            process::wait_none_under(&stop_dir, Duration::from_secs(30))
        })
        .await
        .context("stopping the database")??;
        if let Some(first) = members.first() {
            let ours: Vec<String> = members.iter().map(|m| m.member.clone()).collect();
            dcs::remove_scope_if_last(&first.etcd, &first.scope, &ours)
                .await
                .context("deleting the database's keys in etcd")?;
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(NodeError::from(anyhow::Error::new(e).context(format!("removing {}", dir.display()))))
            }
            _ => {}
        }
        specs::unmark_removing(&self.root, database_id)?;
        tracing::info!(database = %database_id, "database removed from this node");
        Ok(())
    }

    /// Stops every process of every database on this node, gateways first; specs and data stay,
    /// so the next agent on this folder starts them again. Blocking.
    pub fn stop_all(&self) {
        reaping(|| self.stop_all_now());
    }

    fn stop_all_now(&self) {
        let known: Vec<_> = {
            let map = self.databases.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(id, db)| (*id, db.clone())).collect()
        };
        for (id, db) in known {
            // A job still holding the lock was cancelled with the agent; its processes are
            // found through their folders below.
            if let Ok(mut procs) = db.try_lock() {
                stop_database(std::mem::take(&mut *procs), &self.database_dir(id), &self.runas, false);
            }
        }
        for id in specs::databases(&self.root) {
            stop_database(Processes::default(), &self.database_dir(id), &self.runas, false);
        }
    }
}

/// The member and gateway folders of a database.
fn folders(database_dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(database_dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).map(|e| e.path()).collect();
    dirs.sort();
    dirs
}

/// How long a removed gateway's sessions may go on before it is stopped.
const GATEWAY_SOFT_STOP: Duration = Duration::from_secs(2);

/// Gateways first (clients stop reaching the database), then members, then any PostgreSQL left
/// behind; processes this agent does not know yet (started by an earlier one) are found through
/// their pid files and command lines.
/// `softly` (a removal): a gateway that goes while another keeps the port (Business →
/// Starter) first lets the connections it holds finish their handshake and short sessions.
pub(crate) fn stop_database(procs: Processes, database_dir: &Path, runas: &RunAs, softly: bool) {
    let stop_gateway = |g: Managed| match softly {
        true => g.stop_softly(libc::SIGUSR1, GATEWAY_SOFT_STOP, GATEWAY_STOP_GRACE),
        false => g.stop(GATEWAY_STOP_GRACE),
    };
    // The VIP leaves first (keepalived's SIGTERM hands it to another gateway host at once).
    for (_, vip) in procs.vips {
        vip.stop(GATEWAY_STOP_GRACE);
    }
    for dir in folders(database_dir, "vip-") {
        if let Some(found) = keepalived::adopt(&VipPaths::new(dir)) {
            found.stop(GATEWAY_STOP_GRACE);
        }
    }
    for (_, gateway) in procs.gateways {
        stop_gateway(gateway);
    }
    for dir in folders(database_dir, "gateway-") {
        if let Some(found) = haproxy::adopt(&GatewayPaths::new(dir)) {
            stop_gateway(found);
        }
    }
    for (_, member) in procs.members {
        member.stop(MEMBER_STOP_GRACE);
    }
    for dir in folders(database_dir, "member-") {
        let paths = MemberPaths::new(dir);
        if let Some(found) = patroni::adopt(&paths) {
            found.stop(MEMBER_STOP_GRACE);
        }
        stop_postmaster(&paths, runas);
    }
}

/// Patroni stops its PostgreSQL when it stops; if it was killed first, `pg_ctl` stops the
/// PostgreSQL that `data/postmaster.pid` names (fast, then immediate).
pub(crate) fn stop_postmaster(paths: &MemberPaths, runas: &RunAs) {
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
