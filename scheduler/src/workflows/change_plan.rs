//! Plan changes. Same number of members: every member gets the new sizing. More members
//! (Starter → Business): new members on other agents join as replicas (Patroni clones them),
//! then every gateway routes to all members. Fewer (Business → Starter): the leader moves to
//! the member that stays (a drained switchover), the others are removed, then the gateways
//! route to what is left. The endpoint (gateway address and port) never changes.
//!
//! A new memory size needs a PostgreSQL restart: the connection limit is set in Patroni's DCS
//! first, then members restart follower first, and the leader only after a drained switchover
//! has moved the lead to a resized follower. A member whose spec changes in nothing that needs
//! a restart (a new certificate naming a new gateway host) is reloaded by its agent, never
//! restarted. A bigger size must fit on the members' hosts: a member whose host has no room moves
//! to one that has (see relocate.rs); with no such host, the operation waits ("waiting for
//! capacity"). No host is overcommitted.
//!
//! ```text
//! start ─synchronous mode (when gaining or losing a follower)─▶ plan
//! plan ─same size─▶ reshape:  members ─▶ finish            (same number: a reload)
//!                             new members ─▶ gateways ─▶ finish           (grow)
//!                             switchover to the kept member ─▶ undrain ─▶ shrink ─▶ gateways ─▶ finish
//! plan ─a member's host has no room─▶ moving ─▶ … (relocate.rs) ─▶ move_on ─▶ resize
//! plan ─new size: max_connections─▶ resize ─▶ rolling reshape:
//!                             followers ─▶ drain ─switchover─▶ undrain ─▶ resize_leader ─▶ finish
//!                             new members ─▶ gateways_rolling ─▶ drain ─▶ …  (grow)
//!                             (shrink as above)
//! ```

use pgplane_core::agent::{AgentId, AgentTask};
use pgplane_store::agents::agent_capacity_in;
use pgplane_store::engine::{member_leader_in, members_resized_in, members_set_size_in, switchover_result_in};
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::common::{enqueue_agent_job, secrets_of};
use super::placement::{place_gateways, place_members};
use super::switchover::{lift_drain, pick_candidate, switch_leader};
use super::{relocate, Workflows};
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    /// The plan's size and number of members.
    Plan,
    /// A new memory size, once the connection limit is set: a rolling reshape.
    Resize,
    /// New members started while the leader keeps its old size; the gateways next, then drain.
    GatewaysRolling,
    /// A switchover onto a resized follower.
    Drain,
    Undrain,
    /// The kept member leads: the others go.
    Shrink,
    /// The former leader, now a follower, gets the new size.
    ResizeLeader,
    Gateways,
    /// Replacements started on hosts with room: the gateways route to them (relocate.rs).
    Moving,
    /// The lead leaves the members that move.
    MoveLead,
    MoveUndrain,
    /// The members that moved are removed.
    MoveDrop,
    /// Then the connection limit, and a rolling resize of the members that stayed.
    MoveOn,
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => start(w, tx, st).await,
        Step::Plan => plan(w, tx, st).await,
        Step::Resize => reshape(w, tx, st, step, true).await,
        Step::GatewaysRolling => w.ensure_gateways(tx, st, (Step::GatewaysRolling, Step::Drain)).await,
        Step::Drain => {
            let candidate = pick_candidate(w, tx, st, None).await?;
            switch_leader(w, tx, st, &candidate, (Step::Drain, Step::Undrain)).await
        }
        Step::Undrain => {
            let members = members_of_in(tx, st.database_id).await?;
            let then = if members.len() > st.plan.data_nodes as usize { Step::Shrink } else { Step::ResizeLeader };
            lift_drain(w, tx, st, (Step::Undrain, then)).await
        }
        Step::Shrink => shrink(w, tx, st).await,
        Step::ResizeLeader => {
            let members = members_of_in(tx, st.database_id).await?;
            let secrets = secrets_of(tx, st).await?;
            w.ensure_members(tx, st, &secrets, &members, (Step::ResizeLeader, Step::Finish)).await?;
            operation_progress_in(tx, st.operation.id, 80, "resizing the former leader").await?;
            Ok(())
        }
        Step::Gateways => w.ensure_gateways(tx, st, (Step::Gateways, Step::Finish)).await,
        Step::Moving => w.ensure_gateways(tx, st, (Step::Moving, Step::MoveLead)).await,
        Step::MoveLead => relocate::lead(w, tx, st).await,
        Step::MoveUndrain => relocate::undrain(w, tx, st).await,
        Step::MoveDrop => relocate::drop_moved(w, tx, st).await,
        Step::MoveOn => max_connections(w, tx, st, Step::MoveOn).await,
        Step::Finish => w.finish_available(tx, st).await,
    }
}

/// Gaining or losing a follower turns synchronous replication on or off (the operation's
/// `synchronous_replication`): Patroni's non-strict mode first, which keeps writing while the
/// new follower is cloned, then the plan itself.
async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let Some(on) = st.operation.params["synchronous_replication"].as_bool() else {
        return plan(w, tx, st).await;
    };
    w.patch_config(tx, st, serde_json::json!({ "synchronous_mode": on }), (Step::Start, Step::Plan)).await?;
    let what = if on { "turning synchronous replication on" } else { "turning synchronous replication off" };
    operation_progress_in(tx, st.operation.id, 5, what).await?;
    Ok(())
}

async fn plan(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let resized = members_resized_in(tx, st.database_id, st.plan.memory_mb).await?;
    let misfits = relocate::misfits(tx, st).await?;
    if !misfits.is_empty() && members_of_in(tx, st.database_id).await?.len() == st.plan.data_nodes as usize {
        return relocate::start(w, tx, st, &misfits).await;
    }
    members_set_size_in(tx, st.database_id, st.plan.memory_mb, st.plan.disk_gb).await?;
    check_capacity(tx, st).await?;
    if !resized {
        return reshape(w, tx, st, Step::Plan, false).await;
    }
    max_connections(w, tx, st, Step::Plan).await
}

/// Another size: shared_buffers and max_connections take a PostgreSQL restart. The connection
/// limit lives in Patroni's DCS (PostgreSQL wants it cluster-wide); it is set first, the rolling
/// restarts of `resize` apply it with the new memory.
async fn max_connections(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    step: Step,
) -> Result<(), JobError> {
    let patch = serde_json::json!({ "postgresql": { "parameters": { "max_connections": st.plan.max_connections } } });
    w.patch_config(tx, st, patch, (step, Step::Resize)).await?;
    operation_progress_in(tx, st.operation.id, 40, "setting the new plan's connection limit").await?;
    Ok(())
}

/// With the members accounted at the new size, no live host may be overcommitted: else the step
/// waits (its transaction, and so the new size, rolls back; it runs again after a backoff).
async fn check_capacity(tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let agents: Vec<AgentId> = members_of_in(tx, st.database_id).await?.iter().map(|m| m.agent_id).collect();
    let short: Vec<String> = agent_capacity_in(tx)
        .await?
        .into_iter()
        .filter(|a| agents.contains(&a.agent.id) && (a.free_memory_mb < 0 || a.free_disk_gb < 0))
        .map(|a| format!("{} ({} MB, {} GB short)", a.agent.name, -a.free_memory_mb.min(0), -a.free_disk_gb.min(0)))
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    Err(JobError::retry(format!(
        "{}: plan {} ({} MB, {} GB per member) does not fit on {}",
        super::WAITING_FOR_CAPACITY,
        st.plan.id,
        st.plan.memory_mb,
        st.plan.disk_gb,
        short.join(", ")
    )))
}

/// Gives the members the plan's size and number. `rolling`: the new size needs a restart
/// of PostgreSQL; with a follower, the followers get it first, then the leader moves to one
/// of them (a drained switchover) and the former leader gets it as a follower, so clients see
/// a switchover, not an outage.
async fn reshape(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    step: Step,
    rolling: bool,
) -> Result<(), JobError> {
    let members = members_of_in(tx, st.database_id).await?;
    let wanted = st.plan.data_nodes as usize;
    let secrets = secrets_of(tx, st).await?;
    if members.len() == wanted {
        let leader = if rolling && wanted > 1 { member_leader_in(tx, st.database_id).await? } else { None };
        if let Some(leader) = leader {
            let followers: Vec<MemberRow> = members.iter().filter(|m| m.name != leader).cloned().collect();
            w.ensure_members(tx, st, &secrets, &followers, (step, Step::Drain)).await?;
            operation_progress_in(tx, st.operation.id, 20, "resizing the followers").await?;
            return Ok(());
        }
        w.ensure_members(tx, st, &secrets, &members, (step, Step::Finish)).await?;
        operation_progress_in(tx, st.operation.id, 20, "applying the new plan's settings").await?;
        return Ok(());
    }
    if members.len() > wanted {
        // The leader stays when known (no switchover then), else the first member, which
        // takes the lead before the others go.
        let kept = kept_member(tx, st, &members).await?;
        return switch_leader(w, tx, st, &kept, (step, Step::Undrain)).await;
    }
    // Grow: new members on agents that hold no member of this database yet.
    let new = place_members(tx, st, &members, wanted - members.len(), w.needs_vip(&st.plan)).await?;
    place_gateways(tx, st).await?;
    w.assign_vip(tx, st).await?;
    if rolling {
        // The leader keeps running at its old size until a new member leads.
        w.ensure_members(tx, st, &secrets, &new, (step, Step::GatewaysRolling)).await?;
    } else {
        let all = members_of_in(tx, st.database_id).await?;
        w.ensure_members(tx, st, &secrets, &all, (step, Step::Gateways)).await?;
    }
    operation_progress_in(tx, st.operation.id, 20, "adding a follower").await?;
    Ok(())
}

/// The leader is the kept member: remove the others with their gateways, and resize it.
async fn shrink(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let members = members_of_in(tx, st.database_id).await?;
    let kept = kept_member(tx, st, &members).await?;
    let (keep, drop): (Vec<MemberRow>, Vec<MemberRow>) = members.into_iter().partition(|m| m.name == kept);
    let dropped_agents = relocate::remove_members(tx, st, &drop, &keep).await?;
    for agent in dropped_agents {
        let task = AgentTask::RemoveDatabase { database_id: st.database_id, generation: st.generation };
        enqueue_agent_job(tx, agent, st, (Step::Shrink, Step::Gateways), &task).await?;
    }
    w.assign_vip(tx, st).await?;
    let secrets = secrets_of(tx, st).await?;
    w.ensure_members(tx, st, &secrets, &keep, (Step::Shrink, Step::Gateways)).await?;
    operation_progress_in(tx, st.operation.id, 50, "removing the follower").await?;
    Ok(())
}

/// The member that stays when Business becomes Starter: the leader the operation's switchover
/// chose; before it, the leader as last observed (then no switchover is needed), else the first.
async fn kept_member(tx: &mut PgConnection, st: &OperationState, members: &[MemberRow]) -> Result<String, JobError> {
    let switched = switchover_result_in(tx, st.operation.id).await?.and_then(|r| r["to"].as_str().map(str::to_string));
    let leader = match switched {
        Some(to) => Some(to),
        None => member_leader_in(tx, st.database_id).await?,
    };
    Ok(match leader {
        Some(l) if members.iter().any(|m| m.name == l) => l,
        _ => members.first().map(|m| m.name.clone()).ok_or_else(|| JobError::fatal("no member"))?,
    })
}
