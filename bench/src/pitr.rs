//! Point-in-time recovery with pgBackRest: a pgbench database (scale 70 ≈ 1 GB) archiving into a
//! local repository through the agent's `pgbackrest` driver; a full backup through the driver
//! vs bare `pgbackrest backup` on the same data; `--wal-seconds` of pgbench writes; then a
//! restore to a time after them through the driver (files restored, then WAL replayed until the
//! server promoted and answered a first query) vs bare `pgbackrest restore` of the same target.
//! The server runs as the PostgreSQL OS user on its own socket, as a member does. Everything is
//! deleted afterwards.

use anyhow::{bail, Context, Result};
use chrono::{SubsecRound, Utc};
use pgplane_agent::pgbackrest::{BackupKind, PgServer, RestorePlan, Stanza};
use pgplane_agent::pgdump::PgTarget;
use pgplane_core::ids::DatabaseId;
use pgplane_core::pitr::{Lsn, RestoreTarget};
use pgplane_localpg::{find_bindir, free_port, RunAs, Supervised};
use pgplane_storage::StorageConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// pgbench scale (70 ≈ 1 GB).
    #[arg(long, default_value_t = 70)]
    scale: u32,
    /// Seconds of pgbench writes between the backup and the restore target.
    #[arg(long, default_value_t = 60)]
    wal_seconds: u32,
    /// pgbench clients during those writes.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Where the servers and the repository go (deleted afterwards).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

/// A server in `dir`, as the PostgreSQL OS user, on its own socket.
struct Server {
    dir: PathBuf,
    port: u16,
    runas: RunAs,
    bin: PathBuf,
    process: Option<Supervised>,
}

impl Server {
    fn at(dir: &Path, bin: &Path) -> Result<Server> {
        let runas = RunAs::for_postgres()?;
        for d in [dir.to_path_buf(), dir.join("socket")] {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
            runas.chown(&d)?;
        }
        Ok(Server { dir: dir.to_path_buf(), port: free_port()?, runas, bin: bin.to_path_buf(), process: None })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg(&self) -> PgServer {
        PgServer {
            data: self.data(),
            socket_dir: self.dir.join("socket"),
            port: self.port,
            user: self.runas.name().into(),
        }
    }

    fn target(&self) -> PgTarget {
        PgTarget {
            bin_dir: self.bin.clone(),
            host: self.dir.join("socket").display().to_string(),
            port: self.port,
            user: self.runas.name().into(),
            password: None,
            runas: Some(self.runas.clone()),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        self.runas.apply(&mut cmd);
        cmd
    }

    fn initdb(&self) -> Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", self.runas.name(), "--auth-local=peer", "--auth-host=reject", "--no-sync", "--data-checksums"])
            .output()?;
        anyhow::ensure!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Starts the server and waits until it answers out of recovery.
    async fn start(&mut self, parameters: &[(&str, String)]) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("postgres.log"))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data()).args(["-p", &self.port.to_string(), "-c", "listen_addresses="]);
        cmd.arg("-c").arg(format!("unix_socket_directories={}", self.dir.join("socket").display()));
        cmd.args(["-c", "shared_buffers=256MB", "-c", "max_wal_size=4GB", "-c", "wal_retrieve_retry_interval=200ms"]);
        for (name, value) in parameters {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdout(log.try_clone()?).stderr(log);
        self.process = Some(Supervised::spawn(cmd, libc::SIGINT)?);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = self.process.as_ref().and_then(Supervised::exit_status) {
                bail!("postgres exited ({status}); see {}", self.dir.join("postgres.log").display());
            }
            if self.target().sql("postgres", "SELECT pg_is_in_recovery();").await.is_ok_and(|o| o == "f") {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "postgres did not promote within 600 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop(Duration::from_secs(120));
        }
    }

    async fn lsn(&self) -> Result<Lsn> {
        self.target().sql("postgres", "SELECT pg_current_wal_lsn();").await?.parse().map_err(anyhow::Error::msg)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pgbench(server: &Server, args: &[&str]) -> Result<()> {
    let out = server
        .command("pgbench")
        .args(["-h", &server.dir.join("socket").display().to_string(), "-p", &server.port.to_string()])
        .args(["-U", server.runas.name()])
        .args(args)
        .arg("postgres")
        .output()?;
    anyhow::ensure!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Bare pgBackRest with the stanza's own configuration, as the PostgreSQL OS user.
fn bare(stanza: &Stanza, args: &[String]) -> Result<f64> {
    let started = Instant::now();
    let mut cmd = Command::new(&stanza.program);
    cmd.arg(format!("--config={}", stanza.paths.config.display())).arg(format!("--stanza={}", stanza.name));
    cmd.args(args).stdin(Stdio::null());
    stanza.runas.apply(&mut cmd);
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "pgbackrest {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(started.elapsed().as_secs_f64())
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

const MB: f64 = 1024.0 * 1024.0;

pub async fn run(args: Args) -> Result<()> {
    let bin = find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(Path::new))?;
    let root = args.dir.join(format!("pgplane-bench-pitr-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let result = bench(&args, &bin, &root).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn bench(args: &Args, bin: &Path, root: &Path) -> Result<()> {
    let storage = StorageConfig::Local { root: root.join("repo") };
    let mut source = Server::at(&root.join("source"), bin)?;
    source.initdb()?;
    let stanza = Stanza::configure(
        &root.join("source/pgbackrest"),
        DatabaseId::new(),
        &storage,
        &source.pg(),
        7,
        &source.runas,
    )?;
    source.start(&stanza.archive_parameters()).await?;
    stanza.create().await?;

    let t = Instant::now();
    pgbench(&source, &["-i", "-q", "-s", &args.scale.to_string()])?;
    let size = du(&source.data());
    println!(
        "pgbench -i -s {}: {:.1} s, data folder {:.0} MB",
        args.scale,
        t.elapsed().as_secs_f64(),
        size as f64 / MB
    );
    stanza.check().await?;
    // What pgbench -i left dirty is flushed first, so that neither backup pays for it.
    source.target().sql("postgres", "CHECKPOINT;").await?;

    let bare_secs = bare(&stanza, &["backup".into(), "--type=full".into()])?;
    let t = Instant::now();
    let through = stanza.backup(BackupKind::Full).await?;
    let through_secs = t.elapsed().as_secs_f64();
    println!(
        "full backup: through pgplane {through_secs:.1} s ({:.0} MB, {:.0} MB in the repository), bare pgbackrest {bare_secs:.1} s",
        through.size as f64 / MB,
        through.repository_size as f64 / MB
    );

    let before = source.lsn().await?;
    let t = Instant::now();
    pgbench(&source, &["-c", &args.clients.to_string(), "-j", "2", "-T", &args.wal_seconds.to_string(), "-n"])?;
    let wal = source.lsn().await?.0 - before.0;
    stanza.seal(&source.target()).await?;
    println!(
        "pgbench -T {} -c {}: {:.0} MB of WAL, archived ({:.1} s with the seal)",
        args.wal_seconds,
        args.clients,
        wal as f64 / MB,
        t.elapsed().as_secs_f64()
    );
    // A target after every pgbench commit: the seal's marker commit comes after it.
    let time = Utc::now().trunc_subsecs(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stanza.seal(&source.target()).await?;
    let plan = RestorePlan { target: RestoreTarget::Time { time }, timeline: Some(1), set: None };

    // Through the driver: the API's call would start here.
    let mut copy = Server::at(&root.join("copy"), bin)?;
    let t = Instant::now();
    stanza.restore(&copy.data(), &plan, false).await?;
    let files = t.elapsed().as_secs_f64();
    copy.start(&[("archive_mode", "off".into())]).await?;
    let rows = copy.target().sql("postgres", "SELECT count(*) FROM pgbench_history;").await?;
    let total = t.elapsed().as_secs_f64();
    println!(
        "restore through pgplane to {}: files {files:.1} s, WAL replay and promotion {:.1} s, first query after {total:.1} s ({rows} history rows)",
        time.to_rfc3339(),
        total - files
    );
    copy.stop();
    std::fs::remove_dir_all(copy.data())?;

    // Bare: the same restore, the same start; then with asynchronous archive-get (WAL fetched
    // ahead into the spool folder by `process-max` workers while PostgreSQL replays).
    let asynchronous = format!(
        "--recovery-option=restore_command={} --config={} --stanza={} --pg1-path={} --archive-async archive-get %f \"%p\"",
        stanza.program.display(),
        stanza.paths.config.display(),
        stanza.name,
        copy.data().display()
    );
    for (label, extra) in [("bare pgbackrest", None), ("bare pgbackrest, async archive-get", Some(asynchronous))] {
        let t = Instant::now();
        let mut options = vec![
            format!("--pg1-path={}", copy.data().display()),
            "--type=time".into(),
            format!("--target={}", time.format("%Y-%m-%d %H:%M:%S+00")),
            "--target-action=promote".into(),
        ];
        options.extend(extra);
        options.push("restore".into());
        bare(&stanza, &options).context("bare restore")?;
        let files = t.elapsed().as_secs_f64();
        copy.start(&[("archive_mode", "off".into())]).await?;
        let total = t.elapsed().as_secs_f64();
        println!("restore with {label}: files {files:.1} s, first query after {total:.1} s");
        copy.stop();
        std::fs::remove_dir_all(copy.data())?;
    }
    source.stop();
    Ok(())
}
