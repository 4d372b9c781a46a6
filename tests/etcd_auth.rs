//! The platform's etcd as `LocalEtcd` runs it: https only, auth on, and each database's user
//! confined to its own Patroni prefix (it reads and writes there; etcd refuses it the rest),
//! made and removed idempotently, surviving an etcd restart and a kill -9 (its keeper starts it
//! again).

use anyhow::Result;
use pgplane_agent::LocalEtcd;
use pgplane_core::agent::EtcdAccess;
use pgplane_core::ids::DatabaseId;
use pgplane_etcd::admin::database_user;
use pgplane_etcd::{is_permission_denied, refused_with, scope_prefix, Client, Refused};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(dir: &Path) -> Result<LocalEtcd> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await?
}

fn denied(result: Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Err(e) => assert!(is_permission_denied(&e), "{what}: {e:#}"),
        Ok(v) => panic!("{what} was allowed: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_user_reads_and_writes_its_own_prefix_only() -> Result<()> {
    let tmp = TempDir(std::env::temp_dir().join(format!("pgetcd-{}", uuid::Uuid::new_v4().simple())));
    let etcd = start(&tmp.0).await?;
    for secret in ["root-password", "tls/ca.key", "tls/server.key"] {
        let mode = std::fs::metadata(tmp.0.join(secret))?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "{secret} is mode {mode:o}");
    }
    let root = Client::new(&etcd.admin())?;
    let (a, b) = (DatabaseId::new().to_string(), DatabaseId::new().to_string());
    let a_access = root.ensure_database_user(&a, "password of a").await?;
    assert_eq!(root.ensure_database_user(&a, "password of a").await?, a_access, "a second time changes nothing");
    let b_access = root.ensure_database_user(&b, "password of b").await?;
    assert_eq!((a_access.protocol.as_str(), a_access.username.clone()), ("https", Some(database_user(&a))));
    let (as_a, as_b) = (Client::new(&a_access)?, Client::new(&b_access)?);
    let (a_key, b_key) = (format!("/service/{a}/leader"), format!("/service/{b}/leader"));

    // Its own prefix: read and write.
    as_a.put(&a_key, b"m0").await?;
    assert_eq!(as_a.get(&a_key).await?.as_deref(), Some(&b"m0"[..]));
    assert_eq!(as_a.list(&scope_prefix(&a)).await?.len(), 1);
    as_b.put(&b_key, b"m1").await?;

    // Another database's prefix, the rest of the key space, and administration: refused.
    denied(as_a.get(&b_key).await, "reading b's key as a");
    denied(as_a.list(&scope_prefix(&b)).await, "listing b's prefix as a");
    denied(as_a.put(&b_key, b"stolen").await, "writing b's key as a");
    denied(as_a.delete_prefix(&scope_prefix(&b)).await, "deleting b's keys as a");
    denied(as_a.put("/elsewhere", b"x").await, "writing outside any prefix as a");
    denied(as_a.put(&format!("/service/{a}"), b"x").await, "writing beside its prefix as a");
    let add_user = json!({ "name": "intruder", "password": "x" });
    denied(as_a.call("/v3/auth/user/add", &add_user).await, "adding a user as a");
    assert_eq!(as_b.get(&b_key).await?.as_deref(), Some(&b"m1"[..]), "b's key is untouched");

    // Without a user, with a wrong password, or over plain http: nothing.
    let anonymous = Client::new(&etcd.access())?.get(&a_key).await.expect_err("no user");
    assert!(refused_with(&anonymous, "user name is empty"), "{anonymous:#}");
    let wrong = EtcdAccess { password: Some("guess".into()), ..a_access.clone() };
    let wrong = Client::new(&wrong)?.get(&a_key).await.expect_err("a wrong password");
    assert!(refused_with(&wrong, "authentication failed"), "{wrong:#}");
    let plain = EtcdAccess { protocol: "http".into(), ca_pem: None, ..a_access.clone() };
    let plain = Client::new(&plain)?.get(&a_key).await.expect_err("plain http");
    assert!(plain.downcast_ref::<Refused>().is_none(), "etcd must not answer plain http: {plain:#}");
    let raw = reqwest::Client::new().get(format!("http://{}/health", etcd.endpoint())).send().await;
    assert!(raw.is_err(), "plain http /health answered: {raw:?}");

    // A new password ends the old one (and its tokens).
    let a_new = root.ensure_database_user(&a, "new password of a").await?;
    assert!(refused_with(&as_a.get(&a_key).await.expect_err("old password"), "authentication failed"));
    let as_a = Client::new(&a_new)?;
    assert!(as_a.get(&a_key).await?.is_some());

    // Restarted from its folder: same CA, auth still on, users kept; tokens are renewed.
    drop(etcd);
    let etcd = start(&tmp.0).await?;
    assert_eq!(etcd.access().ca_pem, a_new.ca_pem);
    assert!(as_a.get(&a_key).await?.is_some());
    assert!(root.user_exists(&database_user(&a)).await?);

    // Killed: started again by itself on the same port and data, auth still on.
    let killed = etcd.pid();
    assert!(std::process::Command::new("kill").args(["-9", &killed.to_string()]).status()?.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while etcd.restarts() == 0 {
        assert!(std::time::Instant::now() < deadline, "etcd was not started again");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_ne!(etcd.pid(), killed);
    assert!(as_a.get(&a_key).await?.is_some());
    assert!(refused_with(&Client::new(&etcd.access())?.get(&a_key).await.expect_err("no user"), "user name is empty"));

    // Removed: keys, user and role gone; again is fine; b keeps everything.
    assert_eq!(root.remove_database_user(&a).await?, 1);
    assert_eq!(root.remove_database_user(&a).await?, 0);
    assert!(!root.user_exists(&database_user(&a)).await? && !root.role_exists(&database_user(&a)).await?);
    assert_eq!(root.count(&scope_prefix(&a)).await?, 0);
    assert!(as_a.get(&a_key).await.is_err(), "a removed user still reads");
    assert_eq!(as_b.get(&b_key).await?.as_deref(), Some(&b"m1"[..]));
    drop(etcd);
    Ok(())
}
