//! Configure: the desired parameters (plus the plan's max_connections) and the replication
//! mode, applied cluster-wide through a live member's Patroni (`PATCH /config`).
//!
//! ```text
//! start ─PatchConfig through a live member─▶ finish
//! ```

use pgplane_store::config::database_configuration_in;
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use super::Workflows;
use crate::queue::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Finish,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => start(w, tx, st).await,
        Step::Finish => w.finish_available(tx, st).await,
    }
}

async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let config = database_configuration_in(tx, st.database_id).await?;
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
    w.patch_config(tx, st, patch, (Step::Start, Step::Finish)).await?;
    operation_progress_in(tx, st.operation.id, 30, "applying the configuration through Patroni").await?;
    Ok(())
}
