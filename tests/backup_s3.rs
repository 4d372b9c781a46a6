//! Backup storage on a real S3-compatible server over TLS: PyPI's moto served by gunicorn
//! (installed by `PGPLANE_WITH_S3_TEST=1 scripts/install-deps`), started here on 127.0.0.1 with
//! a certificate of a CA made for the test, which the store trusts through its `ca_file`.
//! Streaming multipart uploads, downloads, signed links without credentials, failed uploads
//! that leave nothing, and a database dumped into S3 and restored from it.

use crate::backup::{digest, make_tenant_database, server};
use anyhow::{Context, Result};
use pgplane_agent::pgdump;
use pgplane_localpg::free_port;
use pgplane_pki::DatabaseCa;
use pgplane_storage::{BackupStore, StorageConfig, PART_SIZE};
use pgplane_tests::data_plane::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The moto S3 server, stopped (by its pid) when dropped (also used by `pitr`).
pub(crate) struct S3Server {
    child: std::process::Child,
    pub(crate) port: u16,
    pub(crate) ca_pem: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv() -> PathBuf {
    std::env::var_os("PGPLANE_S3_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| "/opt/pgplane/s3test".into())
}

pub(crate) async fn start_s3(dir: &Path) -> Result<S3Server> {
    let gunicorn = venv().join("bin/gunicorn");
    anyhow::ensure!(
        gunicorn.exists(),
        "{} is missing: install the S3 test server with PGPLANE_WITH_S3_TEST=1 scripts/install-deps",
        gunicorn.display()
    );
    let ca = DatabaseCa::generate("s3 test")?;
    let cert = ca.issue_server(&["127.0.0.1", "localhost"])?;
    std::fs::write(dir.join("s3.crt"), &cert.cert_pem)?;
    std::fs::write(dir.join("s3.key"), &cert.key_pem)?;
    std::fs::write(
        dir.join("moto_app.py"),
        "from moto.moto_server.werkzeug_app import create_backend_app\napp = create_backend_app('s3')\n",
    )?;
    let port = free_port()?;
    let child = std::process::Command::new(&gunicorn)
        .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "1", "--threads", "8", "--log-level", "critical"])
        .args(["--certfile", "s3.crt", "--keyfile", "s3.key", "--chdir"])
        .arg(dir)
        .arg("moto_app:app")
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting gunicorn")?;
    let server = S3Server { child, port, ca_pem: ca.cert_pem().to_string() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the S3 server did not listen within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

impl S3Server {
    pub(crate) fn client(&self) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
            .build()?)
    }

    /// Makes a bucket (moto checks no signature) and a store configured for it as an agent
    /// would be: a configuration file naming a credentials file (0600) and the CA.
    async fn store(&self, dir: &Path, bucket: &str) -> Result<BackupStore> {
        let url = format!("https://127.0.0.1:{}/{bucket}", self.port);
        let made = self.client()?.put(&url).send().await?;
        anyhow::ensure!(made.status().is_success(), "creating the bucket: {}", made.status());
        let credentials = dir.join("s3-credentials.json");
        std::fs::write(&credentials, r#"{"access_key_id":"testing","secret_access_key":"testing-secret"}"#)?;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        let config = serde_json::json!({
            "kind": "s3", "endpoint": format!("https://127.0.0.1:{}", self.port), "bucket": bucket,
            "credentials_file": credentials, "ca_file": dir.join("ca.pem"),
        });
        std::fs::write(dir.join("storage.json"), config.to_string())?;
        BackupStore::open(&StorageConfig::load(&dir.join("storage.json"))?)
    }
}

#[tokio::test]
async fn s3_over_tls_streams_signs_and_publishes_only_whole_objects() -> Result<()> {
    let folder = TempDir::new("backup-s3");
    let s3 = start_s3(&folder.0).await?;
    let store = s3.store(&folder.0, "backups").await?;

    // Multipart (more than two parts), streamed.
    let data: Vec<u8> = (0..(PART_SIZE * 2 + 777)).map(|i| (i * 7 % 253) as u8).collect();
    let up = store.upload("databases/a/backups/one.dump", &data[..]).await?;
    assert_eq!(up.size, data.len() as u64);
    let mut back = Vec::new();
    assert_eq!(store.download("databases/a/backups/one.dump", &mut back).await?, up);
    assert!(back == data, "the object comes back as it went");
    assert_eq!(store.list("databases/a").await?, vec!["databases/a/backups/one.dump".to_string()]);

    // A byte range across a part boundary, as the API's download with `Range` reads it.
    let range = (PART_SIZE as u64 - 10)..(PART_SIZE as u64 + 20);
    let part = store.read("databases/a/backups/one.dump", Some(range.clone())).await?.context("the object")?;
    assert_eq!((part.size, part.range.clone()), (data.len() as u64, range.clone()));
    let chunks: Vec<_> =
        futures::StreamExt::collect::<Vec<_>>(part.stream).await.into_iter().collect::<Result<_, _>>()?;
    assert!(chunks.concat() == data[range.start as usize..range.end as usize], "the range comes back as stored");
    assert!(store.read("databases/a/backups/none.dump", None).await?.is_none());

    // A signed link works without credentials, and only for its object.
    let link = store.signed_url("databases/a/backups/one.dump", Duration::from_secs(300)).await?.context("a link")?;
    let got = s3.client()?.get(&link).send().await?;
    assert!(got.status().is_success(), "{}", got.status());
    assert_eq!(got.bytes().await?.len(), data.len());
    let other = link.replace("one.dump", "two.dump");
    assert!(!s3.client()?.get(&other).send().await?.status().is_success());

    // A producer that fails after the data ended: nothing is published.
    let refused =
        store.upload_checked("databases/a/backups/bad.dump", &data[..], async { anyhow::bail!("pg_dump failed") });
    assert!(refused.await.is_err());
    assert_eq!(store.size("databases/a/backups/bad.dump").await?, None);

    store.delete("databases/a/backups/one.dump").await?;
    assert!(store.list("databases").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_database_dumped_into_s3_restores_identically() -> Result<()> {
    let folder = TempDir::new("backup-s3-db");
    let s3 = start_s3(&folder.0).await?;
    let store = s3.store(&folder.0, "dumps").await?;
    let (_pg, target) = server().await?;
    make_tenant_database(&target, "shop").await?;
    let before = digest(&target, "shop").await?;
    let key = "databases/d2/backups/b1.dump";
    let report = pgdump::dump(&target, "shop", &store, key).await?;
    assert_eq!(store.size(key).await?, Some(report.size));

    let (_pg2, other) = server().await?;
    other.sql("postgres", "CREATE ROLE app LOGIN; CREATE DATABASE fresh OWNER app;").await?;
    pgdump::restore_in_place(&other, &store, key, Some(&report.sha256), "fresh", "app").await?;
    assert_eq!(digest(&other, "fresh").await?, before);
    let verification = pgdump::verify(&target.bin_dir, &store, key, Some(&report.sha256), &report.row_counts).await?;
    assert!(verification.ok, "{:?}", verification.problems);
    Ok(())
}
