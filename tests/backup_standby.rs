//! A dump on a hot standby is not cancelled by recovery conflicts: a streaming standby (cloned
//! with `pg_basebackup`, `hot_standby_feedback = on`, `max_standby_streaming_delay = -1`) is
//! dumped while the leader deletes half of the dumped table, VACUUMs it (removing the rows the
//! dump's snapshot still sees and truncating the table, whose exclusive lock is replayed on the
//! standby) and keeps writing; the dump completes with the counts of its snapshot, and a restore
//! verifies. A standby without those settings is refused before anything is uploaded.
//! (It was ignored after running past 7 minutes twice: not the dump, but `pg_basebackup` waiting
//! for a spread checkpoint, about 4.5 minutes per standby; it clones with a fast one now.)

use crate::backup::server;
use anyhow::{Context, Result};
use pgplane_agent::pgdump::{self, PgTarget};
use pgplane_localpg::{free_port, RunAs, Supervised};
use pgplane_storage::BackupStore;
use pgplane_tests::data_plane::TempDir;
use std::time::{Duration, Instant};

/// A standby server, stopped (by its pid) when dropped.
struct Standby(Supervised);

impl Drop for Standby {
    fn drop(&mut self) {
        self.0.stop(Duration::from_secs(30));
    }
}

/// A standby of `primary` in `dir`, started with `settings`.
async fn standby(primary: &PgTarget, dir: &std::path::Path, settings: &[&str]) -> Result<(Standby, PgTarget)> {
    let runas = RunAs::for_postgres()?;
    std::fs::create_dir_all(dir)?;
    runas.chown(dir)?;
    let data = dir.join("data");
    let mut clone = std::process::Command::new(primary.bin_dir.join("pg_basebackup"));
    clone
        .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", &primary.user, "-X", "stream", "-R"])
        // Without it pg_basebackup waits for a spread checkpoint: up to 4.5 minutes idle (the
        // hang this test was ignored for).
        .args(["--checkpoint=fast", "-D"])
        .arg(&data)
        .env("PGPASSWORD", primary.password.as_deref().unwrap_or_default());
    runas.apply(&mut clone);
    let out = tokio::process::Command::from(clone).output().await?;
    anyhow::ensure!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("standby.log"))?;
    runas.chown(&dir.join("standby.log"))?;
    let mut cmd = std::process::Command::new(primary.bin_dir.join("postgres"));
    cmd.arg("-D").arg(&data).args([
        "-p",
        &port.to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
    ]);
    for s in settings {
        cmd.args(["-c", s]);
    }
    cmd.stdout(log.try_clone()?).stderr(log);
    runas.apply(&mut cmd);
    let server = Standby(Supervised::spawn(cmd, SIGINT).context("starting the standby")?);
    let target = PgTarget { port, ..primary.clone() };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = target.sql("postgres", "SELECT pg_is_in_recovery();").await {
            if r == "t" {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the standby did not accept connections: {}",
            std::fs::read_to_string(dir.join("standby.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((server, target))
}

/// PostgreSQL's fast shutdown.
const SIGINT: i32 = 2;

#[tokio::test]
async fn a_dump_on_a_standby_survives_vacuum_and_writes_on_the_leader() -> Result<()> {
    let folder = TempDir::new("backup-standby");
    let store = BackupStore::local(folder.0.join("store"))?;
    let (_pg, primary) = server().await?;
    primary.sql("postgres", "CREATE DATABASE shop;").await?;
    primary
        .sql("shop", "CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 400000) g; CREATE TABLE log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());")
        .await?;
    eprintln!("standby test: cloning the standby");
    let (_standby, replica) = standby(
        &primary,
        &folder.0.join("standby"),
        &["max_connections=300", "hot_standby_feedback=on", "max_standby_streaming_delay=-1"],
    )
    .await?;
    // The standby has the table before the dump starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.sql("shop", "SELECT count(*) FROM noise;").await.ok().as_deref() != Some("400000") {
        anyhow::ensure!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let key = "databases/s/backups/standby.dump";
    let dump = {
        let (replica, store) = (replica.clone(), store.clone());
        tokio::spawn(async move { pgdump::dump(&replica, "shop", &store, key).await })
    };
    // Once the dump is streaming: delete the tail, VACUUM (truncating the table), write on.
    let root = folder.0.join("store");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !walk_has_staging(&root) && !dump.is_finished() {
        anyhow::ensure!(Instant::now() < deadline, "the dump never started streaming");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(!dump.is_finished(), "the dump ended before the leader's VACUUM: make the table larger");
    eprintln!("standby test: the leader deletes and vacuums while the dump streams");
    primary.sql("shop", "DELETE FROM noise WHERE g > 200000; VACUUM noise; INSERT INTO log DEFAULT VALUES;").await?;
    let mut writes = 0;
    while !dump.is_finished() {
        primary.sql("shop", "INSERT INTO log DEFAULT VALUES; VACUUM log;").await?;
        writes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = dump.await??;
    assert!(report.from_standby);
    assert_eq!(report.row_counts.tables["public.noise"], 400_000, "the dump's snapshot is from before the delete");
    assert!(writes > 0 || report.row_counts.tables["public.log"] == 0);
    let verification = pgdump::verify(&primary.bin_dir, &store, key, Some(&report.sha256), &report.row_counts).await?;
    assert!(verification.ok, "{:?}", verification.problems);
    // The standby applied the leader's changes after the dump released its snapshot.
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.sql("shop", "SELECT count(*) FROM noise;").await? != "200000" {
        anyhow::ensure!(Instant::now() < deadline, "the standby did not replay the delete");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A standby that would cancel the dump is refused; nothing is uploaded.
    let (_loose, loose) =
        standby(&primary, &folder.0.join("loose"), &["max_connections=300", "hot_standby_feedback=off"]).await?;
    let err = pgdump::dump(&loose, "shop", &store, "databases/s/backups/refused.dump").await.unwrap_err();
    assert!(format!("{err:#}").contains("recovery conflicts"), "{err:#}");
    assert_eq!(store.size("databases/s/backups/refused.dump").await?, None);
    Ok(())
}

fn walk_has_staging(dir: &std::path::Path) -> bool {
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().contains('#') {
                return true;
            }
        }
    }
    false
}
