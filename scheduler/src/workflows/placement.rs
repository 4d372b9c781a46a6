//! Placement, one function for members and one for gateways, shared by `create` and
//! `change_plan`: members go on distinct live agents able to run them with the plan's memory and
//! disk free (most free memory first), each with its own PostgreSQL and Patroni ports; gateways
//! go on the members' agents, sharing one port per host address (SO_REUSEPORT).

use pgplane_core::agent::AgentId;
use pgplane_store::agents::{self, agent_in, AgentCapacity};
use pgplane_store::workflow::*;
use sqlx::PgConnection;

use crate::queue::JobError;

/// Agents able to run a member of PostgreSQL `version` and a gateway (one that carries a
/// virtual IP with keepalived when `vip`), or why the operation must be refused: at least `needed` agents are live but fewer than `needed` are able (no host can
/// do it, and waiting will not change that until an operator acts). Fewer live agents than
/// `needed`: waiting for agents to register, as for capacity.
pub(crate) fn able_agents(
    live: Vec<AgentCapacity>,
    version: &str,
    needed: usize,
    what: &str,
    vip: bool,
) -> Result<Vec<AgentCapacity>, JobError> {
    let total = live.len();
    let mut reasons = Vec::new();
    let cannot = |a: &agents::Agent| {
        a.cannot_run_member(version)
            .or_else(|| a.cannot_run_gateway())
            .or_else(|| vip.then(|| a.cannot_carry_vip()).flatten())
    };
    let able: Vec<_> = live
        .into_iter()
        .filter(|a| match cannot(&a.agent) {
            Some(why) => {
                reasons.push(format!("agent {} ({}): {why}", a.agent.name, a.agent.id));
                false
            }
            None => true,
        })
        .collect();
    if able.len() < needed && total >= needed {
        return Err(JobError::Refused {
            tenant: format!(
                "no database host of this platform can run PostgreSQL {version} for {what} right now: nothing was \
                 changed; choose another version, or contact the platform's support"
            ),
            operator: format!(
                "{needed} agent(s) able to run PostgreSQL {version} with Patroni and HAProxy{} needed for {what}, {} \
                 of {total} live are: {}",
                if vip { " and keepalived" } else { "" },
                able.len(),
                reasons.join("; ")
            ),
        });
    }
    Ok(able)
}

/// Places `count` new members of the database at the plan's size on live agents that hold none
/// of its members yet (`existing`) and, when its gateways carry a VIP (`vip`), can run
/// keepalived, and records them (with their ports). Not enough room: a
/// retryable "waiting for capacity" (the step runs again after a backoff).
pub(crate) async fn place_members(
    tx: &mut PgConnection,
    st: &OperationState,
    existing: &[MemberRow],
    count: usize,
    vip: bool,
) -> Result<Vec<MemberRow>, JobError> {
    let plan = &st.plan;
    let taken: Vec<AgentId> = existing.iter().map(|m| m.agent_id).collect();
    let live: Vec<_> =
        agents::agent_capacity_in(tx).await?.into_iter().filter(|a| !taken.contains(&a.agent.id)).collect();
    let what = format!("plan {}", plan.id);
    let candidates: Vec<_> = able_agents(live, &st.version, count, &what, vip)?
        .into_iter()
        .filter(|a| a.free_memory_mb >= i64::from(plan.memory_mb) && a.free_disk_gb >= i64::from(plan.disk_gb))
        .take(count)
        .collect();
    if candidates.len() < count {
        return Err(JobError::retry(format!(
            "{}: plan {} needs {count} more agent(s) with {} MB and {} GB free; {} found",
            super::WAITING_FOR_CAPACITY,
            plan.id,
            plan.memory_mb,
            plan.disk_gb,
            candidates.len()
        )));
    }
    let mut all: Vec<MemberRow> = existing.to_vec();
    let mut placed = Vec::new();
    for a in &candidates {
        let name = (0..).map(|i| format!("m{i}")).find(|n| !all.iter().any(|m| &m.name == n)).expect("a free name");
        let range = (a.agent.port_min, a.agent.port_max);
        let db = st.database_id;
        let pg_port = agents::port_allocate_in(tx, &a.agent.host, range, db, "postgres").await?;
        let patroni_port = agents::port_allocate_in(tx, &a.agent.host, range, db, "patroni").await?;
        let m = MemberRow {
            database_id: db,
            name,
            agent_id: a.agent.id,
            host: a.agent.host.clone(),
            pg_port: i32::from(pg_port),
            patroni_port: i32::from(patroni_port),
        };
        member_insert_in(tx, &m, plan.memory_mb, plan.disk_gb).await?;
        all.push(m.clone());
        placed.push(m);
    }
    Ok(placed)
}

/// Adds gateways up to the plan's number, on the members' agents (first those that run none
/// yet); on one host address they share a port (SO_REUSEPORT), so the endpoint stays the same.
pub(crate) async fn place_gateways(tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let members = members_of_in(tx, st.database_id).await?;
    if members.is_empty() {
        return Err(JobError::fatal("gateways of a database without a member"));
    }
    let mut gateways = gateways_of_in(tx, st.database_id).await?;
    while gateways.len() < st.plan.gateways as usize {
        let m = members
            .iter()
            .find(|m| !gateways.iter().any(|g| g.agent_id == m.agent_id))
            .unwrap_or(&members[gateways.len() % members.len()]);
        let agent = agent_in(tx, m.agent_id).await?;
        let port = match gateways.iter().find(|g| g.host == agent.host) {
            Some(g) => g.port,
            None => i32::from(
                agents::port_allocate_in(tx, &agent.host, (agent.port_min, agent.port_max), st.database_id, "gateway")
                    .await?,
            ),
        };
        let name =
            (0..).map(|i| format!("g{i}")).find(|n| !gateways.iter().any(|g| &g.name == n)).expect("a free name");
        let g = GatewayRow {
            database_id: st.database_id,
            name,
            agent_id: agent.id,
            host: agent.host.clone(),
            port,
            public_host: agent.public_host.clone(),
        };
        gateway_insert_in(tx, &g).await?;
        gateways.push(g);
    }
    Ok(())
}
