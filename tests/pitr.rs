//! Point-in-time recovery with real PostgreSQL 15 and real pgBackRest, through the agent's
//! `pgbackrest` driver (no API yet): a server archives into its stanza (a local repository, and
//! the S3 test server over TLS), rows are committed at known times, and restores to a time, an
//! LSN and a named restore point hold exactly the rows committed before the target, including a
//! target equal to a full backup's end and targets between two full backups. An in-place
//! restore (a new timeline) can be undone by another restore back onto the old timeline, and
//! the new timeline stays restorable too. A fork restored from a stanza archives into its own
//! repository, never its source's. Patroni members of a PITR plan archive from whichever leads:
//! a restore to a time after a switchover has the rows from both sides of it.

use crate::backup_s3::start_s3;
use crate::node::{another_member, member_spec, secret, start_etcd, StopOnDrop};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use pgplane_agent::patroni::{MemberPaths, SUPERUSER};
use pgplane_agent::pgbackrest::{self, BackupKind, PgServer, RestorePlan, Stanza};
use pgplane_agent::pgdump::PgTarget;
use pgplane_agent::Node;
use pgplane_core::agent::PatroniApi;
use pgplane_core::ids::DatabaseId;
use pgplane_core::pitr::{self, Lsn, PitrBackup, PitrSpec, RestoreTarget};
use pgplane_localpg::{find_bindir, free_port, RunAs, Supervised};
use pgplane_pki::DatabaseCa;
use pgplane_storage::{BackupStore, StorageConfig};
use pgplane_tests::data_plane::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(Path::new)).expect("PostgreSQL binaries")
}

/// A PostgreSQL server in `dir` run as the server's OS user, reached on its own socket folder
/// (peer authentication, as pgBackRest reaches a member). Stopped (fast) when dropped.
struct Member {
    dir: PathBuf,
    port: u16,
    runas: RunAs,
    server: Option<Supervised>,
}

impl Member {
    /// A fresh cluster (initdb) in `dir`.
    fn init(dir: &Path) -> Result<Member> {
        let member = Member::at(dir)?;
        let out = Command::new(bin_dir().join("initdb"))
            .arg("-D")
            .arg(member.data())
            .args(["-U", member.runas.name(), "--auth-local=peer", "--auth-host=reject", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--data-checksums"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .uid_gid(&member.runas)
            .output()?;
        anyhow::ensure!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        Ok(member)
    }

    /// A member whose data folder is made by someone else (a restore).
    fn at(dir: &Path) -> Result<Member> {
        let runas = RunAs::for_postgres()?;
        for d in [dir.to_path_buf(), dir.join("socket")] {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
            runas.chown(&d)?;
        }
        Ok(Member { dir: dir.to_path_buf(), port: free_port()?, runas, server: None })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_server(&self) -> PgServer {
        PgServer {
            data: self.data(),
            socket_dir: self.dir.join("socket"),
            port: self.port,
            user: self.runas.name().to_string(),
        }
    }

    fn target(&self) -> PgTarget {
        PgTarget {
            bin_dir: bin_dir(),
            host: self.dir.join("socket").display().to_string(),
            port: self.port,
            user: self.runas.name().to_string(),
            password: None,
            runas: Some(self.runas.clone()),
        }
    }

    /// Starts the server with `parameters`, and waits until it accepts queries and is out of
    /// recovery (a restored copy replays WAL to its target and promotes itself).
    async fn start(&mut self, parameters: &[(&str, String)]) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("postgres.log"))?;
        let mut cmd = Command::new(bin_dir().join("postgres"));
        cmd.arg("-D").arg(self.data()).args(["-p", &self.port.to_string()]);
        cmd.args(["-c", "listen_addresses=", "-c"])
            .arg(format!("unix_socket_directories={}", self.dir.join("socket").display()));
        cmd.args(["-c", "fsync=off", "-c", "wal_retrieve_retry_interval=200ms", "-c", "shared_buffers=32MB"]);
        for (name, value) in parameters {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.current_dir(&self.dir).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).uid_gid(&self.runas);
        self.server = Some(Supervised::spawn(cmd, libc::SIGINT)?);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.server.as_ref().and_then(Supervised::exit_status) {
                bail!("postgres exited ({status}): {}", log_tail(&self.dir.join("postgres.log")));
            }
            if let Ok(out) = self.target().sql("postgres", "SELECT pg_is_in_recovery();").await {
                if out == "f" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("postgres did not promote within 120 s: {}", log_tail(&self.dir.join("postgres.log")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_secs(60));
        }
    }

    async fn sql(&self, sql: &str) -> Result<String> {
        self.target().sql("postgres", sql).await
    }

    /// Commits one row and returns the server's time just after the commit.
    async fn commit(&self, note: &str) -> Result<DateTime<Utc>> {
        self.sql(&format!("INSERT INTO t (note) VALUES ('{note}');")).await?;
        let now = self.sql("SELECT extract(epoch FROM clock_timestamp())::text;").await?;
        let micros = (now.parse::<f64>()? * 1e6) as i64;
        DateTime::from_timestamp_micros(micros).context("a time")
    }

    async fn rows(&self) -> Result<String> {
        self.sql("SELECT coalesce(string_agg(note, ',' ORDER BY id), '') FROM t;").await
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

trait RunAsExt {
    fn uid_gid(&mut self, runas: &RunAs) -> &mut Self;
}

impl RunAsExt for Command {
    fn uid_gid(&mut self, runas: &RunAs) -> &mut Self {
        runas.apply(self);
        self
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The first whole second after `t`, once the clock has passed it: commits before `t` are before
/// it, the next commit is after it.
async fn second_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let second = t.trunc_subsecs(0) + ChronoDuration::seconds(1);
    while Utc::now() < second + ChronoDuration::milliseconds(150) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second
}

/// The plan a workflow would make: the timeline to follow and the backup to start from.
async fn plan(stanza: &Stanza, target: RestoreTarget, timeline: u32) -> Result<RestorePlan> {
    let info = stanza.info().await?;
    let history = stanza.timeline_history(info.archive_id.as_deref().context("an archive id")?, timeline).await?;
    let set =
        pitr::choose_backup(&info.backups, &target, timeline, &history).context("no backup reaches the target")?;
    Ok(RestorePlan { target, timeline: Some(timeline), set: Some(set.label.clone()) })
}

/// Restores `plan` of `stanza` into a fresh folder, starts it without archiving (a throw-away
/// copy must not push a timeline into the stanza), and returns its rows.
async fn restored_rows(stanza: &Stanza, plan: &RestorePlan, dir: &Path) -> Result<String> {
    let mut copy = Member::at(dir)?;
    let rows = async {
        stanza.restore(&copy.data(), plan, false).await?;
        copy.start(&[("archive_mode", "off".into())]).await?;
        copy.rows().await
    }
    .await;
    copy.stop();
    std::fs::remove_dir_all(dir)?;
    rows
}

/// A member archiving into the stanza of `database` in `storage`, with a table `t`.
async fn archiving_member(dir: &Path, database: DatabaseId, storage: &StorageConfig) -> Result<(Member, Stanza)> {
    let mut member = Member::init(&dir.join("a"))?;
    let stanza =
        Stanza::configure(&dir.join("a/pgbackrest"), database, storage, &member.pg_server(), 7, &member.runas)?;
    member.start(&stanza.archive_parameters()).await?;
    stanza.create().await?;
    stanza.create().await.context("stanza-create again changes nothing")?;
    member.sql("CREATE TABLE t (id bigserial PRIMARY KEY, note text NOT NULL);").await?;
    Ok((member, stanza))
}

fn full(backup: &PitrBackup) -> Result<()> {
    anyhow::ensure!(backup.kind == "full" && backup.size > 0 && backup.start_lsn <= backup.stop_lsn, "{backup:?}");
    Ok(())
}

#[tokio::test]
async fn restores_reach_times_lsns_and_restore_points_and_an_in_place_restore_can_be_undone() -> Result<()> {
    let folder = TempDir::new("pitr-local");
    let storage = StorageConfig::Local { root: folder.0.join("repo") };
    let database = DatabaseId::new();
    let (mut a, stanza) = archiving_member(&folder.0, database, &storage).await?;
    assert!(folder.0.join("repo/pitr").join(database.to_string()).join("archive").is_dir());

    a.commit("base").await?;
    let b1 = stanza.backup(BackupKind::Full).await?;
    full(&b1)?;
    // Rows at known times, an LSN and a named restore point between them.
    let after_a = a.commit("a").await?;
    let time_ab = second_after(after_a).await;
    a.commit("b").await?;
    let lsn_bc: Lsn = a.sql("SELECT pg_current_wal_lsn();").await?.parse().map_err(anyhow::Error::msg)?;
    a.commit("c").await?;
    let point = pgbackrest::create_restore_point(&a.target(), "after-c").await?;
    a.commit("d").await?;
    // A second full backup after them, then a row a second after its recorded end.
    let b2 = stanza.backup(BackupKind::Full).await?;
    full(&b2)?;
    second_after(b2.stopped_at + ChronoDuration::seconds(1)).await;
    a.commit("e").await?;
    stanza.seal(&a.target()).await?;

    let info = stanza.info().await?;
    assert_eq!(info.status_code, 0, "{}", info.status_message);
    assert_eq!(info.backups.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(), [&b1.label, &b2.label]);
    let health = pgbackrest::archive_health(&a.target()).await?;
    assert!(!health.failing() && health.last_archived_wal.is_some(), "{health:?}");
    let window = pitr::PitrWindow::new(info.backups.clone(), health, 7, Utc::now());
    assert_eq!(window.earliest, Some(b1.stopped_at + ChronoDuration::seconds(1)));
    assert!(window.admits(time_ab).is_ok());

    let scratch = folder.0.join("copy");
    // A time between two commits (and between the two full backups): exactly the rows before.
    let p = plan(&stanza, RestoreTarget::Time { time: time_ab }, 1).await?;
    assert_eq!(p.set.as_deref(), Some(b1.label.as_str()));
    assert_eq!(restored_rows(&stanza, &p, &scratch).await?, "base,a");
    // An LSN between two commits.
    let p = plan(&stanza, RestoreTarget::Lsn { lsn: lsn_bc }, 1).await?;
    assert_eq!(restored_rows(&stanza, &p, &scratch).await?, "base,a,b");
    // A named restore point (its LSN chose the backup).
    let p = plan(&stanza, RestoreTarget::Name { name: "after-c".into(), lsn: point }, 1).await?;
    assert_eq!(restored_rows(&stanza, &p, &scratch).await?, "base,a,b,c");
    // A time equal to the second full backup's recorded end: the first backup plus WAL reach it.
    let p = plan(&stanza, RestoreTarget::Time { time: b2.stopped_at }, 1).await?;
    assert_eq!(p.set.as_deref(), Some(b1.label.as_str()));
    assert_eq!(restored_rows(&stanza, &p, &scratch).await?, "base,a,b,c,d");
    // The LSN at which the second backup became consistent: that backup itself.
    let p = plan(&stanza, RestoreTarget::Lsn { lsn: b2.stop_lsn }, 1).await?;
    assert_eq!(p.set.as_deref(), Some(b2.label.as_str()));
    assert_eq!(restored_rows(&stanza, &p, &scratch).await?, "base,a,b,c,d");

    // In place, to the time between a and b, same stanza: it comes back on timeline 2 and
    // archives there.
    let before_restore = second_after(Utc::now()).await;
    // A commit after the target, archived: a time target stops at the first commit after it.
    stanza.seal(&a.target()).await?;
    // Staged beside the running member, which stops only for the swap; the replaced folder
    // goes once the restored server has promoted.
    let p = plan(&stanza, RestoreTarget::Time { time: time_ab }, 1).await?;
    stanza.restore_staged(&a.data(), &p).await?;
    a.stop();
    pgbackrest::swap_in(&a.data())?;
    a.start(&stanza.archive_parameters()).await?;
    pgbackrest::drop_replaced(&a.data())?;
    assert_eq!(a.rows().await?, "base,a");
    assert_eq!(pgbackrest::current_timeline(&a.target()).await?, 2);
    let after_f = a.commit("f").await?;
    let time_f = second_after(after_f).await;
    stanza.seal(&a.target()).await?;

    // What pgBackRest and PostgreSQL do by themselves (the newest backup that ended before the
    // target, the newest timeline) cannot go back: that backup (b2) is of timeline 1 past the
    // point where timeline 2 left it, and timeline 2 never saw b..e.
    let naive = RestorePlan { target: RestoreTarget::Time { time: before_restore }, timeline: None, set: None };
    let refused = restored_rows(&stanza, &naive, &scratch).await;
    let refused = format!("{:#}", refused.expect_err("a restore along the newest timeline"));
    assert!(refused.contains("is not a child of this server's history"), "{refused}");

    // The wrong second: back to just before the first restore, on timeline 1 (this time into
    // the member's own folder, stopped, with --delta).
    a.stop();
    let p = plan(&stanza, RestoreTarget::Time { time: before_restore }, 1).await?;
    assert_eq!(p.set.as_deref(), Some(b2.label.as_str()));
    stanza.restore(&a.data(), &p, true).await?;
    a.start(&stanza.archive_parameters()).await?;
    assert_eq!(a.rows().await?, "base,a,b,c,d,e", "the rows written before the first restore are back");
    assert_eq!(pgbackrest::current_timeline(&a.target()).await?, 3);
    stanza.seal(&a.target()).await?;

    // Timeline 2 stays restorable: its history leads through timeline 1 up to the branch, and a
    // backup of timeline 1 taken after the branch point (b2) cannot start it.
    let p = plan(&stanza, RestoreTarget::Time { time: time_f }, 2).await?;
    assert_eq!(p.set.as_deref(), Some(b1.label.as_str()));
    assert_eq!(restored_rows(&stanza, &p, &scratch).await?, "base,a,f");

    // Outside what backups reach: no plan.
    let early = RestoreTarget::Time { time: b1.stopped_at };
    assert!(plan(&stanza, early, 1).await.is_err());
    stanza.expire().await?;
    Ok(())
}

#[tokio::test]
async fn s3_over_tls_archives_restores_and_a_fork_keeps_its_own_repository() -> Result<()> {
    let folder = TempDir::new("pitr-s3");
    let s3 = start_s3(&folder.0).await?;
    let made = s3.client()?.put(format!("https://127.0.0.1:{}/pitr", s3.port)).send().await?;
    anyhow::ensure!(made.status().is_success(), "creating the bucket: {}", made.status());
    let credentials = folder.0.join("s3-credentials.json");
    std::fs::write(&credentials, r#"{"access_key_id":"testing","secret_access_key":"testing-secret"}"#)?;
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(folder.0.join("ca.pem"), &s3.ca_pem)?;
    // pgBackRest 2.45 ignores IP addresses in certificates: the store is reached by name.
    let storage: StorageConfig = serde_json::from_value(serde_json::json!({
        "kind": "s3", "endpoint": format!("https://localhost:{}", s3.port), "bucket": "pitr",
        "credentials_file": credentials, "ca_file": folder.0.join("ca.pem"),
    }))?;
    let store = BackupStore::open(&storage)?;

    let source = DatabaseId::new();
    let (a, stanza) = archiving_member(&folder.0, source, &storage).await?;
    a.commit("base").await?;
    full(&stanza.backup(BackupKind::Full).await?)?;
    let after_a = a.commit("a").await?;
    let time_ab = second_after(after_a).await;
    a.commit("b").await?;
    stanza.seal(&a.target()).await?;
    let p = plan(&stanza, RestoreTarget::Time { time: time_ab }, 1).await?;
    assert_eq!(restored_rows(&stanza, &p, &folder.0.join("copy")).await?, "base,a");

    // A fork: restored from the source's stanza, then archiving into a stanza of its own.
    let fork_id = DatabaseId::new();
    let mut fork = Member::at(&folder.0.join("fork"))?;
    let fork_stanza =
        Stanza::configure(&folder.0.join("fork/pgbackrest"), fork_id, &storage, &fork.pg_server(), 7, &fork.runas)?;
    stanza.restore(&fork.data(), &p, false).await?;
    fork.start(&fork_stanza.archive_parameters()).await?;
    fork_stanza.create().await?;
    fork.commit("forked").await?;
    fork_stanza.seal(&fork.target()).await?;
    assert_eq!(fork.rows().await?, "base,a,forked");
    full(&fork_stanza.backup(BackupKind::Full).await?)?;

    let source_objects = store.list(&format!("pitr/{source}")).await?;
    let fork_objects = store.list(&format!("pitr/{fork_id}")).await?;
    assert!(source_objects.iter().any(|k| k.contains("/archive/") && k.contains("00000001")), "{source_objects:?}");
    assert!(
        !source_objects.iter().any(|k| k.contains("/00000002")),
        "the fork's timeline went into the source's repository: {source_objects:?}"
    );
    assert!(fork_objects.iter().any(|k| k.contains("00000002.history")), "{fork_objects:?}");
    assert!(fork_objects.iter().any(|k| k.contains("/backup/")), "{fork_objects:?}");
    Ok(())
}

/// A Patroni member's socket, as the OS superuser.
fn member_target(node: &Node, database: DatabaseId, member: &str, port: u16) -> Result<PgTarget> {
    let paths = MemberPaths::new(node.member_dir(database, member));
    Ok(PgTarget {
        bin_dir: bin_dir(),
        host: paths.socket_dir.display().to_string(),
        port,
        user: SUPERUSER.into(),
        password: None,
        runas: Some(RunAs::for_postgres()?),
    })
}

/// The stanza handle of a member the node configured (configuring again changes nothing).
fn member_stanza(
    node: &Node,
    database: DatabaseId,
    member: &str,
    port: u16,
    storage: &StorageConfig,
) -> Result<Stanza> {
    let paths = MemberPaths::new(node.member_dir(database, member));
    let server =
        PgServer { data: paths.data.clone(), socket_dir: paths.socket_dir.clone(), port, user: SUPERUSER.into() };
    Stanza::configure(&paths.pgbackrest, database, storage, &server, 7, &RunAs::for_postgres()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_members_archive_from_whichever_leads_across_a_switchover() -> Result<()> {
    let folder = TempDir::new("pitr-ha");
    let etcd = start_etcd(folder.0.join("etcd")).await?;
    let storage = StorageConfig::Local { root: folder.0.join("repo") };
    let node = Node::new(folder.0.join("node"))?.with_backup_storage(storage.clone());
    let _stop = StopOnDrop(&node);
    let db = DatabaseId::new();
    let ca = DatabaseCa::generate(&db.to_string())?;
    let access = pgplane_etcd::Client::new(&etcd.admin())?.ensure_database_user(&db.to_string(), &secret()).await?;
    let mut first = member_spec(db, 1, access, &ca)?;
    first.pitr = Some(PitrSpec { stanza: pitr::stanza_name(db), window_days: 7 });
    let second = another_member(&first, "m2", &ca)?;
    node.ensure_member(&first).await?;
    node.ensure_member(&second).await?;
    let (m1, m2) = (member_target(&node, db, "m1", first.pg_port)?, member_target(&node, db, "m2", second.pg_port)?);
    let (stanza1, stanza2) = (
        member_stanza(&node, db, "m1", first.pg_port, &storage)?,
        member_stanza(&node, db, "m2", second.pg_port, &storage)?,
    );
    assert_eq!(m1.sql("postgres", "SELECT pg_is_in_recovery();").await?, "f");
    // The workflow's first step on the leader: the stanza, then a full backup.
    stanza1.create().await?;
    m1.sql("postgres", "CREATE TABLE t (id bigserial PRIMARY KEY, note text NOT NULL);").await?;
    m1.sql("postgres", "INSERT INTO t (note) VALUES ('before');").await?;
    full(&stanza1.backup(BackupKind::Full).await?)?;
    // A segment the new leader holds in pg_wal that the repository has already: pushed again
    // (as after a failover, for segments the lost leader may not have archived), accepted.
    let wal = MemberPaths::new(node.member_dir(db, "m2")).data.join("pg_wal");
    let archived = stanza1.info().await?.archive_max.context("an archived segment")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wal.join(&archived).exists() {
        anyhow::ensure!(Instant::now() < deadline, "the replica has no {archived}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stanza2.push_segment(&wal.join(&archived)).await?;

    let api = PatroniApi {
        host: "127.0.0.1".into(),
        patroni_port: first.patroni_port,
        ca_pem: ca.cert_pem().into(),
        restapi_password: first.secrets.restapi_password.clone(),
    };
    pgplane_agent::control::switchover(&api, Some("m2")).await?;
    assert_eq!(m2.sql("postgres", "SELECT pg_is_in_recovery();").await?, "f");
    m2.sql("postgres", "INSERT INTO t (note) VALUES ('after');").await?;
    let after = Utc::now();
    let time = second_after(after).await;
    // The new leader archives (its timeline's history and segments) into the same stanza.
    stanza2.seal(&m2).await?;
    let timeline = pgbackrest::current_timeline(&m2).await?;
    assert_eq!(timeline, 2);
    let health = pgbackrest::archive_health(&m2).await?;
    assert!(
        !health.failing() && health.last_archived_wal.as_deref().is_some_and(|w| w.starts_with("00000002")),
        "{health:?}"
    );

    let p = plan(&stanza2, RestoreTarget::Time { time }, timeline).await?;
    assert_eq!(restored_rows(&stanza2, &p, &folder.0.join("copy")).await?, "before,after");
    Ok(())
}
