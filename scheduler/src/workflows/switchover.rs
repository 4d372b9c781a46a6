//! Switchover: the scheduler picks the candidate (the one asked for, else the synchronous
//! standby, else another live replica) and puts it in the task, so a re-run after a lost report
//! asks for the same leader and changes nothing. The leader is drained in every gateway around
//! it. Change plan's rolling resize and Business → Starter use the same two steps.
//!
//! ```text
//! start ─DrainMember on the other gateway hosts, Switchover(candidate) through a live member─▶
//! undrain ─DrainMember(off)─▶ finish (roles and the event from the agent's answer, unless etcd's
//! reading recorded them first)
//! ```

use pgplane_core::agent::{AgentId, AgentTask};
use pgplane_core::model::OperationKind;
use pgplane_store::engine::{member_leader_in, member_synchronous_in, switchover_drained_in, switchover_result_in};
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use super::common::enqueue_agent_job;
use super::{enqueue_step, WorkflowStep, Workflows};
use crate::queue::JobError;

/// How long a switchover's drain may hold at most; it is lifted as soon as the switchover is
/// done, this bounds a switchover that never finishes.
const DRAIN_SECS: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Undrain,
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => {
            let asked = st.operation.params["candidate"].as_str().map(str::to_string);
            let candidate = pick_candidate(w, tx, st, asked).await?;
            switch_leader(w, tx, st, &candidate, (Step::Start, Step::Undrain)).await
        }
        Step::Undrain => lift_drain(w, tx, st, (Step::Undrain, Step::Finish)).await,
        Step::Finish => {
            record_switchover(tx, st).await?;
            w.finish_available(tx, st).await
        }
    }
}

/// Whom the leadership goes to: `asked` when given; else the synchronous standby when its agent
/// is alive; else the first live member that does not lead. Never left to the agent: an agent
/// choosing "any replica" would move the lead back on a re-run.
pub(crate) async fn pick_candidate(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    asked: Option<String>,
) -> Result<String, JobError> {
    if let Some(c) = asked {
        return Ok(c);
    }
    let leader = member_leader_in(tx, st.database_id).await?;
    let live = w.live_members(tx, st).await?;
    let sync = member_synchronous_in(tx, st.database_id).await?;
    let pick = sync
        .filter(|s| live.iter().any(|m| &m.name == s) && Some(s) != leader.as_ref())
        .or_else(|| live.iter().map(|m| m.name.clone()).find(|n| Some(n) != leader.as_ref()));
    pick.ok_or_else(|| JobError::Refused {
        tenant: "no follower of the database is available to take the lead right now, so nothing was changed; try \
                 again later"
            .into(),
        operator: format!("switchover of {}: no live member other than the leader {leader:?}", st.database_id),
    })
}

/// A switchover to `candidate` with the leader drained in every gateway: the drain goes out
/// with the switchover, not before it (Patroni checks the candidate for ~0.3 s before it demotes
/// the leader, time enough for the gateways' drain jobs); the agent that asks Patroni drains its
/// own gateways first. Without a known leader, or when the candidate already leads, nothing is
/// drained. Drained, the leader takes no new client connection: they wait in the gateways for
/// the new leader instead of reaching a PostgreSQL that is about to stop.
pub(crate) async fn switch_leader<S: WorkflowStep>(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    candidate: &str,
    steps: (S, S),
) -> Result<(), JobError> {
    let (m, api) = w.control_member(tx, st).await?;
    let drain = member_leader_in(tx, st.database_id).await?.filter(|leader| leader != candidate);
    if let Some(leader) = &drain {
        drain_jobs(w, tx, st, leader, true, steps, Some(m.agent_id)).await?;
    }
    let task = AgentTask::Switchover {
        database_id: st.database_id,
        generation: st.generation,
        api,
        candidate: Some(candidate.to_string()),
        drain_leader: drain,
    };
    enqueue_agent_job(tx, m.agent_id, st, steps, &task).await?;
    operation_progress_in(tx, st.operation.id, 40, "switching the leader over, its connections drained").await?;
    Ok(())
}

/// Lifts the drain of the operation's switchover, if it had one, then goes on with `then`.
pub(crate) async fn lift_drain<S: WorkflowStep>(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    (step, then): (S, S),
) -> Result<(), JobError> {
    let jobs = match switchover_drained_in(tx, st.operation.id).await? {
        Some(member) => drain_jobs(w, tx, st, &member, false, (step, then), None).await?,
        None => 0,
    };
    if jobs == 0 {
        enqueue_step(tx, st, then).await?;
    }
    operation_progress_in(tx, st.operation.id, 60, "the gateways route to the new leader").await?;
    Ok(())
}

/// One `DrainMember` job per live agent that runs a gateway of the database (but `except`);
/// returns how many.
async fn drain_jobs<S: WorkflowStep>(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    member: &str,
    drain: bool,
    steps: (S, S),
    except: Option<AgentId>,
) -> Result<usize, JobError> {
    let mut agents: Vec<AgentId> = gateways_of_in(tx, st.database_id).await?.iter().map(|g| g.agent_id).collect();
    agents.retain(|a| Some(*a) != except);
    agents.sort();
    agents.dedup();
    let alive = pgplane_store::engine::agents_alive_in(tx, &agents, w.agent_lost_after().as_secs_f64()).await?;
    for agent in &alive {
        let task = AgentTask::DrainMember {
            database_id: st.database_id,
            generation: st.generation,
            member: member.to_string(),
            drain,
            for_secs: DRAIN_SECS,
        };
        enqueue_agent_job(tx, *agent, st, steps, &task).await?;
    }
    Ok(alive.len())
}

/// Roles and the event, from the agent's answer `{from, to}`, unless the reading of etcd
/// already recorded this change (it reads under the database's row lock, as this does: the
/// change is recorded once, whichever sees it first).
async fn record_switchover(tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    debug_assert_eq!(st.operation.kind, OperationKind::Switchover);
    let Some(result) = switchover_result_in(tx, st.operation.id).await? else { return Ok(()) };
    let (Some(from), Some(to)) = (result["from"].as_str(), result["to"].as_str()) else { return Ok(()) };
    if from == to {
        return Ok(());
    }
    let known = pgplane_store::truth::truth_leader_in(tx, st.database_id).await?;
    if known.as_deref() == Some(to) {
        return Ok(());
    }
    pgplane_store::truth::truth_leader_set_in(tx, st.database_id, to).await?;
    pgplane_store::config::event_insert_in(tx, st.database_id, "switchover", json!({ "from": from, "to": to })).await?;
    Ok(())
}
