//! Create: place the members and gateways, make the secrets, the CA and the etcd user, start
//! the members, then the gateways, then the database is available.
//!
//! ```text
//! start ─place, secrets, etcd user; EnsureMember on each member's agent─▶ gateways
//!       ─EnsureGateway on each gateway's agent─▶ finish (available at its endpoint)
//!                                   └─(restore_from)─▶ restore ─Backup{Restore} on the leader─▶ finish
//! ```
//!
//! With `restore_from` (a restore into a new database) the backup is restored on the leader
//! before the database is available (see `restore`).

use pgplane_core::agent::DatabaseSecrets;
use pgplane_store::engine::database_name_in;
use pgplane_store::workflow::*;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::placement::{place_gateways, place_members};
use super::{password, Workflows};
use crate::queue::JobError;
use crate::tls;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Start,
    Gateways,
    Finish,
    /// Restore `restore_from` into the new database.
    Restore,
}

pub(crate) async fn run(w: &Workflows, tx: &mut PgConnection, st: &OperationState, step: Step) -> Result<(), JobError> {
    match step {
        Step::Start => start(w, tx, st).await,
        Step::Gateways => {
            let then = if st.operation.params.get("restore_from").is_some() { Step::Restore } else { Step::Finish };
            w.ensure_gateways(tx, st, (Step::Gateways, then)).await
        }
        Step::Restore => {
            let backup = super::restore::backup_param(st, "restore_from")?;
            super::restore::restore_into_leader(w, tx, st, backup, (Step::Restore, Step::Finish)).await?;
            operation_progress_in(tx, st.operation.id, 80, "restoring the backup").await?;
            Ok(())
        }
        Step::Finish => w.finish_available(tx, st).await,
    }
}

/// Picks agents, ports and credentials, then asks each member's agent to run it.
async fn start(w: &Workflows, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
    let db = st.database_id;
    let members = place_members(tx, st, &[], st.plan.data_nodes as usize, w.needs_vip(&st.plan)).await?;
    place_gateways(tx, st).await?;
    w.assign_vip(tx, st).await?;
    let name = database_name_in(tx, db).await?;
    let (ca_cert_pem, ca_key_pem) = tls::database_ca(db).map_err(JobError::retry)?;
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
    secrets_insert_in(tx, db, &secrets).await?;
    w.ensure_members(tx, st, &secrets, &members, (Step::Start, Step::Gateways)).await?;
    operation_progress_in(tx, st.operation.id, 10, "starting PostgreSQL members").await?;
    Ok(())
}
