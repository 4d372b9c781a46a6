//! Settings applied to what runs: force TLS and exposure re-render every member (pg_hba,
//! certificates naming the public addresses; Patroni reloads, no restart), then every gateway
//! (its binds); an allowlist change only the gateways (they take it without dropping a
//! connection); the daily backup (hour, on/off) needs nothing running, only its timer moves
//! (every path ends by setting the timer from the stored settings).
//!
//! ```text
//! start ─EnsureMember on each member─▶ gateways ─EnsureGateway─▶ finish
//! start ─(allowlist only) EnsureGateway─▶ finish
//! start ─(backup hour only)─▶ done
//! ```

use pgplane_store::timers::daily_backup_timer_sync_in;
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::common::secrets_of;
use super::Workflows;
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Gateways,
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => start(w, tx, st).await,
        Step::Gateways => w.ensure_gateways(tx, st, (Step::Gateways, Step::Finish)).await,
        Step::Finish => w.finish_available(tx, st).await,
    }
}

async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let changed: Vec<&str> =
        st.operation.params["changed"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).collect();
    if changed.iter().any(|c| matches!(*c, "force_tls" | "internet_exposure")) {
        let members = members_of_in(tx, st.database_id).await?;
        let secrets = secrets_of(tx, st).await?;
        w.ensure_members(tx, st, &secrets, &members, (Step::Start, Step::Gateways)).await?;
        operation_progress_in(tx, st.operation.id, 20, "reloading the members with the new settings").await?;
        Ok(())
    } else if changed.contains(&"allowed_cidrs") {
        w.ensure_gateways(tx, st, (Step::Start, Step::Finish)).await
    } else {
        // The daily backup (its hour, on or off) needs nothing running: only its timer moves.
        daily_backup_timer_sync_in(tx, st.database_id, chrono::Utc::now()).await?;
        operation_finish_in(tx, st.operation.id, None).await?;
        Ok(())
    }
}
