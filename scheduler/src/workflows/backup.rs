//! Backup: `pg_dump -Fc` of the tenant's database streamed into backup storage by the agent of
//! the member it runs on — a streaming follower of a Business database (its dump is not
//! cancelled by recovery conflicts: followers run with `hot_standby_feedback` and
//! `max_standby_streaming_delay = -1`), else the leader. The result (size, SHA-256, version, row
//! counts taken in the dump's snapshot) is recorded with the backup; only then is the oldest
//! manual backup beyond the plan's total deleted (object, then row). A failed backup ends in
//! `error` with the operation (`operation_finish_in`), and its object, should one exist, is
//! deleted.
//!
//! ```text
//! start ─pick the member; Backup{Dump} on its agent─▶ record (done, backup_done event;
//!       evictions: backup_evicted events, objects then rows deleted by backup_delete jobs)
//! ```
//!
//! A killed agent's dump is retried (its job goes back to the queue when the agent registers
//! again): the retry removes what the killed upload staged, and the object only appears under
//! its name once a dump completed.

use chrono::Utc;
use pgplane_core::agent::{AgentTask, BackupTask};
use pgplane_core::backup::{self, BackupMethod};
use pgplane_core::ids::BackupId;
use pgplane_store::backups::*;
use pgplane_store::config::event_insert_in;
use pgplane_store::engine::{agents_alive_in, member_leader_in};
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use super::common::enqueue_agent_job;
use super::Workflows;
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Record,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    let b = backup_of_operation_in(tx, st.operation.id)
        .await?
        .ok_or_else(|| JobError::fatal("a backup operation without its backup"))?;
    match step {
        Step::Start => start(w, tx, st, &b).await,
        Step::Record => record(tx, st, &b).await,
    }
}

/// Picks the member and asks its agent to dump.
async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState, b: &BackupObject) -> Result<(), JobError> {
    let member = dump_member(w, tx, st).await?;
    backup_running_in(tx, b.id, &member.name).await?;
    let task = AgentTask::Backup {
        task: BackupTask::Dump {
            database_id: st.database_id,
            generation: st.generation,
            member: member.name.clone(),
            backup: b.location(),
        },
    };
    enqueue_agent_job(tx, member.agent_id, st, (Step::Start, Step::Record), &task).await?;
    operation_progress_in(tx, st.operation.id, 10, &format!("dumping on member {}", member.name)).await?;
    Ok(())
}

/// The member a dump runs on: a replica that streams, whose agent is alive (the first in name
/// order), else the leader when its agent is alive; while no leader is recorded (a database just
/// created, a failover) the step is tried again shortly. No live member: refused, nothing changed.
pub(crate) async fn dump_member(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
) -> Result<MemberRow, JobError> {
    let members = members_of_in(tx, st.database_id).await?;
    let agents: Vec<_> = members.iter().map(|m| m.agent_id).collect();
    let alive = agents_alive_in(tx, &agents, w.agent_lost_after().as_secs_f64()).await?;
    let roles = member_roles_in(tx, st.database_id).await?;
    let live = |name: &str| members.iter().find(|m| m.name == name && alive.contains(&m.agent_id));
    let follower = roles.iter().filter(|r| r.role == "replica" && r.state == "streaming").find_map(|r| live(&r.name));
    if let Some(m) = follower {
        return Ok(m.clone());
    }
    let leader = member_leader_in(tx, st.database_id).await?;
    if let Some(m) = leader.as_deref().and_then(live) {
        return Ok(m.clone());
    }
    if leader.is_none() && members.iter().any(|m| alive.contains(&m.agent_id)) {
        // Just created or failing over: the leader is not recorded yet.
        return Err(JobError::retry("waiting for the database's leader to be known"));
    }
    Err(JobError::Refused {
        tenant: "no member of the database can be backed up right now (its hosts do not answer the platform); try \
                 again later, or contact support"
            .into(),
        operator: format!("no live leader or streaming replica of database {}", st.database_id),
    })
}

/// Records what the dump reported, then evicts what the manual quota no longer keeps.
async fn record(tx: &mut PgConnection, st: &OperationState, b: &BackupObject) -> Result<(), JobError> {
    let report = operation_job_result_in(tx, st.operation.id, "backup_dump")
        .await?
        .ok_or_else(|| JobError::fatal("the dump reported nothing"))?;
    let size =
        report["size"].as_i64().ok_or_else(|| JobError::fatal(format!("a dump report without size: {report}")))?;
    let sha256 = report["sha256"].as_str().ok_or_else(|| JobError::fatal("a dump report without sha256"))?;
    let version = report["server_version"].as_str().unwrap_or_default();
    let dump = DumpRecord {
        size_bytes: size,
        sha256,
        postgres_version: version,
        from_standby: report["from_standby"].as_bool().unwrap_or(false),
        row_counts: &report["row_counts"],
    };
    backup_done_in(tx, b.id, &dump).await?;
    let detail = json!({ "backup_id": b.id, "method": b.method, "size_bytes": size, "sha256": sha256 });
    event_insert_in(tx, st.database_id, "backup_done", detail).await?;
    if b.method == BackupMethod::Manual.as_str() {
        let limits = backup::BackupLimits::of(&st.plan);
        let facts = backup_facts_in(tx, st.database_id).await?;
        for evicted in backup::evictions(&limits, &facts, b.id) {
            evict(tx, st, evicted, b.id).await?;
        }
    }
    operation_finish_in(tx, st.operation.id, None).await?;
    tracing::info!(database = %st.database_id, backup = %b.id, size, at = %Utc::now(), "backup done");
    Ok(())
}

/// Starts a scheduled backup of `database` (the daily timer's): its row and its `backup`
/// operation, counted in no quota; a conflict while another operation runs.
pub async fn start_scheduled(
    store: &pgplane_store::Store,
    database: pgplane_core::ids::DatabaseId,
) -> Result<(pgplane_core::backup::Backup, pgplane_core::model::Operation), pgplane_core::Error> {
    store.backup_start(None, database, BackupMethod::Scheduled, Utc::now()).await
}

async fn evict(tx: &mut PgConnection, st: &OperationState, evicted: BackupId, by: BackupId) -> Result<(), JobError> {
    if backup_delete_in(tx, evicted).await? {
        let detail = json!({ "backup_id": evicted, "evicted_by": by, "reason": "the plan's total of manual backups" });
        event_insert_in(tx, st.database_id, "backup_evicted", detail).await?;
    }
    Ok(())
}
