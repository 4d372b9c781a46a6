//! Restore in place: a backup (of this database, or of another database of the same tenant)
//! replaces the content of the tenant's database on its leader. The agent restores into a
//! scratch database beside it, then swaps the two names in one transaction (a crash at any point
//! leaves the old content or the new under the name, never a mix); followers follow through
//! replication, and the connection URL does not change. A killed agent's restore is retried: the
//! retry drops the scratch database the killed one left.
//!
//! ```text
//! start ─check the backup (done, same tenant, not newer than the server); Backup{Restore} on
//!       the leader's agent─▶ finish (restored event)
//! ```
//!
//! A restore into a new database is the `create` workflow with `restore_from` in its params:
//! once the members and gateways run, its `restore` step calls `restore_into_leader` here, and
//! the database is available only after.

use pgplane_core::agent::{AgentTask, BackupTask};
use pgplane_core::ids::BackupId;
use pgplane_store::backups::{backup_object_in, BackupObject};
use pgplane_store::config::event_insert_in;
use pgplane_store::engine::{agents_alive_in, member_leader_in};
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use super::common::enqueue_agent_job;
use super::{WorkflowStep, Workflows};
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => {
            let backup = backup_param(st, "backup_id")?;
            restore_into_leader(w, tx, st, backup, (Step::Start, Step::Finish)).await?;
            operation_progress_in(tx, st.operation.id, 20, "restoring the backup").await?;
            Ok(())
        }
        Step::Finish => {
            let backup = backup_param(st, "backup_id")?;
            event_insert_in(tx, st.database_id, "restored", json!({ "backup_id": backup })).await?;
            operation_finish_in(tx, st.operation.id, None).await?;
            Ok(())
        }
    }
}

/// The backup an operation's params name under `key`.
pub(crate) fn backup_param(st: &OperationState, key: &str) -> Result<BackupId, JobError> {
    serde_json::from_value(st.operation.params[key].clone())
        .map_err(|e| JobError::fatal(format!("operation without a valid {key}: {e}")))
}

fn refused(tenant: &str, operator: String) -> JobError {
    JobError::Refused { tenant: tenant.into(), operator }
}

/// Asks the leader's agent to replace the database's content with `backup`, after checking that
/// the backup can be restored here: done, of the same tenant, and of a PostgreSQL major version
/// not newer than the database's.
pub(crate) async fn restore_into_leader<S: WorkflowStep>(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    backup: BackupId,
    steps: (S, S),
) -> Result<(), JobError> {
    let b = backup_object_in(tx, backup).await?;
    let b: BackupObject = match b {
        Some(b) if b.tenant_id == st.operation.tenant_id && !b.deleted && b.is_done() => b,
        _ => {
            return Err(refused(
                "the backup to restore is gone or did not finish; choose another backup",
                format!("backup {backup} is missing, deleted, unfinished or of another tenant"),
            ))
        }
    };
    let sha256 = b.sha256.clone().ok_or_else(|| JobError::fatal("a done backup without its SHA-256"))?;
    if let Some(dumped) = b.postgres_version.as_deref().and_then(major) {
        if major(&st.version).is_some_and(|target| dumped > target) {
            return Err(refused(
                &format!(
                    "the backup was taken of PostgreSQL {dumped}, newer than this database's {}; restore it into a \
                     database of version {dumped} or later",
                    st.version
                ),
                format!("backup {backup} of version {dumped} into a database of version {}", st.version),
            ));
        }
    }
    let members = members_of_in(tx, st.database_id).await?;
    let leader = member_leader_in(tx, st.database_id).await?;
    let Some(m) = members.iter().find(|m| Some(&m.name) == leader.as_ref()) else {
        // Right after a create the leader may not be recorded yet: try again shortly.
        return Err(JobError::retry("waiting for the database's leader to be known"));
    };
    let alive = agents_alive_in(tx, &[m.agent_id], w.agent_lost_after().as_secs_f64()).await?;
    if alive.is_empty() {
        return Err(refused(
            "the database's leader does not answer the platform right now, so nothing was restored; try again later, \
             or contact support",
            format!("the agent of leader {} of database {} is lost", m.name, st.database_id),
        ));
    }
    let task = AgentTask::Backup {
        task: BackupTask::Restore {
            database_id: st.database_id,
            generation: st.generation,
            member: m.name.clone(),
            backup: b.location(),
            sha256,
        },
    };
    enqueue_agent_job(tx, m.agent_id, st, steps, &task).await
}

/// The major version of `15`, `15.14`, `15.14 (Debian 15.14-0+deb12u1)`.
fn major(version: &str) -> Option<u32> {
    version.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn majors_of_versions_as_written() {
        assert_eq!(super::major("15"), Some(15));
        assert_eq!(super::major("15.14 (Debian 15.14-0+deb12u1)"), Some(15));
        assert_eq!(super::major("16.2"), Some(16));
        assert_eq!(super::major(""), None);
    }
}
