//! Each database's own etcd user, made as the database is placed and removed with its keys once
//! every agent has removed its part: the scheduler holds etcd's root credentials, Patroni only
//! its database's user (readwrite on `/service/<database id>/`), tenants no etcd credentials.

use pgplane_core::agent::EtcdAccess;
use pgplane_core::ids::DatabaseId;
use pgplane_store::workflow::{secrets_set_etcd_password_in, StoredSecrets};
use sqlx::PgConnection;

use crate::queue::JobError;
use crate::workflows::{password, Workflows};

/// etcd's root, when the configuration names a user (else etcd has no auth to manage).
pub fn admin_client(etcd: &EtcdAccess) -> anyhow::Result<Option<pgplane_etcd::Client>> {
    if etcd.username.is_none() {
        return Ok(None);
    }
    Ok(Some(pgplane_etcd::Client::new(etcd)?))
}

impl Workflows {
    /// How the database's members reach etcd: as its own user, which this makes sure exists
    /// with the stored password (one is made and stored for a database that has none yet).
    pub(crate) async fn etcd_access(
        &self,
        tx: &mut PgConnection,
        db: DatabaseId,
        secrets: &StoredSecrets,
    ) -> Result<EtcdAccess, JobError> {
        let Some(root) = &self.etcd else { return Ok(self.config.etcd.clone()) };
        let password = match &secrets.etcd_password {
            Some(p) => p.clone(),
            None => {
                let p = password();
                secrets_set_etcd_password_in(tx, db, &p).await?;
                p
            }
        };
        root.ensure_database_user(&db.to_string(), &password)
            .await
            .map_err(|e| JobError::retry(format!("making the database's etcd user: {e:#}")))
    }

    /// Deletes the database's keys that are left in etcd, then its user and role.
    pub(crate) async fn etcd_forget(&self, db: DatabaseId) -> Result<(), JobError> {
        let Some(root) = &self.etcd else { return Ok(()) };
        let left = root
            .remove_database_user(&db.to_string())
            .await
            .map_err(|e| JobError::retry(format!("removing the database's etcd user: {e:#}")))?;
        tracing::info!(database = %db, keys_left = left, "the database's etcd user and keys are gone");
        Ok(())
    }
}
