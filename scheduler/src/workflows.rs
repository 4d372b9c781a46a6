//! Operation workflows as explicit state machines. The API enqueues an `operation` job with
//! no step; each step runs in one transaction with its job's completion, fans work out to
//! agents as jobs on their queues, and the agent API starts the next step once all of a
//! step's agent jobs are done.
//!
//! ```text
//! create:      start ─place, secrets, etcd user─▶ members ─▶ gateways ─▶ finish (available)
//! change_plan: start ─resize─▶ finish (same number of members, same memory: reloads)
//!              start ─add members─▶ gateways ─▶ finish (Starter → Business)
//!              start ─drained switchover to the kept member─▶ … undrain ─▶ shrink ─▶ finish
//!              (Business → Starter); a new memory size first sets max_connections (config ─▶
//!              resize) and restarts followers first: resize ─▶ drain ─▶ undrain ─▶
//!              resize-leader ─▶ finish (see plan_change.rs)
//! delete:      start ─▶ remove ─▶ finish (deleted; etcd user and keys, ports, capacity, secrets released)
//! restart:     start ─▶ restart-0 ─▶ … ─▶ restart-(n-1) ─▶ finish (one member at a time)
//! configure:   start ─PATCH /config─▶ configure ─▶ finish
//! switchover:  start ─drain the leader in every gateway, POST /switchover─▶ undrain
//!              ─lift the drain─▶ finish
//! update_settings: start ─EnsureMember (pg_hba, certificates: a reload)─▶ members
//!              ─▶ gateways (binds, allowlist) ─▶ finish; an allowlist alone starts at
//!              gateways; the backup hour alone finishes at once
//! ```

use pgplane_core::agent::{
    AgentTask, DatabaseSecrets, GatewayBackend, GatewaySpec, MemberSpec, PatroniApi, PgSizing, TlsBundle,
};
use pgplane_core::model::{OperationKind, Plan};
use pgplane_store::jobs::{job_complete_in, job_enqueue_in, Claimed, NewJob};
use pgplane_store::vips::vip_of_in;
use pgplane_store::workflow::*;
use pgplane_store::{agents, Store};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::json;
use sqlx::PgConnection;

use crate::config::SchedulerConfig;
use crate::queue::{Done, Handler, JobError};
use crate::tls;

/// How an agent reaches member `m`'s Patroni REST API.
fn patroni_api(m: &MemberRow, secrets: StoredSecrets) -> PatroniApi {
    PatroniApi {
        host: m.host.clone(),
        patroni_port: m.patroni_port as u16,
        ca_pem: secrets.ca_cert_pem,
        restapi_password: secrets.secrets.restapi_password,
    }
}

/// The member Patroni last reported as the leader, if any.
pub(crate) async fn observed_leader(tx: &mut PgConnection, st: &OperationState) -> Result<Option<String>, JobError> {
    sqlx::query_scalar("SELECT name FROM database_members WHERE database_id = $1 AND role = 'leader' LIMIT 1")
        .bind(st.database_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(retry)
}

/// How long a switchover's drain may hold at most; it is lifted as soon as the switchover is
/// done, this bounds a switchover that never finishes.
const DRAIN_SECS: u32 = 20;

/// Runs `operation` jobs.
pub struct Workflows {
    pub store: Store,
    pub config: SchedulerConfig,
    /// etcd as root, when it has auth (see `SchedulerConfig::etcd`).
    pub etcd: Option<pgplane_etcd::Client>,
}

pub(crate) fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::Retryable(e.to_string())
}

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

/// An agent job of a step; `next` is the operation step that follows once all are done.
pub(crate) fn agent_job(
    agent: uuid::Uuid,
    st: &OperationState,
    step: &str,
    next: &str,
    task: &AgentTask,
) -> Result<NewJob, JobError> {
    let kind = match task {
        AgentTask::EnsureMember { .. } => "ensure_member",
        AgentTask::EnsureGateway { .. } => "ensure_gateway",
        AgentTask::RemoveDatabase { .. } => "remove_database",
        AgentTask::RestartMember { .. } => "restart_member",
        AgentTask::ReinitMember { .. } => "reinit_member",
        AgentTask::PatchConfig { .. } => "patch_config",
        AgentTask::Switchover { .. } => "switchover",
        AgentTask::DrainMember { .. } => "drain_member",
    };
    let mut job = NewJob::new(
        format!("agent:{agent}"),
        kind,
        json!({ "step": step, "next": next, "task": serde_json::to_value(task).map_err(retry)? }),
    );
    job.database_id = Some(st.database_id);
    job.operation_id = Some(st.operation.id);
    job.generation = Some(st.generation);
    job.max_attempts = 5;
    Ok(job)
}

/// The next step of an operation, as a scheduler job.
pub fn step_job(st_db: pgplane_core::ids::DatabaseId, op: pgplane_core::ids::OperationId, step: &str) -> NewJob {
    let mut job = NewJob::new(
        pgplane_store::databases::SCHEDULER_QUEUE,
        pgplane_store::databases::OPERATION_JOB,
        json!({ "step": step }),
    );
    job.database_id = Some(st_db);
    job.operation_id = Some(op);
    job
}

pub(crate) fn password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
}

impl Handler for Workflows {
    async fn run(&self, job: Claimed) -> Result<Done, JobError> {
        let op = job.operation_id;
        match self.run_step(job).await {
            Err(JobError::Refused { tenant, operator }) => {
                // The step's transaction is gone: end the operation on a connection of its own.
                tracing::error!(operation = ?op, %operator, "operation refused: {tenant}");
                if let Some(op) = op {
                    let mut conn = self.store.pool().acquire().await.map_err(retry)?;
                    operation_finish_in(&mut conn, op, Some(&tenant)).await.map_err(retry)?;
                }
                Err(JobError::Refused { tenant, operator })
            }
            other => other,
        }
    }
}

/// Agents able to run a member of PostgreSQL `version` and a gateway (one that carries a
/// virtual IP with keepalived when `vip`), or why the operation must be refused: at least
/// `needed` agents are live but fewer than `needed` are able (no host can do it, and waiting
/// will not change that until an operator acts). Fewer live agents than `needed`: waiting for
/// agents to register, as for capacity.
pub(crate) fn able_agents(
    live: Vec<agents::AgentCapacity>,
    version: &str,
    needed: usize,
    what: &str,
    vip: bool,
) -> Result<Vec<agents::AgentCapacity>, JobError> {
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

impl Workflows {
    async fn run_step(&self, job: Claimed) -> Result<Done, JobError> {
        let op = job.operation_id.ok_or_else(|| JobError::Fatal("operation job without an operation".into()))?;
        let step = job.payload["step"].as_str().unwrap_or("start").to_string();
        let mut tx = self.store.pool().begin().await.map_err(retry)?;
        let st = operation_lock_in(&mut tx, &self.store, op).await.map_err(retry)?;
        if !st.operation.status.is_finished() {
            match (st.operation.kind, step.as_str()) {
                (OperationKind::Create, "start") => self.place(&mut tx, &st).await?,
                (OperationKind::Create, "gateways") => self.gateways(&mut tx, &st).await?,
                (OperationKind::ChangePlan, "start") => self.change_plan(&mut tx, &st).await?,
                (OperationKind::ChangePlan, "plan") => self.change_plan_size(&mut tx, &st).await?,
                (OperationKind::ChangePlan, "resize") => self.reshape(&mut tx, &st, true).await?,
                (OperationKind::ChangePlan, "shrink") => self.shrink(&mut tx, &st).await?,
                (OperationKind::ChangePlan, "gateways") => self.gateways(&mut tx, &st).await?,
                (OperationKind::ChangePlan, "gateways-rolling") => self.gateways_then(&mut tx, &st, "drain").await?,
                (OperationKind::ChangePlan, "drain") => self.switchover(&mut tx, &st).await?,
                (OperationKind::ChangePlan, "resize-leader") => self.resize_rest(&mut tx, &st).await?,
                (OperationKind::Configure, "start") => self.configure(&mut tx, &st).await?,
                (OperationKind::UpdateSettings, "start") => self.update_settings(&mut tx, &st).await?,
                (OperationKind::UpdateSettings, "gateways") => self.gateways(&mut tx, &st).await?,
                (OperationKind::Switchover, "start") => self.switchover(&mut tx, &st).await?,
                (OperationKind::Switchover | OperationKind::ChangePlan, "undrain") => {
                    self.undrain(&mut tx, &st).await?
                }
                (
                    OperationKind::Create
                    | OperationKind::ChangePlan
                    | OperationKind::Configure
                    | OperationKind::Switchover
                    | OperationKind::UpdateSettings,
                    "finish",
                ) => {
                    if st.operation.kind == OperationKind::Switchover {
                        self.record_switchover(&mut tx, &st).await?;
                    }
                    let gw = gateways_of_in(&mut tx, st.database_id).await.map_err(retry)?;
                    let first = gw.first().ok_or_else(|| JobError::Fatal("database without a gateway".into()))?;
                    // The database's VIP when it has one (gateways on several hosts), else the
                    // first gateway's address (shared by the gateways on one host).
                    let (host, port) = match vip_of_in(&mut tx, st.database_id).await.map_err(retry)? {
                        Some(vip) => (vip.address, vip.port),
                        None => (first.host.clone(), first.port),
                    };
                    database_available_in(&mut tx, st.database_id, &host, port).await.map_err(retry)?;
                    operation_finish_in(&mut tx, op, None).await.map_err(retry)?;
                }
                (OperationKind::Delete, "start") => self.remove(&mut tx, &st).await?,
                (OperationKind::Restart, "start") => self.restart(&mut tx, &st, 0).await?,
                (OperationKind::Restart, s) if s.starts_with("restart-") => {
                    let i = s["restart-".len()..].parse().map_err(|_| JobError::Fatal(format!("bad step {s}")))?;
                    self.restart(&mut tx, &st, i).await?
                }
                (OperationKind::Restart, "finish") => operation_finish_in(&mut tx, op, None).await.map_err(retry)?,
                (OperationKind::Delete, "finish") => {
                    self.etcd_forget(st.database_id).await?;
                    database_deleted_in(&mut tx, st.database_id).await.map_err(retry)?;
                    operation_finish_in(&mut tx, op, None).await.map_err(retry)?;
                }
                (kind, step) => return Err(JobError::Fatal(format!("no step {step:?} in the {kind} workflow"))),
            }
        }
        if !job_complete_in(&mut tx, job.id, job.lease_id, &json!({ "step": step })).await.map_err(retry)? {
            return Err(retry("lease lost before the step committed"));
        }
        tx.commit().await.map_err(retry)?;
        Ok(Done::Committed)
    }
}

impl Workflows {
    /// Picks agents, ports and credentials, then asks each member's agent to run it.
    async fn place(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let plan = &st.plan;
        let live = agents::agent_capacity_in(tx).await.map_err(retry)?;
        let what = format!("a {} database", plan.id);
        let candidates: Vec<_> = able_agents(live, &st.version, plan.data_nodes as usize, &what, self.needs_vip(plan))?
            .into_iter()
            .filter(|a| a.free_memory_mb >= i64::from(plan.memory_mb) && a.free_disk_gb >= i64::from(plan.disk_gb))
            .take(plan.data_nodes as usize)
            .collect();
        if candidates.len() < plan.data_nodes as usize {
            return Err(retry(format!(
                "waiting for capacity: plan {} needs {} agent(s) with {} MB and {} GB free; {} found",
                plan.id,
                plan.data_nodes,
                plan.memory_mb,
                plan.disk_gb,
                candidates.len()
            )));
        }
        let db = st.database_id;
        let mut members = Vec::new();
        for (i, a) in candidates.iter().enumerate() {
            let range = (a.agent.port_min, a.agent.port_max);
            let pg_port = agents::port_allocate_in(tx, &a.agent.host, range, db, "postgres").await.map_err(retry)?;
            let patroni_port =
                agents::port_allocate_in(tx, &a.agent.host, range, db, "patroni").await.map_err(retry)?;
            let m = MemberRow {
                database_id: db,
                name: format!("m{i}"),
                agent_id: a.agent.id,
                host: a.agent.host.clone(),
                pg_port: i32::from(pg_port),
                patroni_port: i32::from(patroni_port),
            };
            member_insert_in(tx, &m, plan.memory_mb, plan.disk_gb).await.map_err(retry)?;
            members.push(m);
        }
        // Gateways go on the members' agents; on one address they share the port (SO_REUSEPORT).
        let mut gateway_port: Vec<(String, i32)> = Vec::new();
        for i in 0..plan.gateways as usize {
            let a = &candidates[i % candidates.len()].agent;
            let port = match gateway_port.iter().find(|(h, _)| *h == a.host) {
                Some((_, p)) => *p,
                None => {
                    let range = (a.port_min, a.port_max);
                    let p =
                        i32::from(agents::port_allocate_in(tx, &a.host, range, db, "gateway").await.map_err(retry)?);
                    gateway_port.push((a.host.clone(), p));
                    p
                }
            };
            gateway_insert_in(
                tx,
                &GatewayRow {
                    database_id: db,
                    name: format!("g{i}"),
                    agent_id: a.id,
                    host: a.host.clone(),
                    port,
                    public_host: a.public_host.clone(),
                },
            )
            .await
            .map_err(retry)?;
        }
        self.assign_vip(tx, st).await?;
        let name: String = sqlx::query_scalar("SELECT name FROM databases WHERE id = $1")
            .bind(db)
            .fetch_one(&mut *tx)
            .await
            .map_err(retry)?;
        let (ca_cert_pem, ca_key_pem) = tls::database_ca(db).map_err(retry)?;
        let secrets = StoredSecrets {
            secrets: DatabaseSecrets {
                superuser_password: password(),
                replication_password: password(),
                restapi_password: password(),
                app_user: name.clone(),
                app_password: password(),
                app_database: name,
            },
            ca_cert_pem,
            ca_key_pem,
            etcd_password: Some(password()),
        };
        secrets_insert_in(tx, db, &secrets).await.map_err(retry)?;
        self.ensure_members(tx, st, &secrets, &members, ("members", "gateways")).await?;
        operation_progress_in(tx, st.operation.id, 10, "starting PostgreSQL members").await.map_err(retry)
    }

    pub(crate) async fn ensure_members(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        secrets: &StoredSecrets,
        members: &[MemberRow],
        (step, next): (&str, &str),
    ) -> Result<(), JobError> {
        let gateways = gateways_of_in(tx, st.database_id).await.map_err(retry)?;
        let vip = vip_of_in(tx, st.database_id).await.map_err(retry)?;
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
                tls::member_certificate(&secrets.ca_cert_pem, &secrets.ca_key_pem, &names).map_err(retry)?;
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
            };
            job_enqueue_in(tx, &agent_job(m.agent_id, st, step, next, &AgentTask::EnsureMember { spec })?)
                .await
                .map_err(retry)?;
        }
        Ok(())
    }

    pub(crate) async fn gateways(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        self.gateways_then(tx, st, "finish").await
    }

    /// Every gateway routes to every member; then the operation goes on with `next`.
    pub(crate) async fn gateways_then(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        next: &str,
    ) -> Result<(), JobError> {
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        let secrets =
            secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
        let backends: Vec<GatewayBackend> = members
            .iter()
            .map(|m| GatewayBackend {
                member: m.name.clone(),
                host: m.host.clone(),
                pg_port: m.pg_port as u16,
                patroni_port: m.patroni_port as u16,
            })
            .collect();
        let gateways = gateways_of_in(tx, st.database_id).await.map_err(retry)?;
        let vip = vip_of_in(tx, st.database_id).await.map_err(retry)?;
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
            job_enqueue_in(tx, &agent_job(g.agent_id, st, "gateways", next, &AgentTask::EnsureGateway { spec })?)
                .await
                .map_err(retry)?;
        }
        operation_progress_in(tx, st.operation.id, 70, "starting gateways").await.map_err(retry)
    }

    /// Restarts member `i`; the step after it restarts the next one, so only one member is
    /// down at a time.
    async fn restart(&self, tx: &mut PgConnection, st: &OperationState, i: usize) -> Result<(), JobError> {
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        let Some(m) = members.get(i) else {
            return operation_finish_in(tx, st.operation.id, None).await.map_err(retry);
        };
        let step = format!("restart-{i}");
        let next = if i + 1 < members.len() { format!("restart-{}", i + 1) } else { "finish".to_string() };
        let secrets =
            secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
        let task = AgentTask::RestartMember {
            database_id: st.database_id,
            generation: st.generation,
            member: m.name.clone(),
            api: patroni_api(m, secrets),
        };
        job_enqueue_in(tx, &agent_job(m.agent_id, st, &step, &next, &task)?).await.map_err(retry)?;
        let progress = 10 + (80 * i / members.len().max(1)) as i32;
        operation_progress_in(tx, st.operation.id, progress, &format!("restarting member {}", m.name))
            .await
            .map_err(retry)
    }

    /// The member whose agent speaks to Patroni for the whole cluster, with the REST secrets.
    pub(crate) async fn control_member(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
    ) -> Result<(MemberRow, PatroniApi), JobError> {
        let m = members_of_in(tx, st.database_id).await.map_err(retry)?.into_iter().next();
        let m = m.ok_or_else(|| JobError::Fatal("the database has no member".into()))?;
        let secrets =
            secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
        let api = patroni_api(&m, secrets);
        Ok((m, api))
    }

    /// Applies the desired parameters (plus the plan's max_connections) and replication mode.
    async fn configure(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let config = self.store.database_configuration(st.database_id).await.map_err(retry)?;
        let mut parameters: serde_json::Map<String, serde_json::Value> =
            config.parameters.into_iter().map(|(k, v)| (k, json!(v))).collect();
        for removed in st.operation.params["removed"].as_array().into_iter().flatten() {
            if let Some(name) = removed.as_str() {
                parameters.entry(name.to_string()).or_insert(serde_json::Value::Null);
            }
        }
        parameters.insert("max_connections".into(), json!(st.plan.max_connections));
        let patch = json!({
            "postgresql": { "parameters": parameters },
            "synchronous_mode": config.synchronous_replication,
        });
        self.enqueue_patch_config(tx, st, patch, ("configure", "finish")).await?;
        operation_progress_in(tx, st.operation.id, 30, "applying the configuration through Patroni")
            .await
            .map_err(retry)
    }

    /// Applies changed settings (the operation's `changed`): force TLS and exposure re-render
    /// every member (pg_hba, certificates naming the public addresses; Patroni reloads, no
    /// restart), then every gateway (its binds); an allowlist change only the gateways (they
    /// take it without dropping a connection); the backup hour needs nothing running.
    async fn update_settings(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let changed: Vec<&str> =
            st.operation.params["changed"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).collect();
        if changed.iter().any(|c| matches!(*c, "force_tls" | "internet_exposure")) {
            let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
            let secrets =
                secrets_get_in(tx, st.database_id).await.map_err(retry)?.ok_or_else(|| retry("secrets missing"))?;
            self.ensure_members(tx, st, &secrets, &members, ("members", "gateways")).await?;
            operation_progress_in(tx, st.operation.id, 20, "reloading the members with the new settings")
                .await
                .map_err(retry)
        } else if changed.contains(&"allowed_cidrs") {
            self.gateways(tx, st).await
        } else {
            operation_finish_in(tx, st.operation.id, None).await.map_err(retry)
        }
    }

    /// Asks a member's agent to apply `patch` to the cluster-wide Patroni configuration.
    pub(crate) async fn enqueue_patch_config(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        patch: serde_json::Value,
        (step, next): (&str, &str),
    ) -> Result<(), JobError> {
        let (m, api) = self.control_member(tx, st).await?;
        let task = AgentTask::PatchConfig { database_id: st.database_id, generation: st.generation, api, patch };
        job_enqueue_in(tx, &agent_job(m.agent_id, st, step, next, &task)?).await.map_err(retry)?;
        Ok(())
    }

    /// A switchover with the leader drained in every gateway around it: `start` ─drain jobs and
    /// POST /switchover─▶ `undrain` ─▶ what follows (see `after_switchover`). Drained, the leader
    /// takes no new client connection: they wait in the gateways for the new leader instead of
    /// reaching a PostgreSQL that is about to stop. The drain goes out with the switchover, not
    /// before it: Patroni checks the candidate for ~0.3 s before it demotes the leader, time
    /// enough for the gateways' drain jobs (milliseconds) and time clients would otherwise spend
    /// waiting. The agent that asks Patroni drains its own gateways first (it runs one job at a
    /// time). Without a known leader (never observed), or when the candidate already leads,
    /// there is nothing to drain.
    pub(crate) async fn switchover(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let candidate = self.switchover_candidate(tx, st).await?;
        let (m, _) = self.control_member(tx, st).await?;
        let drain = match observed_leader(tx, st).await? {
            Some(leader) if candidate.as_deref() != Some(leader.as_str()) => Some(leader),
            _ => None,
        };
        if let Some(leader) = &drain {
            self.drain_jobs(tx, st, leader, true, ("switch", "undrain"), Some(m.agent_id)).await?;
        }
        self.enqueue_switchover(tx, st, candidate, drain, ("switch", "undrain")).await?;
        operation_progress_in(tx, st.operation.id, 40, "switching the leader over, its connections drained")
            .await
            .map_err(retry)
    }

    /// Lifts the drain of the switchover's first step, if it had one.
    async fn undrain(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let after = self.after_switchover(tx, st).await?;
        let drained: Option<String> = sqlx::query_scalar(
            "SELECT payload->'task'->>'drain_leader' FROM jobs \
             WHERE operation_id = $1 AND kind = 'switchover' AND payload->'task'->>'drain_leader' IS NOT NULL LIMIT 1",
        )
        .bind(st.operation.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(retry)?
        .flatten();
        let jobs = match drained {
            Some(member) => self.drain_jobs(tx, st, &member, false, ("undrain", after), None).await?,
            None => 0,
        };
        if jobs == 0 {
            job_enqueue_in(tx, &step_job(st.database_id, st.operation.id, after)).await.map_err(retry)?;
        }
        operation_progress_in(tx, st.operation.id, 60, "the gateways route to the new leader").await.map_err(retry)
    }

    /// Whom a switchover hands the leadership to: the one asked for; the member that stays when
    /// a plan change removes members (see `kept_member`); else Patroni's healthiest replica.
    async fn switchover_candidate(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
    ) -> Result<Option<String>, JobError> {
        if st.operation.kind == OperationKind::Switchover {
            return Ok(st.operation.params["candidate"].as_str().map(str::to_string));
        }
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        if members.len() <= st.plan.data_nodes as usize {
            return Ok(None);
        }
        crate::plan_change::kept_member(tx, st, &members).await.map(Some)
    }

    /// The step after a switchover: done for a switchover; for a plan change, removing the
    /// members that go (Business → Starter) or giving the former leader, now a replica, the
    /// new sizing (a rolling resize).
    async fn after_switchover(&self, tx: &mut PgConnection, st: &OperationState) -> Result<&'static str, JobError> {
        if st.operation.kind == OperationKind::Switchover {
            return Ok("finish");
        }
        let members = members_of_in(tx, st.database_id).await.map_err(retry)?;
        Ok(if members.len() > st.plan.data_nodes as usize { "shrink" } else { "resize-leader" })
    }

    /// One `DrainMember` job per agent that runs a gateway of the database (but `except`);
    /// returns how many.
    async fn drain_jobs(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        member: &str,
        drain: bool,
        (step, next): (&str, &str),
        except: Option<uuid::Uuid>,
    ) -> Result<usize, JobError> {
        let mut agents: Vec<uuid::Uuid> =
            gateways_of_in(tx, st.database_id).await.map_err(retry)?.iter().map(|g| g.agent_id).collect();
        agents.retain(|a| Some(*a) != except);
        agents.sort();
        agents.dedup();
        for agent in &agents {
            let task = AgentTask::DrainMember {
                database_id: st.database_id,
                generation: st.generation,
                member: member.to_string(),
                drain,
                for_secs: DRAIN_SECS,
            };
            job_enqueue_in(tx, &agent_job(*agent, st, step, next, &task)?).await.map_err(retry)?;
        }
        Ok(agents.len())
    }

    /// Asks a member's agent to move the leader to `candidate` (or the healthiest replica).
    pub(crate) async fn enqueue_switchover(
        &self,
        tx: &mut PgConnection,
        st: &OperationState,
        candidate: Option<String>,
        drain_leader: Option<String>,
        (step, next): (&str, &str),
    ) -> Result<(), JobError> {
        let (m, api) = self.control_member(tx, st).await?;
        let task = AgentTask::Switchover {
            database_id: st.database_id,
            generation: st.generation,
            api,
            candidate,
            drain_leader,
        };
        job_enqueue_in(tx, &agent_job(m.agent_id, st, step, next, &task)?).await.map_err(retry)?;
        Ok(())
    }

    /// Roles and the event, from the agent's answer `{from, to}`, unless the reading of etcd
    /// already recorded this change (it reads under the database's row lock, as this does: the
    /// change is recorded once, whichever sees it first).
    async fn record_switchover(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let result: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT result FROM jobs WHERE operation_id = $1 AND kind = 'switchover' AND status = 'done' LIMIT 1",
        )
        .bind(st.operation.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(retry)?
        .flatten();
        let Some(result) = result else { return Ok(()) };
        let (Some(from), Some(to)) = (result["from"].as_str(), result["to"].as_str()) else { return Ok(()) };
        if from == to {
            return Ok(());
        }
        let known = pgplane_store::truth::truth_leader_in(tx, st.database_id).await.map_err(retry)?;
        if known.as_deref() == Some(to) {
            return Ok(());
        }
        pgplane_store::truth::truth_leader_set_in(tx, st.database_id, to).await.map_err(retry)?;
        pgplane_store::config::event_insert_in(tx, st.database_id, "switchover", json!({ "from": from, "to": to }))
            .await
            .map_err(retry)?;
        Ok(())
    }

    /// Asks every agent that holds a part of the database to remove it.
    async fn remove(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let mut agents: Vec<uuid::Uuid> =
            members_of_in(tx, st.database_id).await.map_err(retry)?.iter().map(|m| m.agent_id).collect();
        agents.extend(gateways_of_in(tx, st.database_id).await.map_err(retry)?.iter().map(|g| g.agent_id));
        agents.sort();
        agents.dedup();
        if agents.is_empty() {
            // Never placed: nothing runs anywhere.
            job_enqueue_in(tx, &step_job(st.database_id, st.operation.id, "finish")).await.map_err(retry)?;
        }
        for agent in agents {
            let task = AgentTask::RemoveDatabase { database_id: st.database_id, generation: st.generation };
            job_enqueue_in(tx, &agent_job(agent, st, "remove", "finish", &task)?).await.map_err(retry)?;
        }
        operation_progress_in(tx, st.operation.id, 20, "removing processes and data").await.map_err(retry)
    }
}
