//! What etcd's root user does for the platform: turning authentication on (user and role
//! `root`), and one user per database whose role may read and write only that database's
//! Patroni prefix `/service/<scope>/` (member list, leases and /version need no grant).

use crate::{prefix_end, refused_with, scope_prefix, Client};
use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pgplane_core::agent::EtcdAccess;
use serde_json::{json, Value};

/// etcd's administrator: the user holding the `root` role.
pub const ROOT: &str = "root";

/// The etcd user (and role) of a database.
pub fn database_user(scope: &str) -> String {
    format!("db-{scope}")
}

/// How a database's Patroni reaches etcd: the platform's endpoints and CA, its own user.
pub fn database_access(platform: &EtcdAccess, scope: &str, password: &str) -> EtcdAccess {
    EtcdAccess { username: Some(database_user(scope)), password: Some(password.to_string()), ..platform.clone() }
}

/// `Ok(())` also when etcd refused with `already`: the step was done before.
fn done_before(result: Result<Value>, already: &str) -> Result<()> {
    match result {
        Err(e) if !refused_with(&e, already) => Err(e),
        _ => Ok(()),
    }
}

/// Turns authentication on, with user `root` and `root_password`, through `access` (no user:
/// auth is off until this succeeds). Idempotent: when auth is on and the password works, it
/// changes nothing.
pub async fn enable_auth(access: &EtcdAccess, root_password: &str) -> Result<()> {
    let root_access =
        EtcdAccess { username: Some(ROOT.into()), password: Some(root_password.into()), ..access.clone() };
    let root = Client::new(&root_access)?;
    match root.call("/v3/auth/user/get", &json!({ "name": ROOT })).await {
        Ok(_) => return Ok(()),
        Err(e) if refused_with(&e, "authentication is not enabled") => {}
        Err(e) if e.downcast_ref::<crate::Refused>().is_some() => {
            return Err(e.context("authentication is on, but not with the root password given"))
        }
        // Unreachable, or not the etcd of this CA: nothing was learned about authentication.
        Err(e) => return Err(e),
    }
    let anyone = Client::new(&EtcdAccess { username: None, password: None, ..access.clone() })?;
    let user = json!({ "name": ROOT, "password": root_password });
    if let Err(e) = anyone.call("/v3/auth/user/add", &user).await {
        if !refused_with(&e, "user name already exists") {
            return Err(e);
        }
        // Left by a start-up that stopped half-way: make it ours.
        anyone.call("/v3/auth/user/changepw", &user).await?;
    }
    done_before(anyone.call("/v3/auth/role/add", &json!({ "name": ROOT })).await, "role name already exists")?;
    anyone.call("/v3/auth/user/grant", &json!({ "user": ROOT, "role": ROOT })).await?;
    anyone.call("/v3/auth/enable", &json!({})).await?;
    root.call("/v3/auth/user/get", &json!({ "name": ROOT })).await.context("etcd's authentication, just enabled")?;
    Ok(())
}

impl Client {
    /// Makes the database's user exist with `password` and a role of its own that reads and
    /// writes only the database's prefix. Idempotent; an existing user's password is changed
    /// (which ends its tokens) only when it differs.
    pub async fn ensure_database_user(&self, scope: &str, password: &str) -> Result<EtcdAccess> {
        let name = database_user(scope);
        let user = json!({ "name": name, "password": password });
        if let Err(e) = self.call("/v3/auth/user/add", &user).await {
            if !refused_with(&e, "user name already exists") {
                return Err(e);
            }
            match self.call("/v3/auth/authenticate", &user).await {
                Ok(_) => {}
                Err(e) if refused_with(&e, "authentication failed") => {
                    self.call("/v3/auth/user/changepw", &user).await?;
                }
                Err(e) => return Err(e),
            }
        }
        done_before(self.call("/v3/auth/role/add", &json!({ "name": name })).await, "role name already exists")?;
        let prefix = scope_prefix(scope);
        let perm = json!({ "permType": "READWRITE", "key": B64.encode(&prefix), "range_end": B64.encode(prefix_end(&prefix)) });
        self.call("/v3/auth/role/grant", &json!({ "name": name, "perm": perm })).await?;
        self.call("/v3/auth/user/grant", &json!({ "user": name, "role": name })).await?;
        Ok(database_access(self.access(), scope, password))
    }

    /// Deletes the database's keys, then its user and role; what is gone already is fine.
    /// Returns how many keys were left.
    pub async fn remove_database_user(&self, scope: &str) -> Result<u64> {
        let deleted = self.delete_prefix(&scope_prefix(scope)).await?;
        let name = database_user(scope);
        done_before(self.call("/v3/auth/user/delete", &json!({ "name": name })).await, "user name not found")?;
        done_before(self.call("/v3/auth/role/delete", &json!({ "role": name })).await, "role name not found")?;
        Ok(deleted)
    }

    /// Whether etcd has a user of that name.
    pub async fn user_exists(&self, name: &str) -> Result<bool> {
        match self.call("/v3/auth/user/get", &json!({ "name": name })).await {
            Ok(_) => Ok(true),
            Err(e) if refused_with(&e, "user name not found") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether etcd has a role of that name.
    pub async fn role_exists(&self, name: &str) -> Result<bool> {
        match self.call("/v3/auth/role/get", &json!({ "role": name })).await {
            Ok(_) => Ok(true),
            Err(e) if refused_with(&e, "role name not found") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_user_keeps_the_platform_endpoints_and_ca() {
        let platform = EtcdAccess {
            endpoints: vec!["127.0.0.1:2379".into()],
            protocol: "https".into(),
            ca_pem: Some("CA".into()),
            username: Some(ROOT.into()),
            password: Some("root secret".into()),
        };
        let db = database_access(&platform, "abc", "pw");
        assert_eq!((db.username.as_deref(), db.password.as_deref()), (Some("db-abc"), Some("pw")));
        assert_eq!((db.endpoints, db.protocol, db.ca_pem), (platform.endpoints, platform.protocol, platform.ca_pem));
    }
}
