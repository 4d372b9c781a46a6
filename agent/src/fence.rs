//! Fencing: the newest generation applied to each database on this node, kept in
//! `<root>/<database id>.generation` (beside the database's folder, so it outlives removal).
//! A job older than that generation is refused, and trying it again cannot help.

use crate::files::write_atomic;
use anyhow::Context;
use pgplane_core::ids::DatabaseId;
use std::path::{Path, PathBuf};

/// Why a node refused or failed a job.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "stale job for database {database_id}: generation {requested} is older than generation {applied}, \
         already applied on this node"
    )]
    StaleGeneration { database_id: DatabaseId, requested: i64, applied: i64 },
    /// This host cannot do the job (a PostgreSQL version it lacks, a Patroni that cannot reach
    /// etcd over https, an HAProxy that cannot check over TLS): see `pgplane doctor`.
    #[error("{0} (see pgplane doctor on that host)")]
    Unable(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl NodeError {
    /// False when trying again cannot help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, NodeError::StaleGeneration { .. } | NodeError::Unable(_))
    }
}

pub fn generation_file(root: &Path, database_id: DatabaseId) -> PathBuf {
    root.join(format!("{database_id}.generation"))
}

/// The newest generation applied to the database here, if any.
pub fn applied(root: &Path, database_id: DatabaseId) -> anyhow::Result<Option<i64>> {
    let file = generation_file(root, database_id);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            Ok(Some(text.trim().parse().with_context(|| format!("{} holds no generation number", file.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Refuses `requested` when older than the applied generation, else records it.
/// The caller holds the database's lock, so check and record do not interleave.
pub fn advance(root: &Path, database_id: DatabaseId, requested: i64) -> Result<(), NodeError> {
    match applied(root, database_id)? {
        Some(applied) if requested < applied => Err(NodeError::StaleGeneration { database_id, requested, applied }),
        Some(applied) if requested == applied => Ok(()),
        _ => {
            write_atomic(&generation_file(root, database_id), &format!("{requested}\n"), None)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_generations_are_refused() {
        let root = std::env::temp_dir().join(format!("pgplane-fence-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let db = DatabaseId::new();
        assert_eq!(applied(&root, db).unwrap(), None);
        advance(&root, db, 3).unwrap();
        advance(&root, db, 3).unwrap();
        let err = advance(&root, db, 2).unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("generation 2 is older than generation 3"), "{err}");
        advance(&root, db, 5).unwrap();
        assert_eq!(applied(&root, db).unwrap(), Some(5));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
