//! Plan changes. Same number of members: every member gets the new sizing. More members
//! (Starter → Business): new members on other agents join as replicas (Patroni clones them),
//! then every gateway routes to all members. Fewer (Business → Starter): the leader moves to
//! the member that stays (a drained switchover), the others are removed, then the gateways
//! route to what is left. The endpoint (gateway address and port) never changes.
//!
//! A new memory size needs a PostgreSQL restart: the connection limit is set in Patroni's DCS
//! first (`config`), then members restart follower first, and the leader only after a drained
//! switchover has moved the lead to a resized follower (`drain` ─▶ `undrain` ─▶
//! `resize-leader`). A member whose spec changes in nothing that needs a restart (a new
//! certificate naming a new gateway host) is reloaded by its agent, never restarted.

use pgplane_core::agent::AgentTask;
use pgplane_store::jobs::job_enqueue_in;
use pgplane_store::workflow::*;
use pgplane_store::{agents, db_error};
use sqlx::PgConnection;

use crate::queue::JobError;
use crate::workflows::{agent_job, observed_leader, retry, Workflows};

impl Workflows {
    /// Gaining or losing a follower turns synchronous replication on or off (the operation's
    /// `synchronous_replication`): Patroni's non-strict mode first, which keeps writing while the
    /// new follower is cloned, then the plan itself (`plan`).
    pub(crate) async fn change_plan(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let Some(on) = st.operation.params["synchronous_replication"].as_bool() else {
            return self.change_plan_size(tx, st).await;
        };
        let patch = serde_json::json!({ "synchronous_mode": on });
        self.enqueue_patch_config(tx, st, patch, ("sync", "plan")).await?;
        let what = if on { "turning synchronous replication on" } else { "turning synchronous replication off" };
        operation_progress_in(tx, st.operation.id, 5, what).await.map_err(retry)
    }

    pub(crate) async fn change_plan_size(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let resized: bool = sqlx::query_scalar(
            "SELECT COALESCE(bool_or(memory_mb <> $2), false) FROM database_members WHERE database_id = $1",
        )
        .bind(st.database_id)
        .bind(st.plan.memory_mb)
        .fetch_one(&mut *tx)
        .await
        .map_err(retry)?;
        set_member_size(tx, st).await?;
        if !resized {
            return self.reshape(tx, st, false).await;
        }
        // Another size: shared_buffers and max_connections take a PostgreSQL restart. The
        // connection limit lives in Patroni's DCS (PostgreSQL wants it cluster-wide); set it
        // first, the restarts below apply it with the new memory.
        let patch =
            serde_json::json!({ "postgresql": { "parameters": { "max_connections": st.plan.max_connections } } });
        self.enqueue_patch_config(tx, st, patch, ("config", "resize")).await?;
        operation_progress_in(tx, st.operation.id, 10, "setting the new plan's connection limit").await.map_err(retry)
    }

    /// Gives the members the plan's size and number. `rolling`: the new size needs a restart
    /// of PostgreSQL; with a follower, the followers get it first, then the leader moves to one
    /// of them (a drained switchover) and the former leader gets it as a follower
    /// (`resize-leader`), so clients see a switchover, not an outage.
    pub(crate) async fn reshape(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        rolling: bool,
    ) -> Result<(), JobError> {
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        let wanted = st.plan.data_nodes as usize;
        let secrets =
            secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
        if members.len() == wanted {
            let leader = if rolling && wanted > 1 { observed_leader(tx, st).await? } else { None };
            if let Some(leader) = leader {
                let followers: Vec<MemberRow> = members.iter().filter(|m| m.name != leader).cloned().collect();
                self.ensure_members(tx, st, &secrets, &followers, ("members", "drain")).await?;
                return operation_progress_in(tx, st.operation.id, 20, "resizing the followers").await.map_err(retry);
            }
            self.ensure_members(tx, st, &secrets, &members, ("members", "finish")).await?;
            return operation_progress_in(tx, st.operation.id, 20, "applying the new plan's settings")
                .await
                .map_err(retry);
        }
        if members.len() > wanted {
            // The leader stays when known (no switchover then), else the first member, which
            // takes the lead before the others go.
            return self.switchover(tx, st).await;
        }
        // Grow: new members on agents that hold no member of this database yet.
        let taken: Vec<uuid::Uuid> = members.iter().map(|m| m.agent_id).collect();
        let live: Vec<_> = agents::agent_capacity_in(tx)
            .await
            .map_err(retry)?
            .into_iter()
            .filter(|a| !taken.contains(&a.agent.id))
            .collect();
        let what = format!("plan {}", st.plan.id);
        let vip = self.needs_vip(&st.plan);
        let candidates: Vec<_> = crate::workflows::able_agents(live, &st.version, wanted - members.len(), &what, vip)?
            .into_iter()
            .filter(|a| {
                a.free_memory_mb >= i64::from(st.plan.memory_mb) && a.free_disk_gb >= i64::from(st.plan.disk_gb)
            })
            .take(wanted - members.len())
            .collect();
        if candidates.len() < wanted - members.len() {
            return Err(retry(format!(
                "waiting for capacity: {} more agent(s) with {} MB and {} GB free are needed",
                wanted - members.len(),
                st.plan.memory_mb,
                st.plan.disk_gb
            )));
        }
        let mut all = members.clone();
        for a in &candidates {
            let name = (0..).map(|i| format!("m{i}")).find(|n| !all.iter().any(|m| &m.name == n)).expect("a free name");
            let range = (a.agent.port_min, a.agent.port_max);
            let db = st.database_id;
            let pg_port = agents::port_allocate_in(tx, &a.agent.host, range, db, "postgres").await.map_err(retry)?;
            let patroni_port =
                agents::port_allocate_in(tx, &a.agent.host, range, db, "patroni").await.map_err(retry)?;
            let m = MemberRow {
                database_id: db,
                name,
                agent_id: a.agent.id,
                host: a.agent.host.clone(),
                pg_port: i32::from(pg_port),
                patroni_port: i32::from(patroni_port),
            };
            member_insert_in(tx, &m, st.plan.memory_mb, st.plan.disk_gb).await.map_err(retry)?;
            all.push(m);
        }
        self.add_gateways(tx, st, &all).await?;
        self.assign_vip(tx, st).await?;
        if rolling {
            // The leader keeps running at its old size until a new member leads.
            let new = &all[members.len()..];
            self.ensure_members(tx, st, &secrets, new, ("members", "gateways-rolling")).await?;
        } else {
            self.ensure_members(tx, st, &secrets, &all, ("members", "gateways")).await?;
        }
        operation_progress_in(tx, st.operation.id, 20, "adding a follower").await.map_err(retry)
    }

    /// After a rolling resize's switchover: every member at the new size (the former leader,
    /// now a follower, restarts; the others are unchanged).
    pub(crate) async fn resize_rest(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        let secrets =
            secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
        self.ensure_members(tx, st, &secrets, &members, ("members", "finish")).await?;
        operation_progress_in(tx, st.operation.id, 80, "resizing the former leader").await.map_err(retry)
    }

    /// Up to the plan's number of gateways, on members' agents; on one address they share the
    /// existing gateway port.
    async fn add_gateways(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        members: &[MemberRow],
    ) -> Result<(), JobError> {
        let existing = gateways_of_in(tx, st.database_id).await.map_err(retry)?;
        let first = existing.first().ok_or_else(|| JobError::Fatal("database without a gateway".into()))?;
        for m in members {
            let count = gateways_of_in(tx, st.database_id).await.map_err(retry)?.len();
            if count >= st.plan.gateways as usize {
                break;
            }
            if existing.iter().any(|g| g.agent_id == m.agent_id) {
                continue;
            }
            let (min, max, public_host): (i32, i32, String) =
                sqlx::query_as("SELECT port_min, port_max, COALESCE(public_host, host) FROM agents WHERE id = $1")
                    .bind(m.agent_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(retry)?;
            let port = if m.host == first.host {
                first.port
            } else {
                i32::from(
                    agents::port_allocate_in(tx, &m.host, (min, max), st.database_id, "gateway")
                        .await
                        .map_err(retry)?,
                )
            };
            let name = format!("g{count}");
            let g = GatewayRow {
                database_id: st.database_id,
                name,
                agent_id: m.agent_id,
                host: m.host.clone(),
                port,
                public_host,
            };
            gateway_insert_in(tx, &g).await.map_err(retry)?;
        }
        Ok(())
    }

    /// The leader is the kept member: remove the others with their gateways, and resize it.
    pub(crate) async fn shrink(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        let kept = kept_member(tx, st, &members).await?;
        let (keep, drop): (Vec<MemberRow>, Vec<MemberRow>) = members.iter().cloned().partition(|m| m.name == kept);
        let (keep, drop) = (&keep[..], &drop[..]);
        let kept_agents: Vec<uuid::Uuid> = keep.iter().map(|m| m.agent_id).collect();
        let gateways = gateways_of_in(tx, st.database_id).await.map_err(retry)?;
        let mut dropped_agents: Vec<uuid::Uuid> = drop.iter().map(|m| m.agent_id).collect();
        dropped_agents.dedup();
        for m in drop {
            for port in [m.pg_port, m.patroni_port] {
                release_port(tx, &m.host, port).await?;
            }
            sqlx::query("DELETE FROM database_members WHERE database_id = $1 AND name = $2")
                .bind(st.database_id)
                .bind(&m.name)
                .execute(&mut *tx)
                .await
                .map_err(retry)?;
        }
        for g in gateways.iter().filter(|g| !kept_agents.contains(&g.agent_id)) {
            sqlx::query("DELETE FROM database_gateways WHERE database_id = $1 AND name = $2")
                .bind(st.database_id)
                .bind(&g.name)
                .execute(&mut *tx)
                .await
                .map_err(retry)?;
            let still_used = gateways
                .iter()
                .any(|o| o.name != g.name && o.host == g.host && o.port == g.port && kept_agents.contains(&o.agent_id));
            if !still_used {
                release_port(tx, &g.host, g.port).await?;
            }
        }
        for agent in dropped_agents {
            let task = AgentTask::RemoveDatabase { database_id: st.database_id, generation: st.generation };
            job_enqueue_in(tx, &agent_job(agent, st, "shrink", "gateways", &task)?).await.map_err(retry)?;
        }
        self.assign_vip(tx, st).await?;
        let secrets =
            secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
        self.ensure_members(tx, st, &secrets, keep, ("shrink", "gateways")).await?;
        operation_progress_in(tx, st.operation.id, 50, "removing the follower").await.map_err(retry)
    }
}

/// The member that stays when Business becomes Starter: the leader the operation's switchover
/// chose; before it, the leader as last observed (then no switchover is needed), else the first.
pub(crate) async fn kept_member(
    tx: &mut PgConnection,
    st: &OperationState,
    members: &[MemberRow],
) -> Result<String, JobError> {
    let switched: Option<String> = sqlx::query_scalar(
        "SELECT result->>'to' FROM jobs WHERE operation_id = $1 AND kind = 'switchover' AND status = 'done' LIMIT 1",
    )
    .bind(st.operation.id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(retry)?
    .flatten();
    let leader = match switched {
        Some(to) => Some(to),
        None => observed_leader(tx, st).await?,
    };
    Ok(match leader {
        Some(l) if members.iter().any(|m| m.name == l) => l,
        _ => members.first().map(|m| m.name.clone()).ok_or_else(|| JobError::Fatal("no member".into()))?,
    })
}

/// Members are accounted at the new plan's size from now on.
async fn set_member_size(tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    sqlx::query("UPDATE database_members SET memory_mb = $2, disk_gb = $3 WHERE database_id = $1")
        .bind(st.database_id)
        .bind(st.plan.memory_mb)
        .bind(st.plan.disk_gb)
        .execute(&mut *tx)
        .await
        .map_err(db_error)
        .map_err(retry)?;
    Ok(())
}

async fn release_port(tx: &mut PgConnection, host: &str, port: i32) -> Result<(), JobError> {
    sqlx::query("DELETE FROM port_allocations WHERE host = $1 AND port = $2")
        .bind(host)
        .bind(port)
        .execute(&mut *tx)
        .await
        .map_err(retry)?;
    Ok(())
}
