//! Node agents: registration with a per-agent credential, heartbeats, and the capacity
//! view placement reads (free memory and disk per agent, ports per host address).

use chrono::{DateTime, Utc};
use pgplane_core::agent::{AgentId, AgentRegistration, Capabilities, Observation};
use pgplane_core::ids::DatabaseId;
use pgplane_core::page::PageRequest;
use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgConnection};

use crate::{db_error, Error, Result, Store};

/// An agent is placeable while its heartbeats are younger than this.
pub const LIVE_WITHIN_SECS: i32 = 30;

#[derive(Debug, Clone, FromRow)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    /// The private address: members, gateways and clients on the platform's network.
    pub host: String,
    /// The address clients on the internet reach the host at (`host` unless told).
    pub public_host: String,
    pub memory_mb: i64,
    pub disk_gb: i64,
    pub port_min: i32,
    pub port_max: i32,
    pub last_seen_at: DateTime<Utc>,
    /// What the host can do (`None` for agents older than the checks).
    pub capabilities: Option<sqlx::types::Json<Capabilities>>,
}

impl Agent {
    /// Why this agent cannot run a member of PostgreSQL `version`, if it cannot (an agent that
    /// never reported its capabilities is taken as able).
    pub fn cannot_run_member(&self, version: &str) -> Option<String> {
        self.capabilities.as_ref().and_then(|c| c.cannot_run_member(version))
    }

    /// Why this agent cannot run a gateway, if it cannot.
    pub fn cannot_run_gateway(&self) -> Option<String> {
        self.capabilities.as_ref().and_then(|c| c.cannot_run_gateway())
    }

    /// Why this agent cannot carry a database's virtual IP (keepalived), if it cannot.
    pub fn cannot_carry_vip(&self) -> Option<String> {
        self.capabilities.as_ref().and_then(|c| c.cannot_carry_vip())
    }
}

/// An agent with what is left of it.
#[derive(Debug, Clone, FromRow)]
pub struct AgentCapacity {
    #[sqlx(flatten)]
    pub agent: Agent,
    pub free_memory_mb: i64,
    pub free_disk_gb: i64,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

const AGENT_COLUMNS: &str =
    "a.id, a.name, a.host, COALESCE(a.public_host, a.host) AS public_host, a.memory_mb, a.disk_gb, \
     a.port_min, a.port_max, a.last_seen_at, a.capabilities";

impl Store {
    /// Registers an agent (or re-registers one by name) and returns its new credential.
    pub async fn agent_register(&self, r: &AgentRegistration) -> Result<(AgentId, String)> {
        let credential = format!("pga_{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 40));
        let id: AgentId = sqlx::query_scalar(
            "INSERT INTO agents (id, name, host, credential_hash, memory_mb, disk_gb, port_min, port_max, capabilities, public_host) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) WHERE retired_at IS NULL DO UPDATE SET host = EXCLUDED.host, public_host = EXCLUDED.public_host, credential_hash = EXCLUDED.credential_hash, \
                memory_mb = EXCLUDED.memory_mb, disk_gb = EXCLUDED.disk_gb, port_min = EXCLUDED.port_min, \
                port_max = EXCLUDED.port_max, capabilities = EXCLUDED.capabilities, last_seen_at = now() \
             RETURNING id",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(&r.name)
        .bind(&r.host)
        .bind(hash(&credential))
        .bind(r.memory_mb)
        .bind(r.disk_gb)
        .bind(r.port_min)
        .bind(r.port_max)
        .bind(r.capabilities.as_ref().map(sqlx::types::Json))
        .bind(r.public_host.as_deref().unwrap_or(&r.host))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok((id, credential))
    }

    /// The agent holding this credential.
    pub async fn agent_authenticate(&self, credential: &str) -> Result<Agent> {
        #[derive(FromRow)]
        struct Row {
            #[sqlx(flatten)]
            agent: Agent,
            retired: bool,
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS}, a.retired_at IS NOT NULL AS retired FROM agents a WHERE a.credential_hash = $1"
        ))
        .bind(hash(credential))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        match row {
            None => Err(Error::unauthorized("unknown agent credential; register again")),
            Some(r) if r.retired => {
                Err(Error::unauthorized("an operator retired this agent; register again, as a new agent"))
            }
            Some(r) => Ok(r.agent),
        }
    }

    /// Records that the agent is alive and, when it says, what it observes of its members.
    pub async fn agent_heartbeat(&self, id: AgentId, observed: Option<&Observation>) -> Result<()> {
        let Some(observed) = observed else {
            sqlx::query("UPDATE agents SET last_seen_at = now() WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("UPDATE agents SET last_seen_at = now(), observed = $2 WHERE id = $1")
            .bind(id)
            .bind(serde_json::to_value(observed).map_err(Error::internal)?)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for m in &observed.members {
            // Only the agent that runs a member may speak for it, and only of its state, timeline
            // and lag: roles and synchronous standbys come from etcd once the scheduler has seen
            // the database's leader key (`truth`); until then this report is all there is. An
            // unreachable member keeps its last known role.
            sqlx::query(
                "UPDATE database_members SET \
                    role = CASE WHEN d.dcs_leader IS NOT NULL OR $4 = 'unknown' THEN database_members.role ELSE $4 END, \
                    state = $5, timeline = COALESCE($6, timeline), lag_bytes = $7, \
                    synchronous = CASE WHEN d.dcs_leader IS NOT NULL OR $4 = 'unknown' THEN synchronous ELSE $8 END, \
                    streaming_replicas = $9, observed_at = now() \
                 FROM databases d \
                 WHERE d.id = database_members.database_id AND database_members.database_id = $1 \
                   AND database_members.name = $2 AND database_members.agent_id = $3",
            )
            .bind(m.database_id)
            .bind(&m.member)
            .bind(id)
            .bind(&m.role)
            .bind(&m.state)
            .bind(m.timeline)
            .bind(m.lag_bytes)
            .bind(m.synchronous)
            .bind(&m.streaming_replicas)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    /// Agents in registration order (ids are UUIDv7) with their free capacity, for operators.
    pub async fn agent_page(&self, page: &PageRequest) -> Result<(Vec<pgplane_core::model::Agent>, Option<String>)> {
        let rows: Vec<AgentRow> = sqlx::query_as(&format!(
            "SELECT {AGENT_VIEW} WHERE ($1::uuid IS NULL OR a.id > $1) GROUP BY a.id ORDER BY a.id LIMIT $3"
        ))
        .bind(page.after_uuid()?)
        .bind(f64::from(LIVE_WITHIN_SECS))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.capacity.agent.id.to_string());
        Ok((rows.into_iter().map(AgentRow::into_model).collect(), next))
    }

    /// One agent with its free capacity, for operators.
    pub async fn agent_get(&self, id: AgentId) -> Result<pgplane_core::model::Agent> {
        let row: Option<AgentRow> = sqlx::query_as(&format!("SELECT {AGENT_VIEW} WHERE a.id = $1 GROUP BY a.id"))
            .bind(id)
            .bind(f64::from(LIVE_WITHIN_SECS))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(AgentRow::into_model).ok_or(Error::not_found("agent"))
    }
}

/// An agent with its free capacity and whether it is live (`$2`: seconds a heartbeat counts).
const AGENT_VIEW: &str = "a.id, a.name, a.host, COALESCE(a.public_host, a.host) AS public_host, a.memory_mb, a.disk_gb, a.port_min, a.port_max, a.last_seen_at, \
    a.capabilities, a.registered_at, a.retired_at, \
    a.last_seen_at > now() - make_interval(secs => $2) AND a.retired_at IS NULL AS live, \
    a.memory_mb - COALESCE(SUM(m.memory_mb), 0) AS free_memory_mb, a.disk_gb - COALESCE(SUM(m.disk_gb), 0) AS free_disk_gb \
    FROM agents a LEFT JOIN database_members m ON m.agent_id = a.id";

#[derive(FromRow)]
struct AgentRow {
    #[sqlx(flatten)]
    capacity: AgentCapacity,
    registered_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    live: bool,
}

impl AgentRow {
    fn into_model(self) -> pgplane_core::model::Agent {
        let AgentCapacity { agent: a, free_memory_mb, free_disk_gb } = self.capacity;
        pgplane_core::model::Agent {
            id: a.id,
            name: a.name,
            host: a.host,
            public_host: a.public_host,
            memory_mb: a.memory_mb,
            disk_gb: a.disk_gb,
            free_memory_mb,
            free_disk_gb,
            port_min: a.port_min,
            port_max: a.port_max,
            registered_at: self.registered_at,
            last_seen_at: a.last_seen_at,
            live: self.live,
            retired_at: self.retired_at,
            capabilities: a.capabilities.map(|c| c.0),
        }
    }
}

/// Live agents with their free capacity, most free memory first.
pub async fn agent_capacity_in(conn: &mut PgConnection) -> Result<Vec<AgentCapacity>> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS}, a.memory_mb - COALESCE(SUM(m.memory_mb), 0) AS free_memory_mb, \
            a.disk_gb - COALESCE(SUM(m.disk_gb), 0) AS free_disk_gb \
         FROM agents a LEFT JOIN database_members m ON m.agent_id = a.id \
         WHERE a.last_seen_at > now() - make_interval(secs => $1) AND a.retired_at IS NULL \
         GROUP BY a.id ORDER BY free_memory_mb DESC, a.name"
    ))
    .bind(f64::from(LIVE_WITHIN_SECS))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)
}

/// Takes the lowest free port of `[min, max]` on `host` for a database.
pub async fn port_allocate_in(
    conn: &mut PgConnection,
    host: &str,
    (min, max): (i32, i32),
    database: DatabaseId,
    purpose: &str,
) -> Result<u16> {
    // Serializes allocations on one host so two transactions cannot pick the same port.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pgplane-ports:' || $1))")
        .bind(host)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    let port: Option<i32> = sqlx::query_scalar(
        "SELECT p FROM generate_series($2::int, $3::int) p \
         WHERE NOT EXISTS (SELECT 1 FROM port_allocations WHERE host = $1 AND port = p) ORDER BY p LIMIT 1",
    )
    .bind(host)
    .bind(min)
    .bind(max)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let port = port.ok_or_else(|| Error::conflict("no_free_port", format!("no free port left on {host}")))?;
    sqlx::query("INSERT INTO port_allocations (host, port, database_id, purpose) VALUES ($1, $2, $3, $4)")
        .bind(host)
        .bind(port)
        .bind(database)
        .bind(purpose)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    u16::try_from(port).map_err(Error::internal)
}

/// One agent, on the caller's connection.
pub async fn agent_in(conn: &mut PgConnection, id: AgentId) -> Result<Agent> {
    let row: Option<Agent> = sqlx::query_as(&format!("SELECT {AGENT_COLUMNS} FROM agents a WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
    row.ok_or(Error::not_found("agent"))
}
