//! A bigger plan that does not fit beside what else runs on a member's host moves that member to
//! a host with room instead of waiting: a replacement is placed and cloned there, the gateways
//! route to it, the lead leaves the member that goes (a drained switchover) when it had it, then
//! the member is removed with its gateways, and the plan change goes on as a rolling resize of
//! the members that stayed. The members that move are the ones still accounted at the old size.
//! No host with room: the step waits ("waiting for capacity"). No host is overcommitted at any
//! time: the moving member keeps its old size on its host until it is gone.
//!
//! ```text
//! plan ─place and start replacements─▶ moving ─gateways─▶ move_lead ─switchover, when the lead
//! moves─▶ move_undrain ─▶ move_drop ─remove the moved, gateways─▶ move_on ─max_connections─▶
//! resize (rolling, see change_plan.rs)
//! ```

use pgplane_core::agent::{AgentId, AgentTask};
use pgplane_store::agents::agent_capacity_in;
use pgplane_store::engine::{
    gateway_delete_in, member_delete_in, member_leader_in, member_set_size_in, member_sizes_in, member_synchronous_in,
    port_release_in,
};
use pgplane_store::workflow::*;
use sqlx::PgConnection;

use super::change_plan::Step;
use super::common::{enqueue_agent_job, secrets_of};
use super::placement::{place_gateways, place_members};
use super::switchover::{lift_drain, switch_leader};
use super::{enqueue_step, Workflows};
use crate::queue::JobError;

/// The members that cannot grow to the plan's size where they are: those on a live host whose
/// free memory or disk is less than what this database's members there would need more.
pub(crate) async fn misfits(tx: &mut PgConnection, st: &OperationState) -> Result<Vec<String>, JobError> {
    let sizes = member_sizes_in(tx, st.database_id).await?;
    let hosts = agent_capacity_in(tx).await?;
    let mut out = Vec::new();
    for host in &hosts {
        let here: Vec<_> = sizes.iter().filter(|m| m.agent_id == host.agent.id).collect();
        let memory: i64 = here.iter().map(|m| i64::from(st.plan.memory_mb - m.memory_mb)).sum();
        let disk: i64 = here.iter().map(|m| i64::from(st.plan.disk_gb - m.disk_gb)).sum();
        if host.free_memory_mb < memory || host.free_disk_gb < disk {
            out.extend(here.iter().map(|m| m.name.clone()));
        }
    }
    Ok(out)
}

/// The members still accounted at another size than the plan's: the ones that move.
async fn moving(tx: &mut PgConnection, st: &OperationState) -> Result<Vec<String>, JobError> {
    let sizes = member_sizes_in(tx, st.database_id).await?;
    Ok(sizes
        .into_iter()
        .filter(|m| (m.memory_mb, m.disk_gb) != (st.plan.memory_mb, st.plan.disk_gb))
        .map(|m| m.name)
        .collect())
}

/// Places a replacement for each of `misfits` on a host with room (or waits), accounts the
/// members that stay at the new size, and starts the replacements.
pub(crate) async fn start(
    w: &Workflows,
    tx: &mut PgConnection,
    st: &OperationState,
    misfits: &[String],
) -> Result<(), JobError> {
    let members = members_of_in(tx, st.database_id).await?;
    for m in members.iter().filter(|m| !misfits.contains(&m.name)) {
        member_set_size_in(tx, st.database_id, &m.name, st.plan.memory_mb, st.plan.disk_gb).await?;
    }
    let new = place_members(tx, st, &members, misfits.len(), w.needs_vip(&st.plan)).await?;
    let secrets = secrets_of(tx, st).await?;
    w.ensure_members(tx, st, &secrets, &new, (Step::Plan, Step::Moving)).await?;
    let what = format!("moving {} to a host with room for the new plan", misfits.join(", "));
    operation_progress_in(tx, st.operation.id, 15, &what).await?;
    Ok(())
}

/// The lead leaves a member that moves, to one that stays (a drained switchover).
pub(crate) async fn lead(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let moving = moving(tx, st).await?;
    let leader = member_leader_in(tx, st.database_id).await?;
    let Some(_) = leader.filter(|l| moving.contains(l)) else {
        return enqueue_step(tx, st, Step::MoveDrop).await;
    };
    // The synchronous standby when it stays (Patroni hands the lead only to it in synchronous
    // mode), else the first live member that stays.
    let live: Vec<String> =
        w.live_members(tx, st).await?.into_iter().map(|m| m.name).filter(|n| !moving.contains(n)).collect();
    let sync = member_synchronous_in(tx, st.database_id).await?.filter(|s| live.contains(s));
    let candidate = sync
        .or_else(|| live.first().cloned())
        .ok_or_else(|| JobError::retry("no live member that stays can take the lead yet"))?;
    switch_leader(w, tx, st, &candidate, (Step::MoveLead, Step::MoveUndrain)).await
}

pub(crate) async fn undrain(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    lift_drain(w, tx, st, (Step::MoveUndrain, Step::MoveDrop)).await
}

/// Removes the members that moved, and their gateways where no member stays; places gateways
/// up to the plan's number on the members' hosts; every gateway then routes to what is left.
pub(crate) async fn drop_moved(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let moving = moving(tx, st).await?;
    let members = members_of_in(tx, st.database_id).await?;
    let (drop, keep): (Vec<MemberRow>, Vec<MemberRow>) = members.into_iter().partition(|m| moving.contains(&m.name));
    let removed = remove_members(tx, st, &drop, &keep).await?;
    place_gateways(tx, st).await?;
    w.assign_vip(tx, st).await?;
    for agent in removed {
        let task = AgentTask::RemoveDatabase { database_id: st.database_id, generation: st.generation };
        enqueue_agent_job(tx, agent, st, (Step::MoveDrop, Step::MoveOn), &task).await?;
    }
    w.ensure_gateways(tx, st, (Step::MoveDrop, Step::MoveOn)).await?;
    operation_progress_in(tx, st.operation.id, 35, "removing the members that moved").await?;
    Ok(())
}

/// Forgets `drop` (rows, ports) and the gateways on hosts where none of `keep` runs; returns the
/// agents that must remove what they ran of the database.
pub(crate) async fn remove_members(
    tx: &mut PgConnection,
    st: &OperationState,
    drop: &[MemberRow],
    keep: &[MemberRow],
) -> Result<Vec<AgentId>, JobError> {
    let kept_agents: Vec<AgentId> = keep.iter().map(|m| m.agent_id).collect();
    let gateways = gateways_of_in(tx, st.database_id).await?;
    let mut dropped_agents: Vec<AgentId> =
        drop.iter().map(|m| m.agent_id).filter(|a| !kept_agents.contains(a)).collect();
    dropped_agents.sort();
    dropped_agents.dedup();
    for m in drop {
        for port in [m.pg_port, m.patroni_port] {
            port_release_in(tx, &m.host, port).await?;
        }
        member_delete_in(tx, st.database_id, &m.name).await?;
    }
    for g in gateways.iter().filter(|g| !kept_agents.contains(&g.agent_id)) {
        gateway_delete_in(tx, st.database_id, &g.name).await?;
        let still_used = gateways
            .iter()
            .any(|o| o.name != g.name && o.host == g.host && o.port == g.port && kept_agents.contains(&o.agent_id));
        if !still_used {
            port_release_in(tx, &g.host, g.port).await?;
        }
    }
    Ok(dropped_agents)
}
