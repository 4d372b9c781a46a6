//! Verified restores: a daily backup that succeeded is restored into a scratch PostgreSQL of the
//! database's major version on the host of the member it was dumped on (a Business database's
//! follower when it streamed: the leader's host keeps its CPU and disk for the tenant's traffic;
//! that host has the server's own major version installed and the backup storage configured,
//! which any host of the database must), every table is read back and its rows counted against
//! the counts recorded in the dump's snapshot, and the scratch server is thrown away. The backup
//! then shows `verified_at` and `passed`, or `failed` with a reason a tenant can read, and an
//! event says so (`backup_verified`, `backup_verification_failed`). A backup that does not restore
//! at all (its checksum differs, pg_restore refuses it) fails its verification; a host that
//! cannot try (no scratch server) fails the job, which is retried, then ends this operation in
//! `error` with the backup left unverified.
//!
//! ```text
//! start ─Backup{Verify} on the dump member's agent (else a live member's)─▶ record
//!        (verified_at, passed/failed + reason, event)
//! start ─(backup gone, or not done)─▶ done, nothing to verify
//! ```

use pgplane_core::agent::{AgentTask, BackupTask};
use pgplane_core::ids::BackupId;
use pgplane_store::backups::backup_object_in;
use pgplane_store::daily_backups::{backup_member_in, operation_report_in, verification_record_in};
use pgplane_store::engine::agents_alive_in;
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::common::enqueue_agent_job;
use super::Workflows;
use crate::queue::JobError;

/// The job kind of a verification on an agent (`BackupTask::Verify`).
const VERIFY_JOB: &str = "backup_verify";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Record,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    let backup: BackupId = serde_json::from_value(st.operation.params["backup_id"].clone())
        .map_err(|e| JobError::fatal(format!("a verify_backup operation without its backup: {e}")))?;
    match step {
        Step::Start => start(w, tx, st, backup).await,
        Step::Record => record(tx, st, backup).await,
    }
}

/// Asks the agent of the member the backup was dumped on to restore it into a scratch server.
async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState, id: BackupId) -> Result<(), JobError> {
    let b = match backup_object_in(tx, id).await? {
        Some(b) if b.is_done() && !b.deleted => b,
        _ => {
            // Deleted since (by the tenant, or retention), or never finished: nothing to check.
            operation_finish_in(tx, st.operation.id, None).await?;
            return Ok(());
        }
    };
    let (Some(sha256), Some(row_counts)) = (b.sha256.clone(), b.row_counts.clone()) else {
        return Err(JobError::fatal(format!("backup {id} is done without its SHA-256 or row counts")));
    };
    let members = members_of_in(tx, st.database_id).await?;
    let agents: Vec<_> = members.iter().map(|m| m.agent_id).collect();
    let alive = agents_alive_in(tx, &agents, w.agent_lost_after().as_secs_f64()).await?;
    let dumped_on = backup_member_in(tx, id).await?;
    let live = members.iter().filter(|m| alive.contains(&m.agent_id));
    let chosen = live.clone().find(|m| Some(&m.name) == dumped_on.as_ref()).or_else(|| live.clone().next());
    let Some(member) = chosen else {
        return Err(JobError::Refused {
            tenant: "the backup could not be verified: no host of the database answers the platform; it stays \
                     unverified"
                .into(),
            operator: format!("no live member's agent to verify backup {id} of database {}", st.database_id),
        });
    };
    let task = AgentTask::Backup {
        task: BackupTask::Verify {
            database_id: st.database_id,
            backup: b.location(),
            sha256,
            version: st.version.clone(),
            row_counts,
        },
    };
    enqueue_agent_job(tx, member.agent_id, st, (Step::Start, Step::Record), &task).await?;
    operation_progress_in(tx, st.operation.id, 10, "restoring the backup into a scratch server").await?;
    Ok(())
}

/// Records how the verification ended, with its event.
async fn record(tx: &mut PgConnection, st: &OperationState, id: BackupId) -> Result<(), JobError> {
    let report = operation_report_in(tx, st.operation.id, VERIFY_JOB)
        .await?
        .ok_or_else(|| JobError::fatal("the verification reported nothing"))?;
    let passed =
        report["ok"].as_bool().ok_or_else(|| JobError::fatal(format!("a verification without ok: {report}")))?;
    let detail = if passed { None } else { Some(reason(&report)) };
    verification_record_in(tx, st.database_id, id, passed, detail.as_deref()).await?;
    if let Some(why) = &detail {
        tracing::warn!(database = %st.database_id, backup = %id, %why, error = %report["error"], "backup verification failed");
    }
    operation_finish_in(tx, st.operation.id, None).await?;
    Ok(())
}

/// What a tenant reads of a failed verification: the problems the agent found (tables and
/// counts, or why the backup does not restore), the first few.
fn reason(report: &serde_json::Value) -> String {
    let problems: Vec<&str> = report["problems"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
    let mut text = problems.iter().take(5).copied().collect::<Vec<_>>().join("; ");
    if problems.len() > 5 {
        text.push_str(&format!("; and {} more", problems.len() - 5));
    }
    if text.is_empty() {
        text = "the restored copy differed from the backup's recorded content".into();
    }
    text
}
