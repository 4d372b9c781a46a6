//! What a download of a backup reads: where its object is, whether it is finished, its size and
//! SHA-256, and a name for the file. Access is the caller's to check first (the API checks the
//! caller's tenant, or the signature of a link naming the database).

use chrono::{DateTime, Utc};
use pgplane_core::ids::{BackupId, DatabaseId};
use sqlx::FromRow;

use crate::{db_error, Result, Store};

/// A backup as its download needs it.
#[derive(Debug, Clone, FromRow)]
pub struct BackupDownload {
    pub database_name: String,
    /// `pending`, `running`, `done` or `error`: only a `done` backup has an object.
    pub status: String,
    pub object_key: String,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub started_at: DateTime<Utc>,
}

impl Store {
    /// The backup `backup` of `database`, unless it (or its database) is deleted.
    pub async fn backup_download(&self, database: DatabaseId, backup: BackupId) -> Result<Option<BackupDownload>> {
        sqlx::query_as(
            "SELECT d.name AS database_name, b.status, b.object_key, b.size_bytes, b.sha256, b.started_at \
             FROM backups b JOIN databases d ON d.id = b.database_id \
             WHERE b.id = $1 AND b.database_id = $2 AND b.deleted_at IS NULL AND d.status <> 'deleted'",
        )
        .bind(backup)
        .bind(database)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)
    }
}
