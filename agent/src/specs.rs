//! What this node should run, as it survives the agent: the last applied spec of each member
//! and gateway in its folder (`spec.json`, 0600: specs hold secrets), and a removal marker
//! beside the database's folder that keeps a database being removed from coming back.

use crate::files::write_atomic;
use anyhow::{Context, Result};
use pgplane_core::agent::{GatewaySpec, MemberSpec};
use pgplane_core::ids::DatabaseId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The specs persisted for one database on this node.
#[derive(Debug, Default)]
pub struct Persisted {
    pub members: Vec<MemberSpec>,
    pub gateways: Vec<GatewaySpec>,
}

/// Writes `spec` to `file` (atomically, 0600, owned by the agent's user).
pub fn save<T: Serialize>(file: &Path, spec: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(spec).context("serializing a spec")?;
    write_atomic(file, &text, None)?;
    Ok(())
}

pub(crate) fn load_one<T: DeserializeOwned>(file: &Path) -> Option<T> {
    let text = std::fs::read_to_string(file).ok()?;
    match serde_json::from_str(&text) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "unreadable spec; ignored");
            None
        }
    }
}

/// The member and gateway specs kept in a database's folder (`member-*/spec.json`,
/// `gateway-*/spec.json`), sorted by name; specs of another database are ignored.
pub fn load(database_dir: &Path, database_id: DatabaseId) -> Persisted {
    let mut out = Persisted::default();
    let Ok(entries) = std::fs::read_dir(database_dir) else { return out };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let file = dir.join("spec.json");
        if name.starts_with("member-") {
            out.members.extend(load_one::<MemberSpec>(&file).filter(|s| s.database_id == database_id));
        } else if name.starts_with("gateway-") {
            out.gateways.extend(load_one::<GatewaySpec>(&file).filter(|s| s.database_id == database_id));
        }
    }
    out
}

/// The databases with a folder under `root`.
pub fn databases(root: &Path) -> Vec<DatabaseId> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut ids: Vec<DatabaseId> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_by_key(|id| id.to_string());
    ids
}

/// `<root>/<database id>.removing`: present from the start of a removal until its end.
pub fn removal_marker(root: &Path, database_id: DatabaseId) -> PathBuf {
    root.join(format!("{database_id}.removing"))
}

/// The generation of the removal under way, if one is.
pub fn removing(root: &Path, database_id: DatabaseId) -> Option<i64> {
    let text = std::fs::read_to_string(removal_marker(root, database_id)).ok()?;
    Some(text.trim().parse().unwrap_or(i64::MAX))
}

pub fn mark_removing(root: &Path, database_id: DatabaseId, generation: i64) -> Result<()> {
    write_atomic(&removal_marker(root, database_id), &format!("{generation}\n"), None)?;
    Ok(())
}

pub fn unmark_removing(root: &Path, database_id: DatabaseId) -> Result<()> {
    let marker = removal_marker(root, database_id);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", marker.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::agent::GatewaySpec;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn specs_persist_privately_and_a_removal_is_marked() {
        let root = std::env::temp_dir().join(format!("pgplane-specs-{}", std::process::id()));
        let db = DatabaseId::new();
        let dir = root.join(db.to_string());
        std::fs::create_dir_all(dir.join("gateway-g0")).unwrap();
        let spec = GatewaySpec {
            database_id: db,
            generation: 2,
            name: "g0".into(),
            listen_host: "127.0.0.1".into(),
            listen_port: 6432,
            public_host: None,
            allowed_cidrs: vec![],
            backends: vec![],
            ca_pem: "CA".into(),
            vip: None,
        };
        let file = dir.join("gateway-g0/spec.json");
        save(&file, &spec).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&dir, db).gateways, vec![spec]);
        assert!(load(&dir, DatabaseId::new()).gateways.is_empty(), "another database's specs are ignored");
        assert_eq!(databases(&root), vec![db]);
        assert_eq!(removing(&root, db), None);
        mark_removing(&root, db, 3).unwrap();
        assert_eq!(removing(&root, db), Some(3));
        unmark_removing(&root, db).unwrap();
        unmark_removing(&root, db).unwrap();
        assert_eq!(removing(&root, db), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
