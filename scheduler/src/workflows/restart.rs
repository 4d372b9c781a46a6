//! Restart: a rolling restart, one member at a time, of the members whose agents are alive (a
//! lost host's member is skipped: nothing there can be restarted).
//!
//! ```text
//! start (member 0) ─RestartMember─▶ member(1) ─▶ … ─▶ member(n-1) ─▶ finish
//! ```

use pgplane_core::agent::AgentTask;
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::common::{enqueue_agent_job, patroni_api, secrets_of};
use super::{enqueue_step, Workflows};
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    /// Restart the member at this index (in name order).
    Member(usize),
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => member(w, tx, st, step, 0).await,
        Step::Member(i) => member(w, tx, st, step, i).await,
        Step::Finish => {
            operation_finish_in(tx, st.operation.id, None).await?;
            Ok(())
        }
    }
}

/// Restarts the first member from index `from` whose agent is alive; the step after it
/// restarts the next one, so only one member is down at a time.
async fn member(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    step: Step,
    from: usize,
) -> Result<(), JobError> {
    let members = members_of_in(tx, st.database_id).await?;
    let live = w.live_members(tx, st).await?;
    let Some((i, m)) = members.iter().enumerate().skip(from).find(|(_, m)| live.iter().any(|l| l.name == m.name))
    else {
        return enqueue_step(tx, st, Step::Finish).await;
    };
    for skipped in &members[from..i] {
        tracing::warn!(database = %st.database_id, member = %skipped.name, "restart: the member's agent is lost; skipped");
    }
    let then = if i + 1 < members.len() { Step::Member(i + 1) } else { Step::Finish };
    let secrets = secrets_of(tx, st).await?;
    let task = AgentTask::RestartMember {
        database_id: st.database_id,
        generation: st.generation,
        member: m.name.clone(),
        api: patroni_api(m, &secrets),
    };
    enqueue_agent_job(tx, m.agent_id, st, (step, then), &task).await?;
    let progress = 10 + (80 * i / members.len().max(1)) as i32;
    operation_progress_in(tx, st.operation.id, progress, &format!("restarting member {}", m.name)).await?;
    Ok(())
}
