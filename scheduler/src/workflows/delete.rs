//! Delete: every live agent that holds a part of the database removes it; a lost host's part
//! is skipped (the host is gone, and what it ran with it) and its resources are released with
//! the rest.
//!
//! ```text
//! start ─daily backup timer removed; RemoveDatabase on each live agent─▶ finish (deleted; etcd user and keys, ports,
//!        capacity, secrets released)
//! ```

use pgplane_core::agent::{AgentId, AgentTask};
use pgplane_store::engine::agents_alive_in;
use pgplane_store::timers::daily_backup_timer_sync_in;
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::common::enqueue_agent_job;
use super::{enqueue_step, Workflows};
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => start(w, tx, st).await,
        Step::Finish => {
            w.etcd_forget(st.database_id).await?;
            database_deleted_in(tx, st.database_id).await?;
            operation_finish_in(tx, st.operation.id, None).await?;
            Ok(())
        }
    }
}

/// Asks every live agent that holds a part of the database to remove it.
async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    // No daily backup of a database being deleted (its status says so: the timer goes).
    daily_backup_timer_sync_in(tx, st.database_id, chrono::Utc::now()).await?;
    let mut agents: Vec<AgentId> = members_of_in(tx, st.database_id).await?.iter().map(|m| m.agent_id).collect();
    agents.extend(gateways_of_in(tx, st.database_id).await?.iter().map(|g| g.agent_id));
    agents.sort();
    agents.dedup();
    let alive = agents_alive_in(tx, &agents, w.agent_lost_after().as_secs_f64()).await?;
    for lost in agents.iter().filter(|a| !alive.contains(a)) {
        tracing::warn!(database = %st.database_id, agent = %lost, "deleting: the agent is lost, its part is skipped");
    }
    if alive.is_empty() {
        // Never placed, or only on lost hosts: nothing to stop anywhere.
        enqueue_step(tx, st, Step::Finish).await?;
    }
    for agent in alive {
        let task = AgentTask::RemoveDatabase { database_id: st.database_id, generation: st.generation };
        enqueue_agent_job(tx, agent, st, (Step::Start, Step::Finish), &task).await?;
    }
    operation_progress_in(tx, st.operation.id, 20, "removing processes and data").await?;
    Ok(())
}
