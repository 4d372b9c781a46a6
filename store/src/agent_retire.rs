//! Operators retire a lost agent. Refused while it still hosts members or gateways of
//! databases that are not deleted, unless forced: forcing marks its members `lost` (role
//! `unknown`), releases the ports its members and gateways held, and kills the jobs waiting on
//! its queue (their operations then end through the dead-job path). A retired agent is never
//! placed on again and its credential is refused; the host comes back as a new agent.

use pgplane_core::agent::AgentId;
use pgplane_core::ids::DatabaseId;
use pgplane_core::model::AgentRetirement;

use crate::{db_error, Error, Result, Store};

/// Why a retired agent's jobs died.
pub const RETIRED_ERROR: &str = "the agent was retired by an operator (its host is lost)";

impl Store {
    /// Retires agent `id` (again: changes nothing). `force` retires it even while it hosts
    /// members or gateways.
    pub async fn agent_retire(&self, id: AgentId, force: bool) -> Result<AgentRetirement> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let retired: Option<bool> =
            sqlx::query_scalar("SELECT retired_at IS NOT NULL FROM agents WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let already = retired.ok_or(Error::not_found("agent"))?;
        let databases: Vec<DatabaseId> = sqlx::query_scalar(
            "SELECT DISTINCT d.id FROM databases d WHERE d.status <> 'deleted' AND ( \
                EXISTS (SELECT 1 FROM database_members m WHERE m.database_id = d.id AND m.agent_id = $1 \
                        AND m.state <> 'lost') \
                OR EXISTS (SELECT 1 FROM database_gateways g WHERE g.database_id = d.id AND g.agent_id = $1)) \
             ORDER BY d.id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if already {
            drop(tx);
            return Ok(AgentRetirement { agent: self.agent_get(id).await?, databases: Vec::new(), jobs_killed: 0 });
        }
        if !databases.is_empty() && !force {
            let list: Vec<String> = databases.iter().map(|d| d.to_string()).collect();
            return Err(Error::conflict(
                "agent_hosts_databases",
                format!(
                    "the agent still hosts members or gateways of {} database(s): {}; move them first, or retire \
                     it with force=true to mark them lost",
                    list.len(),
                    list.join(", ")
                ),
            ));
        }
        // The ports its members and gateways held on its host go back to the host's pool.
        for release in [
            "DELETE FROM port_allocations p USING database_members m WHERE m.agent_id = $1 \
             AND p.database_id = m.database_id AND p.host = m.host AND p.port IN (m.pg_port, m.patroni_port)",
            "DELETE FROM port_allocations p USING database_gateways g WHERE g.agent_id = $1 \
             AND p.database_id = g.database_id AND p.host = g.host AND p.port = g.port",
        ] {
            sqlx::query(release).bind(id).execute(&mut *tx).await.map_err(db_error)?;
        }
        sqlx::query(
            "UPDATE database_members SET state = 'lost', role = 'unknown', synchronous = false, \
                streaming_replicas = '{}' WHERE agent_id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let jobs_killed: i64 = sqlx::query_scalar(
            "WITH j AS (UPDATE jobs SET status = 'dead', finished_at = now(), last_error = $2, lease_id = NULL, \
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now() \
                WHERE queue = 'agent:' || $1::text AND status IN ('queued', 'running') RETURNING id, attempts), \
             a AS (UPDATE job_attempts a SET finished_at = now(), outcome = 'fatal', error = $2 FROM j \
                WHERE a.job_id = j.id AND a.attempt = j.attempts AND a.finished_at IS NULL) \
             SELECT count(*) FROM j",
        )
        .bind(id)
        .bind(RETIRED_ERROR)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("UPDATE agents SET retired_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(AgentRetirement { agent: self.agent_get(id).await?, databases, jobs_killed })
    }
}
