//! What several workflows do alike: agent jobs with their deadline and `{step, then}` tag,
//! member and gateway specs sent to agents, the live member a cluster-wide request goes
//! through, and making a database available at its endpoint.

use pgplane_core::agent::{
    AgentId, AgentTask, GatewayBackend, GatewaySpec, MemberSpec, PatroniApi, PgSizing, TlsBundle,
};
use pgplane_core::model::Plan;
use pgplane_store::engine::{agents_alive_in, member_leader_in};
use pgplane_store::jobs::{job_enqueue_in, NewJob};
use pgplane_store::timers::daily_backup_timer_sync_in;
use pgplane_store::vips::vip_of_in;
use pgplane_store::workflow::*;
use rand::distributions::{Alphanumeric, DistString};
use serde_json::json;
use sqlx::PgConnection;

use super::{WorkflowStep, Workflows};
use crate::queue::JobError;
use crate::tls;

/// PostgreSQL settings for a plan's memory and connections.
pub fn sizing(plan: &Plan) -> PgSizing {
    let mem = plan.memory_mb.max(128);
    PgSizing {
        max_connections: plan.max_connections,
        shared_buffers_mb: mem / 4,
        effective_cache_size_mb: mem * 3 / 4,
        work_mem_kb: ((mem * 1024 / 4) / plan.max_connections.max(1)).clamp(1024, 65536),
        maintenance_work_mem_mb: (mem / 16).clamp(16, 2048),
    }
}

pub(crate) fn password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
}

/// The kind an agent task's job is stored under (its `kind` on the wire).
fn task_kind(task: &AgentTask) -> &'static str {
    match task {
        AgentTask::EnsureMember { .. } => "ensure_member",
        AgentTask::EnsureGateway { .. } => "ensure_gateway",
        AgentTask::RemoveDatabase { .. } => "remove_database",
        AgentTask::RestartMember { .. } => "restart_member",
        AgentTask::ReinitMember { .. } => "reinit_member",
        AgentTask::PatchConfig { .. } => "patch_config",
        AgentTask::Switchover { .. } => "switchover",
        AgentTask::DrainMember { .. } => "drain_member",
        AgentTask::Backup { task } => task.job_kind(),
    }
}

/// An agent job issued by `step`; once every job of `step` is done, the operation continues with
/// `then`. It carries the database's generation (the agent refuses an older one than it applied)
/// and the task's deadline.
pub(crate) fn agent_job<S: WorkflowStep>(
    agent: AgentId,
    st: &OperationState,
    (step, then): (S, S),
    task: &AgentTask,
) -> Result<NewJob, JobError> {
    let mut job = NewJob::new(
        format!("agent:{agent}"),
        task_kind(task),
        json!({ "step": step, "then": then, "task": serde_json::to_value(task)? }),
    );
    job.database_id = Some(st.database_id);
    job.operation_id = Some(st.operation.id);
    job.generation = Some(st.generation);
    job.max_attempts = 5;
    job.deadline = Some(crate::engine::task_deadline(task));
    Ok(job)
}

/// Enqueues an agent job (see `agent_job`).
pub(crate) async fn enqueue_agent_job<S: WorkflowStep>(
    tx: &mut PgConnection,
    agent: AgentId,
    st: &OperationState,
    steps: (S, S),
    task: &AgentTask,
) -> Result<(), JobError> {
    job_enqueue_in(tx, &agent_job(agent, st, steps, task)?).await?;
    Ok(())
}

/// How an agent reaches member `m`'s Patroni REST API.
pub(crate) fn patroni_api(m: &MemberRow, secrets: &StoredSecrets) -> PatroniApi {
    PatroniApi {
        host: m.host.clone(),
        patroni_port: m.patroni_port as u16,
        ca_pem: secrets.ca_cert_pem.clone(),
        restapi_password: secrets.secrets.restapi_password.clone(),
    }
}

/// The database's secrets, which every placed database has.
pub(crate) async fn secrets_of(tx: &mut PgConnection, st: &OperationState) -> Result<StoredSecrets, JobError> {
    secrets_get_in(tx, st.database_id).await?.ok_or_else(|| JobError::fatal("the database's secrets are missing"))
}

impl Workflows {
    /// The database's members whose agents were heard from lately, in name order.
    pub(crate) async fn live_members(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
    ) -> Result<Vec<MemberRow>, JobError> {
        let members = members_of_in(tx, st.database_id).await?;
        let agents: Vec<AgentId> = members.iter().map(|m| m.agent_id).collect();
        let alive = agents_alive_in(tx, &agents, self.agent_lost_after().as_secs_f64()).await?;
        Ok(members.into_iter().filter(|m| alive.contains(&m.agent_id)).collect())
    }

    /// The member whose agent speaks to Patroni for the whole cluster: the leader when its agent
    /// is alive, else another live member (any member's Patroni forwards to the leader). None
    /// alive: the operation is refused, nothing changed.
    pub(crate) async fn control_member(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
    ) -> Result<(MemberRow, PatroniApi), JobError> {
        let live = self.live_members(tx, st).await?;
        let leader = member_leader_in(tx, st.database_id).await?;
        let m = live.iter().find(|m| Some(&m.name) == leader.as_ref()).or_else(|| live.first()).cloned().ok_or_else(
            || JobError::Refused {
                tenant: "none of the database's hosts answers the platform right now, so nothing was changed; try \
                         again later, or contact support"
                    .into(),
                operator: format!("no member of database {} has a live agent", st.database_id),
            },
        )?;
        let secrets = secrets_of(tx, st).await?;
        let api = patroni_api(&m, &secrets);
        Ok((m, api))
    }

    /// Asks a live member's agent to apply `patch` to the cluster-wide Patroni configuration.
    pub(crate) async fn patch_config<S: WorkflowStep>(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        patch: serde_json::Value,
        steps: (S, S),
    ) -> Result<(), JobError> {
        let (m, api) = self.control_member(tx, st).await?;
        let task = AgentTask::PatchConfig { database_id: st.database_id, generation: st.generation, api, patch };
        enqueue_agent_job(tx, m.agent_id, st, steps, &task).await
    }

    /// Asks each member's agent to run it with the database's current spec.
    pub(crate) async fn ensure_members<S: WorkflowStep>(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        secrets: &StoredSecrets,
        members: &[MemberRow],
        steps: (S, S),
    ) -> Result<(), JobError> {
        let gateways = gateways_of_in(tx, st.database_id).await?;
        let vip = vip_of_in(tx, st.database_id).await?;
        let etcd = self.etcd_access(tx, st.database_id, secrets).await?;
        for m in members {
            // Clients reach the member through the gateway (TLS passes through), so the
            // certificate names the gateways' hosts, private and public (`verify-full` from
            // the internet too) and the database's VIP, as well as the member's.
            let mut names: Vec<String> = vec![m.host.clone(), "localhost".into()];
            let vip_name = vip.iter().map(|v| &v.address);
            for name in gateways.iter().flat_map(|g| [&g.host, &g.public_host]).chain(vip_name) {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            let (cert_pem, key_pem) =
                tls::member_certificate(&secrets.ca_cert_pem, &secrets.ca_key_pem, &names).map_err(JobError::retry)?;
            let spec = MemberSpec {
                database_id: st.database_id,
                generation: st.generation,
                scope: st.database_id.to_string(),
                member: m.name.clone(),
                version: st.version.clone(),
                host: m.host.clone(),
                pg_port: m.pg_port as u16,
                patroni_port: m.patroni_port as u16,
                etcd: etcd.clone(),
                tls: TlsBundle { ca_pem: secrets.ca_cert_pem.clone(), cert_pem, key_pem },
                secrets: secrets.secrets.clone(),
                sizing: sizing(&st.plan),
                force_tls: st.force_tls,
                synchronous_mode: st.synchronous_replication,
                // Issue 12's workflows set it from the plan's `pitr` (pgplane_core::pitr::PitrSpec).
                pitr: None,
            };
            enqueue_agent_job(tx, m.agent_id, st, steps, &AgentTask::EnsureMember { spec }).await?;
        }
        Ok(())
    }

    /// Every gateway routes to every member.
    pub(crate) async fn ensure_gateways<S: WorkflowStep>(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        steps: (S, S),
    ) -> Result<(), JobError> {
        let members = members_of_in(tx, st.database_id).await?;
        let secrets = secrets_of(tx, st).await?;
        let backends: Vec<GatewayBackend> = members
            .iter()
            .map(|m| GatewayBackend {
                member: m.name.clone(),
                host: m.host.clone(),
                pg_port: m.pg_port as u16,
                patroni_port: m.patroni_port as u16,
            })
            .collect();
        let gateways = gateways_of_in(tx, st.database_id).await?;
        let vip = vip_of_in(tx, st.database_id).await?;
        for g in &gateways {
            let spec = GatewaySpec {
                database_id: st.database_id,
                generation: st.generation,
                name: g.name.clone(),
                listen_host: g.host.clone(),
                listen_port: g.port as u16,
                public_host: st.internet_exposure.then(|| g.public_host.clone()),
                allowed_cidrs: st.allowed_cidrs.clone(),
                backends: backends.clone(),
                ca_pem: secrets.ca_cert_pem.clone(),
                vip: vip.as_ref().and_then(|v| crate::vip::gateway_vip(v, &gateways, g)),
            };
            enqueue_agent_job(tx, g.agent_id, st, steps, &AgentTask::EnsureGateway { spec }).await?;
        }
        operation_progress_in(tx, st.operation.id, 70, "starting gateways").await?;
        Ok(())
    }

    /// The operation is done and the database available at its endpoint: its VIP when it has
    /// one (gateways on several hosts), else the first gateway's address (shared by the gateways
    /// on one host). Its daily backup timer is set from what it is now (plan, settings).
    pub(crate) async fn finish_available(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let gw = gateways_of_in(tx, st.database_id).await?;
        let first = gw.first().ok_or_else(|| JobError::fatal("database without a gateway"))?;
        let (host, port) = match vip_of_in(tx, st.database_id).await? {
            Some(vip) => (vip.address, vip.port),
            None => (first.host.clone(), first.port),
        };
        database_available_in(tx, st.database_id, &host, port).await?;
        // Created, on a new plan, with new settings: its daily backup follows what it is now.
        daily_backup_timer_sync_in(tx, st.database_id, chrono::Utc::now()).await?;
        operation_finish_in(tx, st.operation.id, None).await?;
        Ok(())
    }
}
