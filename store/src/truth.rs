//! The control plane's view of who leads, from the source of truth: the scheduler reads each
//! database's leader key from etcd under the database's row lock (so two schedulers, or a
//! switchover's last step, never record one change twice or an old holder after a new one),
//! records one event per change of holder, and marks the replicas it judged diverged or not
//! streaming. Agents' reports keep state, timeline and lag; roles come from here once the leader
//! key has been seen (before, while Patroni bootstraps, the agents' reports are all there is).

use chrono::{DateTime, Utc};
use pgplane_core::ids::DatabaseId;
use sqlx::{FromRow, PgConnection};

use crate::jobs::{job_enqueue_in, NewJob};
use crate::{db_error, Result, Store};

/// A member whose agent has not reported on it for this long shows `unknown` (three of the
/// agent's 5 s heartbeats).
pub const MEMBER_STALE_SECS: i32 = 15;

/// A member as the scheduler judges it.
#[derive(Debug, Clone, FromRow)]
pub struct TruthMember {
    pub name: String,
    pub agent_id: uuid::Uuid,
    pub host: String,
    pub patroni_port: i32,
    /// The state its agent last reported (Patroni's, e.g. `running`, `streaming`).
    pub state: String,
    /// Its agent reported on it within `MEMBER_STALE_SECS`.
    pub fresh: bool,
    /// What its agent reported, when it led: the members its WAL senders stream to.
    pub streaming_replicas: Vec<String>,
    pub health: Option<String>,
    pub unhealthy_since: Option<DateTime<Utc>>,
    pub reinit_at: Option<DateTime<Utc>>,
}

/// A database locked for one reading of etcd.
#[derive(Debug, Clone)]
pub struct TruthState {
    pub generation: i64,
    /// The leader key's holder at the last reading that found one.
    pub leader: Option<String>,
    pub members: Vec<TruthMember>,
}

/// What one reading of etcd says of a database.
#[derive(Debug, Clone, Default)]
pub struct TruthRead {
    /// The leader key's holder (none while no member holds it).
    pub leader: Option<String>,
    /// The leader's timeline, for the event.
    pub timeline: Option<i64>,
    /// The synchronous standbys etcd's `sync` key names.
    pub sync: Vec<String>,
    /// Per member: what is wrong with it while it looks diverged or not streaming, `None` while
    /// it looks fine (or cannot be judged).
    pub suspects: Vec<(String, Option<Suspicion>)>,
}

/// A replica that looks unhealthy at one reading.
#[derive(Debug, Clone)]
pub struct Suspicion {
    /// `diverged` or `not_streaming`: shown once it lasted `grace_secs`.
    pub health: String,
    pub grace_secs: f64,
    /// Why, in one line (recorded with the re-clone's event).
    pub why: String,
}

/// A change of the leader key's holder, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadershipChange {
    /// `failover`, or `switchover` when one was asked for.
    pub kind: String,
    pub from: String,
    pub to: String,
}

/// A replica judged unhealthy for longer than its grace, not yet re-cloned for this detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReinitDue {
    pub member: String,
    pub health: String,
    pub why: String,
}

impl Store {
    /// Databases whose members the scheduler watches (placed, not being removed).
    pub async fn truth_databases(&self) -> Result<Vec<DatabaseId>> {
        sqlx::query_scalar(
            "SELECT d.id FROM databases d WHERE d.status NOT IN ('deleting', 'deleted') \
             AND EXISTS (SELECT 1 FROM database_members m WHERE m.database_id = d.id) ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)
    }
}

/// Locks the database's row (workflow steps that change members wait) and returns what the
/// scheduler knows of it; `None` when it is gone or being removed.
pub async fn truth_lock_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Option<TruthState>> {
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "SELECT generation, dcs_leader FROM databases WHERE id = $1 AND status NOT IN ('deleting', 'deleted') \
         FOR UPDATE",
    )
    .bind(db)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?;
    let Some((generation, leader)) = row else { return Ok(None) };
    let members = sqlx::query_as(
        "SELECT name, agent_id, host, patroni_port, state, \
            COALESCE(observed_at > now() - make_interval(secs => $2), false) AS fresh, \
            streaming_replicas, health, unhealthy_since, reinit_at \
         FROM database_members WHERE database_id = $1 ORDER BY name",
    )
    .bind(db)
    .bind(f64::from(MEMBER_STALE_SECS))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(Some(TruthState { generation, leader, members }))
}

/// Records a reading of etcd taken under `truth_lock_in`: the holder, roles and synchronous
/// standbys, an event when the holder changed, and the replicas' health. Returns the change,
/// if any, and the replicas due for a re-clone.
pub async fn truth_record_in(
    conn: &mut PgConnection,
    db: DatabaseId,
    before: &TruthState,
    read: &TruthRead,
) -> Result<(Option<LeadershipChange>, Vec<ReinitDue>)> {
    let mut change = None;
    if let (Some(from), Some(to)) = (&before.leader, &read.leader) {
        if from != to {
            // Planned when a switchover (or a plan change, which switches over) is under way.
            let planned: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM operations WHERE database_id = $1 \
                 AND kind IN ('switchover', 'change_plan') AND status IN ('pending', 'running'))",
            )
            .bind(db)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
            let kind = if planned { "switchover" } else { "failover" };
            let detail = serde_json::json!({ "from": from, "to": to, "timeline": read.timeline });
            crate::config::event_insert_in(conn, db, kind, detail).await?;
            change = Some(LeadershipChange { kind: kind.into(), from: from.clone(), to: to.clone() });
        }
    }
    sqlx::query(
        "UPDATE databases SET dcs_leader = COALESCE($2, dcs_leader), dcs_leader_held = $2 IS NOT NULL, \
            dcs_read_at = now() WHERE id = $1",
    )
    .bind(db)
    .bind(&read.leader)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    if before.leader.is_some() || read.leader.is_some() {
        // Written only when they change: this runs every second for every database.
        sqlx::query(
            "UPDATE database_members SET role = r.role, synchronous = r.synchronous \
             FROM (SELECT name, CASE WHEN $2::text IS NULL THEN 'unknown' WHEN name = $2 THEN 'leader' ELSE 'replica' END AS role, \
                          (name = ANY($3) AND name IS DISTINCT FROM $2) AS synchronous \
                   FROM database_members WHERE database_id = $1) r \
             WHERE database_members.database_id = $1 AND database_members.name = r.name \
               AND (database_members.role, database_members.synchronous) IS DISTINCT FROM (r.role, r.synchronous)",
        )
        .bind(db)
        .bind(&read.leader)
        .bind(&read.sync)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    }
    let mut due = Vec::new();
    for (name, suspect) in &read.suspects {
        match suspect {
            None => {
                sqlx::query(
                    "UPDATE database_members SET health = NULL, unhealthy_since = NULL, reinit_at = NULL \
                     WHERE database_id = $1 AND name = $2 AND (unhealthy_since IS NOT NULL OR health IS NOT NULL)",
                )
                .bind(db)
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
            }
            Some(Suspicion { health, grace_secs, why }) => {
                let row: Option<(Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
                    "UPDATE database_members SET unhealthy_since = COALESCE(unhealthy_since, now()), \
                        health = CASE WHEN COALESCE(unhealthy_since, now()) <= now() - make_interval(secs => $4) \
                                      THEN $3 ELSE health END \
                     WHERE database_id = $1 AND name = $2 RETURNING health, reinit_at",
                )
                .bind(db)
                .bind(name)
                .bind(health)
                .bind(grace_secs)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?;
                if let Some((Some(health), None)) = row {
                    due.push(ReinitDue { member: name.clone(), health, why: why.clone() });
                }
            }
        }
    }
    Ok((change, due))
}

/// Asks for a replica's re-clone once per detection: marks it, enqueues `job` and records an
/// event. False when it was already asked for.
pub async fn truth_reinit_in(conn: &mut PgConnection, db: DatabaseId, due: &ReinitDue, job: &NewJob) -> Result<bool> {
    let marked = sqlx::query(
        "UPDATE database_members SET reinit_at = now() WHERE database_id = $1 AND name = $2 AND reinit_at IS NULL",
    )
    .bind(db)
    .bind(&due.member)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?
    .rows_affected();
    if marked == 0 {
        return Ok(false);
    }
    job_enqueue_in(conn, job).await?;
    let detail = serde_json::json!({ "member": due.member, "health": due.health, "reason": due.why });
    crate::config::event_insert_in(conn, db, "reinitialize", detail).await?;
    Ok(true)
}

/// The leader key's holder as last read, under the database's row lock (`None` before the
/// scheduler first saw the key).
pub async fn truth_leader_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Option<String>> {
    let leader: Option<Option<String>> =
        sqlx::query_scalar("SELECT dcs_leader FROM databases WHERE id = $1 FOR UPDATE")
            .bind(db)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
    Ok(leader.flatten())
}

/// Records that `to` now holds the leader key and leads (a finished switchover, before the
/// next reading).
pub async fn truth_leader_set_in(conn: &mut PgConnection, db: DatabaseId, to: &str) -> Result<()> {
    sqlx::query("UPDATE databases SET dcs_leader = $2, dcs_leader_held = true WHERE id = $1")
        .bind(db)
        .bind(to)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    sqlx::query(
        "UPDATE database_members SET role = CASE WHEN name = $2 THEN 'leader' ELSE 'replica' END \
         WHERE database_id = $1",
    )
    .bind(db)
    .bind(to)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(())
}
