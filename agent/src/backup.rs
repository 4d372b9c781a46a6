//! Runs a `BackupTask` on this node: finds the member's socket, port, major version and
//! tenant database from its persisted spec, fences by generation, and hands the work to the
//! `pgdump` driver with the node's backup storage (the agent's own configuration: the task only
//! names a location). The answer is the JSON the job reports.

use crate::node::{Node, NodeError};
use crate::patroni::{MemberPaths, SUPERUSER};
use crate::pgdump::{self, PgTarget, RowCounts};
use anyhow::Context;
use pgplane_core::agent::{BackupTask, MemberSpec};
use pgplane_core::ids::DatabaseId;
use pgplane_storage::BackupStore;
use serde_json::{json, Value};

/// Runs one backup task against this node's members.
pub async fn run(node: &Node, store: &BackupStore, task: &BackupTask) -> Result<Value, NodeError> {
    match task {
        BackupTask::Dump { database_id, generation, member, backup } => {
            let (spec, target) = member_target(node, *database_id, *generation, member)?;
            // A retry: what an attempt killed mid-upload staged under this key goes first.
            let swept = store.sweep_key(&backup.key)?;
            if swept > 0 {
                tracing::warn!(key = %backup.key, swept, "removed the staging files of an interrupted dump");
            }
            let report = pgdump::dump(&target, &spec.secrets.app_database, store, &backup.key).await?;
            Ok(serde_json::to_value(report).context("reporting the dump")?)
        }
        BackupTask::Restore { database_id, generation, member, backup, sha256 } => {
            let (spec, target) = member_target(node, *database_id, *generation, member)?;
            let s = &spec.secrets;
            pgdump::restore_in_place(&target, store, &backup.key, Some(sha256), &s.app_database, &s.app_user).await?;
            Ok(json!({ "restored": backup.key }))
        }
        BackupTask::Verify { backup, sha256, version, row_counts, .. } => {
            let expected: RowCounts =
                serde_json::from_value(row_counts.clone()).context("the row counts recorded at dump time")?;
            let bin_dir = crate::node::bin_dir_for(version)?;
            let verification = pgdump::verify(&bin_dir, store, &backup.key, Some(sha256), &expected).await?;
            Ok(serde_json::to_value(verification).context("reporting the verification")?)
        }
    }
}

/// The member's spec as last applied here, and how to reach its PostgreSQL as the superuser
/// (peer authentication on its socket, as the server's OS user).
fn member_target(
    node: &Node,
    database_id: DatabaseId,
    generation: i64,
    member: &str,
) -> Result<(MemberSpec, PgTarget), NodeError> {
    if let Some(applied) = crate::fence::applied(node.root(), database_id)? {
        if generation < applied {
            return Err(NodeError::StaleGeneration { database_id, requested: generation, applied });
        }
    }
    let paths = MemberPaths::new(node.member_dir(database_id, member));
    let spec: MemberSpec = crate::specs::load_one(&paths.spec)
        .ok_or_else(|| NodeError::Unable(format!("member {member} of database {database_id} is not on this host")))?;
    let target = PgTarget {
        bin_dir: crate::node::bin_dir_for(&spec.version)?,
        host: paths.socket_dir.to_string_lossy().into_owned(),
        port: spec.pg_port,
        user: SUPERUSER.into(),
        password: None,
        runas: Some(node.runas.clone()),
    };
    Ok((spec, target))
}
