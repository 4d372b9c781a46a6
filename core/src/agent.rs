//! The agent protocol: what the scheduler asks of a node agent and what the agent reports.
//! Wire types only; the scheduler serves them over HTTPS, the agent drives real processes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{DatabaseId, JobId, LeaseId};

/// A node agent's id.
pub type AgentId = uuid::Uuid;

/// How one check of `pgplane doctor` (and of an agent at start) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Works; `detail` says the version found.
    Ok,
    /// Optional, or works with a drawback; `detail` says what to change.
    Warn,
    /// Required and broken; `detail` says what to install or change.
    Fail,
}

/// One check of a host: an external program, the state folder, a kernel setting, or a path
/// that broke before (Patroni's Python reaching etcd over https, HAProxy checking over TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// What was checked, e.g. `postgres 15`, `patroni → etcd over https`.
    pub name: String,
    pub status: CheckStatus,
    /// The version found when it works, else what to install or change, in one line.
    pub detail: String,
}

/// What an agent's host can do, from the checks it ran when it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// PostgreSQL major versions whose server binaries this host has, e.g. `["15"]`.
    pub postgres_versions: Vec<String>,
    /// Patroni runs here and its Python reaches an etcd over https.
    pub patroni: bool,
    /// HAProxy runs here and checks a TLS endpoint against a CA.
    pub haproxy: bool,
    /// The host can carry a database's virtual IP: keepalived runs here, as root (it adds the
    /// address), and gateways may bind an address the host does not have yet
    /// (`net.ipv4.ip_nonlocal_bind` is on, or the agent turns it on as root). Absent from
    /// agents older than this check: then false, and such an agent gets no gateway of a
    /// database whose gateways span hosts while the platform has a VIP pool.
    #[serde(default)]
    pub keepalived: bool,
    /// pgBackRest's version, when installed.
    pub pgbackrest: Option<String>,
    /// Every check, in the order it ran.
    pub checks: Vec<Check>,
}

impl Capabilities {
    /// The checks that failed or warned, one line each.
    pub fn problems(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.status != CheckStatus::Ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    /// Why this host cannot run a member of PostgreSQL `version`, if it cannot.
    pub fn cannot_run_member(&self, version: &str) -> Option<String> {
        if !self.postgres_versions.iter().any(|v| v == version) {
            return Some(format!("no PostgreSQL {version} server binaries on this host"));
        }
        if !self.patroni {
            return Some("Patroni cannot reach etcd over https from this host".into());
        }
        None
    }

    /// Why this host cannot run a gateway, if it cannot.
    pub fn cannot_run_gateway(&self) -> Option<String> {
        (!self.haproxy).then(|| "HAProxy cannot check members over TLS on this host".into())
    }

    /// Why this host cannot carry a database's virtual IP (keepalived and a gateway bound to
    /// the VIP), if it cannot.
    pub fn cannot_carry_vip(&self) -> Option<String> {
        (!self.keepalived).then(|| {
            "keepalived cannot carry a virtual IP on this host (not installed, not root, or \
             net.ipv4.ip_nonlocal_bind off)"
                .into()
        })
    }
}

/// What an agent says about itself when it registers: the one wire type the agent sends, the
/// scheduler's agent API reads and the store records.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistration {
    pub bootstrap_token: String,
    /// Unique name of the agent (its host name, say); registering again rotates the credential.
    pub name: String,
    /// The private address: other hosts and the platform's clients reach this host's services at it.
    pub host: String,
    /// The address clients on the internet reach this host at (gateways of exposed databases
    /// bind it); `host` when absent.
    #[serde(default)]
    pub public_host: Option<String>,
    pub memory_mb: i64,
    pub disk_gb: i64,
    /// Ports this host may hand out to members and gateways.
    pub port_min: i32,
    pub port_max: i32,
    /// What the host can do (absent from agents older than the checks: then unknown, and
    /// placement treats the agent as able).
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

crate::redacted_debug!(AgentRegistration {
    name, host, public_host, memory_mb, disk_gb, port_min, port_max, capabilities
} secret { bootstrap_token });

/// The scheduler's answer to a registration.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    #[schema(value_type = String, format = Uuid)]
    pub agent_id: AgentId,
    /// Send as `Authorization: Bearer <credential>`; shown once.
    pub credential: String,
}

crate::redacted_debug!(Registered { agent_id } secret { credential });

/// What an agent sends every few seconds: that it is alive, and what it observes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    /// What the agent observes on its host.
    #[serde(default)]
    pub observed: Observation,
}

/// The lease an agent holds on a running job (its heartbeat extends it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseBody {
    pub lease_id: LeaseId,
}

/// Where the platform's etcd is and how one database's Patroni reaches it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EtcdAccess {
    /// `host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// `http` or `https`.
    pub protocol: String,
    /// PEM of the CA that signed etcd's server certificate (https only).
    pub ca_pem: Option<String>,
    /// The database's own etcd user, confined to `/service/<scope>/` (none without auth).
    pub username: Option<String>,
    pub password: Option<String>,
}

crate::redacted_debug!(EtcdAccess { endpoints, protocol, ca_pem, username } secret { password });

/// TLS material of one member: the database's CA and a server certificate for the host.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TlsBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

crate::redacted_debug!(TlsBundle { ca_pem, cert_pem } secret { key_pem });

/// Generated credentials of one database.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatabaseSecrets {
    /// PostgreSQL superuser (`postgres`); never given to tenants.
    pub superuser_password: String,
    /// Streaming replication user (`replicator`).
    pub replication_password: String,
    /// Patroni REST API basic auth (`patroni`).
    pub restapi_password: String,
    /// The tenant's user, owner of the tenant's database.
    pub app_user: String,
    pub app_password: String,
    pub app_database: String,
}

crate::redacted_debug!(DatabaseSecrets { app_user, app_database } secret { superuser_password, replication_password, restapi_password, app_password });

/// PostgreSQL settings derived from the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PgSizing {
    pub max_connections: i32,
    pub shared_buffers_mb: i32,
    pub effective_cache_size_mb: i32,
    pub work_mem_kb: i32,
    pub maintenance_work_mem_mb: i32,
}

/// One PostgreSQL member of a database, run by Patroni on the agent's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberSpec {
    pub database_id: DatabaseId,
    /// Fencing token: the agent refuses a spec older than the newest it applied.
    pub generation: i64,
    /// Patroni scope (the database id) and member name.
    pub scope: String,
    pub member: String,
    /// PostgreSQL major version, e.g. `15`.
    pub version: String,
    /// Address other members, gateways and clients use to reach this host.
    pub host: String,
    pub pg_port: u16,
    pub patroni_port: u16,
    pub etcd: EtcdAccess,
    pub tls: TlsBundle,
    pub secrets: DatabaseSecrets,
    pub sizing: PgSizing,
    /// `hostssl` instead of `host` for client connections.
    pub force_tls: bool,
    /// Patroni's non-strict synchronous mode in the configuration a new cluster starts with
    /// (later changes go through Patroni's `/config`).
    #[serde(default)]
    pub synchronous_mode: bool,
    /// WAL archiving into the database's pgBackRest stanza, on plans with PITR (absent: none).
    #[serde(default)]
    pub pitr: Option<crate::pitr::PitrSpec>,
}

/// A backend of a gateway: one member's PostgreSQL and Patroni REST ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewayBackend {
    pub member: String,
    pub host: String,
    pub pg_port: u16,
    pub patroni_port: u16,
}

/// An HAProxy gateway routing to whichever member answers Patroni's `/primary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewaySpec {
    pub database_id: DatabaseId,
    pub generation: i64,
    pub name: String,
    /// The host's private address: clients on the platform's network connect here.
    pub listen_host: String,
    pub listen_port: u16,
    /// The host's public address while the database is exposed to the internet (same port;
    /// absent otherwise). When it is `listen_host`, the gateway listens there only, as public.
    #[serde(default)]
    pub public_host: Option<String>,
    /// The networks the public address admits (normalized CIDRs); empty admits every address.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    pub backends: Vec<GatewayBackend>,
    /// CA that signed the members' Patroni REST certificates (checked with check-ssl).
    pub ca_pem: String,
    /// The database's virtual IP when its gateways are on several hosts and the platform has a
    /// VIP pool: HAProxy binds it too, and keepalived moves it to a live gateway host. Absent
    /// on one host (the gateways share address and port with SO_REUSEPORT) or without a pool.
    #[serde(default)]
    pub vip: Option<GatewayVip>,
}

/// A database's virtual IP as one gateway carries it (VRRP version 3, unicast to the other
/// gateway hosts' private addresses, from this gateway's `listen_host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GatewayVip {
    /// The address clients connect to (IPv4).
    pub address: String,
    /// The port every gateway of the database listens on at `address`.
    pub port: u16,
    /// VRRP's virtual router id (1–255), unique among the VIPs of the pool.
    pub router_id: u8,
    /// This gateway's VRRP priority (1–254); the highest live one holds the VIP.
    pub priority: u8,
    /// The private addresses of the database's other gateway hosts.
    pub peers: Vec<String>,
}

/// Where a member's Patroni REST API answers (https, its certificate signed by the database's
/// CA) and how to authenticate to it.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PatroniApi {
    pub host: String,
    pub patroni_port: u16,
    pub ca_pem: String,
    pub restapi_password: String,
}

crate::redacted_debug!(PatroniApi { host, patroni_port, ca_pem } secret { restapi_password });

/// What an agent is asked to do. (A wire type, built once per job: the size of its largest
/// variant does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentTask {
    /// Make this member exist and run (idempotent).
    EnsureMember { spec: MemberSpec },
    /// Make this gateway exist and run (idempotent).
    EnsureGateway { spec: GatewaySpec },
    /// Restart this member's PostgreSQL through Patroni (idempotent per job: once done, done).
    RestartMember {
        database_id: DatabaseId,
        generation: i64,
        member: String,
        #[serde(flatten)]
        api: PatroniApi,
    },
    /// Apply a change to the cluster-wide Patroni configuration (`PATCH /config`).
    PatchConfig {
        database_id: DatabaseId,
        generation: i64,
        #[serde(flatten)]
        api: PatroniApi,
        #[schema(value_type = Object)]
        patch: serde_json::Value,
    },
    /// Re-clone this replica from the leader (`POST /reinitialize` on its Patroni): its history
    /// forked from the leader's or its replication broke. Sent once per detection.
    ReinitMember {
        database_id: DatabaseId,
        generation: i64,
        member: String,
        #[serde(flatten)]
        api: PatroniApi,
    },
    /// Move the leader to `candidate` (or the healthiest replica) and wait until it leads.
    Switchover {
        database_id: DatabaseId,
        generation: i64,
        #[serde(flatten)]
        api: PatroniApi,
        candidate: Option<String>,
        /// The leader to drain in this host's gateways just before asking Patroni (the other
        /// hosts' gateways drain it in jobs of the same step).
        #[serde(default)]
        drain_leader: Option<String>,
    },
    /// Drain (or stop draining) `member` in this host's gateways of the database: new client
    /// connections stop going to it and wait in the gateway for another primary, sessions
    /// already open go on. A drain lapses by itself after `for_secs`.
    DrainMember { database_id: DatabaseId, generation: i64, member: String, drain: bool, for_secs: u32 },
    /// Stop and remove everything of the database on this host: processes, data, ports.
    RemoveDatabase { database_id: DatabaseId, generation: i64 },
    /// Backup work (dump, restore in place, verify) with this host's backup storage.
    Backup { task: BackupTask },
}

impl AgentTask {
    /// The database the task is about and the generation it was issued under: the agent refuses
    /// a task older than the newest generation it applied to that database (fencing), whatever
    /// its kind.
    pub fn fence(&self) -> (DatabaseId, i64) {
        match self {
            AgentTask::EnsureMember { spec } => (spec.database_id, spec.generation),
            AgentTask::EnsureGateway { spec } => (spec.database_id, spec.generation),
            AgentTask::RestartMember { database_id, generation, .. }
            | AgentTask::PatchConfig { database_id, generation, .. }
            | AgentTask::ReinitMember { database_id, generation, .. }
            | AgentTask::Switchover { database_id, generation, .. }
            | AgentTask::DrainMember { database_id, generation, .. }
            | AgentTask::RemoveDatabase { database_id, generation } => (*database_id, *generation),
            AgentTask::Backup { task } => task.fence(),
        }
    }
}

/// The backup work an agent does (issue 11): dump, restore in place, verify restore, carried to
/// the agents as `AgentTask::Backup` and executed by `pgplane_agent::backup::run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupTask {
    /// Dump the tenant's database from this host's `member` (`pg_dump -Fc` of the member's
    /// major version) into the agent's backup storage at `backup` (a follower must hold its
    /// snapshots: see the agent's `pgdump` driver). Reports size, SHA-256, server version and
    /// the row counts taken in the dump's snapshot.
    Dump { database_id: DatabaseId, generation: i64, member: String, backup: BackupLocation },
    /// Replace the content of the tenant's database on this host's `member` (the leader) with
    /// the backup at `backup`, checked against `sha256`: restored beside it, then swapped in.
    Restore { database_id: DatabaseId, generation: i64, member: String, backup: BackupLocation, sha256: String },
    /// Restore the backup into a throw-away PostgreSQL of `version` on this host and compare
    /// its row counts with `row_counts` (as the dump reported them).
    Verify {
        database_id: DatabaseId,
        backup: BackupLocation,
        sha256: String,
        version: String,
        #[schema(value_type = Object)]
        row_counts: serde_json::Value,
    },
}

impl BackupTask {
    /// The database and generation it was issued under. A verify touches no member (it restores
    /// into a scratch server): it is never stale, so it answers the newest generation.
    pub fn fence(&self) -> (DatabaseId, i64) {
        match self {
            BackupTask::Dump { database_id, generation, .. } | BackupTask::Restore { database_id, generation, .. } => {
                (*database_id, *generation)
            }
            BackupTask::Verify { database_id, .. } => (*database_id, i64::MAX),
        }
    }

    /// The kind its job is stored under: `backup_dump`, `backup_restore`, `backup_verify`.
    pub fn job_kind(&self) -> &'static str {
        match self {
            BackupTask::Dump { .. } => "backup_dump",
            BackupTask::Restore { .. } => "backup_restore",
            BackupTask::Verify { .. } => "backup_verify",
        }
    }
}

/// Where a backup is in the backup storage the agents are configured with: a location, never
/// a credential (the agents hold those in their own configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupLocation {
    /// The object's name, e.g. `databases/<database id>/backups/<backup id>.dump`.
    pub key: String,
}

impl BackupLocation {
    /// The location of one backup of one database.
    pub fn of(database_id: DatabaseId, backup_id: crate::ids::BackupId) -> Self {
        BackupLocation { key: format!("databases/{database_id}/backups/{backup_id}.dump") }
    }
}

/// A job handed to an agent by the long-poll.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentJob {
    pub job_id: JobId,
    pub lease_id: LeaseId,
    pub attempt: i32,
    pub task: AgentTask,
}

/// How a job ended on the agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    Succeeded {
        #[schema(value_type = Object)]
        result: serde_json::Value,
    },
    Failed {
        error: String,
        /// False when trying again cannot help (e.g. a stale generation).
        retryable: bool,
    },
}

/// The agent's answer about one job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobReport {
    pub lease_id: LeaseId,
    #[serde(flatten)]
    pub outcome: JobOutcome,
}

/// One member as its agent sees it through Patroni.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObservedMember {
    pub database_id: DatabaseId,
    pub member: String,
    /// `leader`, `replica`, or `unknown` when Patroni does not answer.
    pub role: String,
    /// Patroni's state of PostgreSQL: `running`, `starting`, `stopped`, `crashed`, … or `unreachable`.
    pub state: String,
    pub timeline: Option<i64>,
    /// Bytes of WAL the member is behind its leader (replicas).
    pub lag_bytes: Option<i64>,
    /// The replica Patroni lists as its synchronous standby (`sync_standby`). Absent from older
    /// agents' reports, which read as `false`.
    #[serde(default)]
    pub synchronous: bool,
    /// On a leader: the members its WAL senders are streaming to (`GET /patroni`'s
    /// `replication`). Absent from older agents' reports.
    #[serde(default)]
    pub streaming_replicas: Vec<String>,
}

/// What an agent reports with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Observation {
    #[serde(default)]
    pub members: Vec<ObservedMember>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_access_stays_flat_on_the_wire() {
        let task = AgentTask::Switchover {
            database_id: DatabaseId::new(),
            generation: 7,
            api: PatroniApi {
                host: "10.0.0.5".into(),
                patroni_port: 8008,
                ca_pem: "CA".into(),
                restapi_password: "pw".into(),
            },
            candidate: None,
            drain_leader: Some("m0".into()),
        };
        let wire = serde_json::to_value(&task).unwrap();
        for key in ["kind", "database_id", "generation", "host", "patroni_port", "ca_pem", "restapi_password"] {
            assert!(wire.get(key).is_some(), "{key} missing in {wire}");
        }
        assert!(wire.get("api").is_none(), "{wire}");
        assert_eq!(serde_json::from_value::<AgentTask>(wire).unwrap(), task);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let secrets = DatabaseSecrets {
            superuser_password: "s3cret-super".into(),
            replication_password: "s3cret-repl".into(),
            restapi_password: "s3cret-rest".into(),
            app_user: "main".into(),
            app_password: "s3cret-app".into(),
            app_database: "main".into(),
        };
        let api = PatroniApi {
            host: "h".into(),
            patroni_port: 1,
            ca_pem: "CA".into(),
            restapi_password: "s3cret-rest".into(),
        };
        let tls = TlsBundle { ca_pem: "CA".into(), cert_pem: "CERT".into(), key_pem: "s3cret-key".into() };
        let etcd = EtcdAccess {
            endpoints: vec!["e:2379".into()],
            protocol: "https".into(),
            ca_pem: None,
            username: Some("db-x".into()),
            password: Some("s3cret-etcd".into()),
        };
        let task = AgentTask::RestartMember { database_id: DatabaseId::new(), generation: 1, member: "m0".into(), api };
        let shown = format!("{secrets:?} {task:?} {tls:?} {etcd:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("main") && shown.contains("db-x"), "{shown}");
    }

    #[test]
    fn a_host_runs_only_what_its_checks_allow() {
        let check = |status| Check { name: "haproxy → TLS check".into(), status, detail: "d".into() };
        let able = Capabilities {
            postgres_versions: vec!["15".into()],
            patroni: true,
            haproxy: true,
            keepalived: true,
            pgbackrest: None,
            checks: vec![check(CheckStatus::Ok)],
        };
        assert_eq!((able.cannot_run_member("15"), able.cannot_run_gateway()), (None, None));
        assert_eq!(able.cannot_carry_vip(), None);
        assert!(able.problems().is_empty());
        assert!(able.cannot_run_member("16").unwrap().contains("PostgreSQL 16"));
        let broken = Capabilities {
            patroni: false,
            haproxy: false,
            keepalived: false,
            checks: vec![check(CheckStatus::Fail)],
            ..able
        };
        assert!(broken.cannot_run_member("15").unwrap().contains("Patroni"));
        assert!(broken.cannot_run_gateway().is_some());
        assert!(broken.cannot_carry_vip().unwrap().contains("keepalived"));
        // Capabilities reported before the keepalived check: no VIP.
        let earlier: Capabilities = serde_json::from_value(serde_json::json!({
            "postgres_versions": ["15"], "patroni": true, "haproxy": true, "pgbackrest": null, "checks": []
        }))
        .unwrap();
        assert!(earlier.cannot_carry_vip().is_some());
        assert_eq!(broken.problems(), vec!["haproxy → TLS check: d".to_string()]);
        // Agents older than the checks register without them.
        let old: AgentRegistration = serde_json::from_value(serde_json::json!({
            "bootstrap_token": "t", "name": "a", "host": "h", "memory_mb": 1, "disk_gb": 1, "port_min": 2000, "port_max": 3000
        }))
        .unwrap();
        assert!(old.capabilities.is_none());
        assert!(!format!("{old:?}").contains("\"t\""), "the bootstrap token is redacted");
    }
}
