//! Patroni's keys of one database in etcd (`/service/<scope>/`), read and deleted through etcd's
//! v3 JSON gateway with the member's own etcd user: which members are still up, and deleting
//! them all once the last member is gone (a leftover `/config` would win over a later bootstrap).

use anyhow::Result;
use pgplane_core::agent::EtcdAccess;
use pgplane_etcd::{refused_with, scope_prefix, Client};
use serde_json::Value;

/// The members Patroni registered under the scope, with the state each last wrote.
pub async fn members(etcd: &Client, scope: &str) -> Result<Vec<(String, String)>> {
    let prefix = format!("{}members/", scope_prefix(scope));
    let mut out = Vec::new();
    for (key, value) in etcd.list(&prefix).await? {
        let value: Value = serde_json::from_slice(&value).unwrap_or(Value::Null);
        let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
        out.push((name, value["state"].as_str().unwrap_or_default().to_string()));
    }
    Ok(out)
}

/// Deletes the scope's keys unless a member other than `ours` (stopped here) is up: Patroni
/// marks a member `stopped` as it stops, and a killed one's key expires with its lease (ttl).
/// Returns false, deleting nothing, when another member is up: that member may be staying (a
/// plan change removes one member), and if the whole database goes, the removal that stops the
/// last member sees every other one stopped (each checks after its own stop), and deletes them.
/// A user etcd no longer knows means the control plane removed the database from etcd already.
pub async fn remove_scope_if_last(access: &EtcdAccess, scope: &str, ours: &[String]) -> Result<bool> {
    let etcd = Client::new(access)?;
    let found = match members(&etcd, scope).await {
        Err(e) if access.username.is_some() && refused_with(&e, "authentication failed") => {
            tracing::info!(%scope, "the database's etcd user is gone, and its keys with it");
            return Ok(true);
        }
        found => found?,
    };
    let others: Vec<String> = found
        .into_iter()
        .filter(|(name, state)| !ours.contains(name) && state != "stopped")
        .map(|(name, _)| name)
        .collect();
    if !others.is_empty() {
        tracing::info!(%scope, ?others, "other members are up; the etcd keys stay");
        return Ok(false);
    }
    let deleted = etcd.delete_prefix(&scope_prefix(scope)).await?;
    tracing::info!(%scope, deleted, "deleted the database's keys in etcd");
    Ok(true)
}
