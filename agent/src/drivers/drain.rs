//! Draining a member in this host's gateways of a database, for a planned switchover: new
//! client connections stop going to the leader that is about to step down and wait in the
//! gateway (its `no-primary` backup) until the new leader passes its check; sessions already
//! open go on until PostgreSQL stops. A drain is recorded in the gateway's folder with its
//! deadline, and the reconciler lifts it once the deadline has passed, so a switchover that
//! never finishes (or an agent that crashed meanwhile) cannot leave a member drained.

use crate::files::{check_name, write_atomic};
use crate::haproxy::{self, GatewayPaths};
use crate::node::{Node, NodeError};
use crate::specs;
use anyhow::{Context, Result};
use pgplane_core::ids::DatabaseId;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize)]
struct Drained {
    member: String,
    /// Seconds since the Unix epoch.
    until: u64,
}

fn record(paths: &GatewayPaths) -> PathBuf {
    paths.dir.join("drain.json")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl Node {
    /// Drains `member` (or lifts its drain) in every gateway of the database on this host.
    /// Returns the gateways it applied to.
    pub async fn drain_member(
        &self,
        database_id: DatabaseId,
        generation: i64,
        member: &str,
        drain: bool,
        for_secs: u32,
    ) -> Result<Vec<String>, NodeError> {
        check_name("member", member)?;
        let db = self.database(database_id);
        let _procs = db.lock().await;
        self.admit(database_id, generation)?;
        let mut applied = Vec::new();
        for spec in specs::load(&self.database_dir(database_id), database_id).gateways {
            if !spec.backends.iter().any(|b| b.member == member) {
                continue;
            }
            let paths = GatewayPaths::new(self.gateway_dir(database_id, &spec.name));
            if drain {
                let text =
                    serde_json::to_string(&Drained { member: member.into(), until: now() + u64::from(for_secs) })
                        .context("serializing a drain")?;
                write_atomic(&record(&paths), &text, None)?;
            }
            haproxy::set_drain(&paths, member, drain).await?;
            if !drain {
                remove(&paths)?;
            }
            applied.push(spec.name);
        }
        Ok(applied)
    }

    /// Lifts the drains whose deadline has passed (called by the reconciler).
    pub(crate) async fn lapse_drains(&self, database_id: DatabaseId, gateway: &str) -> Result<()> {
        let paths = GatewayPaths::new(self.gateway_dir(database_id, gateway));
        let Ok(text) = std::fs::read_to_string(record(&paths)) else { return Ok(()) };
        let drained: Option<Drained> = serde_json::from_str(&text).ok();
        if let Some(d) = &drained {
            if d.until > now() {
                return Ok(());
            }
            tracing::warn!(%database_id, %gateway, member = %d.member, "a drain lapsed; the member takes connections again");
            haproxy::set_drain(&paths, &d.member, false).await?;
        }
        remove(&paths)
    }
}

fn remove(paths: &GatewayPaths) -> Result<()> {
    match std::fs::remove_file(record(paths)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("removing a drain record"),
        _ => Ok(()),
    }
}
