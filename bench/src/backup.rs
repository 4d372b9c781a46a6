//! Logical backups THROUGH PGPLANE: a whole platform (api, scheduler, one agent, as processes)
//! with backup storage in a local folder or S3 over TLS (moto under gunicorn, as the tests run
//! it); a Starter database loaded with pgbench tables whose `filler` columns hold random hex
//! text (plain pgbench data compresses 56:1 and start-up costs dominate); then
//! - bare `pg_dump -Fc` of the same database to a file, on the member's own socket as its agent
//!   dumps (twice, the second kept: every run after the first reads a warm cache),
//! - `POST …/backups` → the backup's operation `done` (API, scheduler, agent, upload, records),
//! - the download of that backup through the API (streamed to /dev/null),
//! - bare `pg_restore` of the file into a new database vs `POST …/restore` in place → `done`.
//!
//! The agent's resident memory is sampled every 50 ms while it streams the dump and the restore.

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::platform::Platform;
use crate::procs::memory_kb;

#[derive(clap::Args)]
pub struct Args {
    /// pgbench scale (70 ≈ 1 GB with random fillers).
    #[arg(long, default_value_t = 70)]
    scale: u32,
    /// Keep backups in S3 over TLS (moto) instead of a local folder.
    #[arg(long)]
    s3: bool,
    /// Stop after the download (no restores).
    #[arg(long)]
    no_restore: bool,
    /// The S3 test server's virtual environment (gunicorn and moto).
    #[arg(long, env = "PGPLANE_S3_TEST_VENV", default_value = "/opt/pgplane/s3test")]
    s3_venv: PathBuf,
}

fn mb(bytes: f64) -> f64 {
    bytes / 1024.0 / 1024.0
}

/// Samples a process's VmRSS every 50 ms until stopped; answers (max, samples) in kB.
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while stopped.try_recv().is_err() {
                if let Some((rss, _)) = memory_kb(pid) {
                    samples.push(rss);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> String {
        let _ = self.stop.send(());
        let samples = self.task.await.unwrap_or_default();
        if samples.is_empty() {
            return "no samples".into();
        }
        let at = |f: f64| samples[((samples.len() - 1) as f64 * f) as usize] as f64 / 1024.0;
        let max = samples.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        format!(
            "agent RSS max {max:.1} MB, {:.1} / {:.1} / {:.1} MB at 10/50/90 %, {} samples",
            at(0.1),
            at(0.5),
            at(0.9),
            samples.len()
        )
    }
}

pub async fn run(args: Args) -> Result<()> {
    let bin = pgplane_localpg::find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(Path::new))?;
    let dir = std::env::temp_dir().join(format!("pgplane-bench-backup-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut s3_server = None;
    let storage = if args.s3 {
        let (server, config) = crate::dump::start_s3(&args.s3_venv, &dir).await?;
        s3_server = Some(server);
        config
    } else {
        let path = dir.join("local.json");
        std::fs::write(&path, json!({ "kind": "local", "root": dir.join("store") }).to_string())?;
        path
    };
    let p = Platform::start_with_backups(1, Some(storage)).await?;
    let result = bench(&args, &bin, &p, &dir).await;
    if let Err(e) = &result {
        eprintln!("failed: {e:#}\n{}", p.logs());
    }
    p.stop().await?;
    drop(s3_server);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn psql(bin: &Path, url: &str, sql: &str) -> Result<String> {
    let out = tokio::process::Command::new(bin.join("psql"))
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .await?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn bench(args: &Args, bin: &Path, p: &Platform, dir: &Path) -> Result<()> {
    let storage = if args.s3 { "S3 over TLS (moto)" } else { "a local folder" };
    println!("backups through pgplane into {storage}; pgbench scale {}", args.scale);
    let (db, op) = p.create_database("bench", "starter-1").await?;
    p.wait_operation(&op, Duration::from_secs(180)).await?;
    let url = p.url(&db).await?;

    // pgbench's tables with its keys, filled here with random fillers.
    let started = Instant::now();
    let out = tokio::process::Command::new(bin.join("pgbench"))
        .args(["-i", "-q", "-I", "dtg", "-s", "1", &url])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    let rows = args.scale as u64 * 100_000;
    psql(
        bin,
        &url,
        &format!(
            "TRUNCATE pgbench_accounts; INSERT INTO pgbench_accounts (aid, bid, abalance, filler) \
             SELECT g, (g - 1) / 100000 + 1, 0, md5(random()::text) || left(md5(random()::text), 20) \
             FROM generate_series(1, {rows}) g;"
        ),
    )
    .await?;
    let out = tokio::process::Command::new(bin.join("pgbench")).args(["-i", "-q", "-I", "vp", &url]).output().await?;
    anyhow::ensure!(out.status.success(), "pgbench -i -I vp: {}", String::from_utf8_lossy(&out.stderr));
    let size: f64 = psql(bin, &url, "SELECT pg_database_size(current_database());").await?.parse()?;
    println!(
        "database: {:.0} MB ({rows} accounts with random fillers), loaded in {:.0} s",
        mb(size),
        started.elapsed().as_secs_f64()
    );

    // Bare pg_dump -Fc to a file, on the member's socket as the agent dumps (peer authentication).
    let (s, members) = p.api.get(&format!("/v1/databases/{db}/members")).await?;
    anyhow::ensure!(s.is_success(), "members: {members}");
    let member = members["items"][0]["name"].as_str().context("a member")?.to_string();
    let member_dir = p.member_dir(&db, &member).context("the member's folder")?;
    let socket = pgplane_agent::patroni::MemberPaths::new(member_dir).socket_dir;
    let port: i32 = sqlx::query_scalar("SELECT pg_port FROM database_members WHERE database_id = $1::uuid")
        .bind(&db)
        .fetch_one(p.store.pool())
        .await?;
    let database = url.split('?').next().and_then(|u| u.rsplit('/').next()).context("database name")?.to_string();
    let bare_dir = dir.join("bare");
    std::fs::create_dir_all(&bare_dir)?;
    std::fs::set_permissions(&bare_dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let file = bare_dir.join("bare.dump");
    let as_postgres = |tool: &str| {
        let mut cmd = if pgplane_localpg::is_root() {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
            c
        } else {
            tokio::process::Command::new(bin.join(tool))
        };
        cmd.args(["-h", &socket.to_string_lossy(), "-p", &port.to_string(), "-U", "postgres"]);
        cmd
    };
    let mut bare = 0.0;
    for _ in 0..2 {
        let t = Instant::now();
        let out = as_postgres("pg_dump").args(["-Fc", "--no-sync", "-f"]).arg(&file).arg(&database).output().await?;
        anyhow::ensure!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        bare = t.elapsed().as_secs_f64();
    }
    let bare_size = std::fs::metadata(&file)?.len() as f64;
    println!(
        "bare pg_dump -Fc to a file: {bare:.1} s, {:.1} MB ({:.1} MB/s of dump)",
        mb(bare_size),
        mb(bare_size) / bare
    );

    // Through pgplane: the API call to the backup's `done`.
    let agent = p.services.iter().find(|s| s.name == "agent-0").context("the agent")?.pid();
    let backup = {
        let sampler = Sampler::start(agent);
        let t = Instant::now();
        let op = p.api.start_op(Method::POST, &format!("/v1/databases/{db}/backups"), &json!({})).await?;
        p.wait_operation(&op, Duration::from_secs(1800)).await?;
        let secs = t.elapsed().as_secs_f64();
        let memory = sampler.finish().await;
        let (_, page) = p.api.get(&format!("/v1/databases/{db}/backups?limit=10")).await?;
        let backup = page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|b| b["operation_id"] == op["id"]).cloned())
            .context("the backup of the operation")?;
        let size = backup["size_bytes"].as_f64().unwrap_or(0.0);
        println!(
            "POST …/backups → done, into {storage}: {secs:.1} s ({:+.1} % vs bare), {:.1} MB; {memory}",
            (secs / bare - 1.0) * 100.0,
            mb(size)
        );
        backup
    };
    let backup_id = backup["id"].as_str().context("backup id")?.to_string();

    // The download through the API, streamed and dropped.
    let t = Instant::now();
    let (s, link) =
        p.api.call(Method::POST, &format!("/v1/databases/{db}/backups/{backup_id}/link"), Some(&json!({}))).await?;
    anyhow::ensure!(s.is_success(), "link: {link}");
    let mut res = reqwest::get(link["url"].as_str().context("url")?).await?;
    let mut got = 0u64;
    while let Some(chunk) = res.chunk().await? {
        got += chunk.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "download through a signed link: {secs:.1} s, {:.1} MB ({:.0} MB/s)",
        mb(got as f64),
        mb(got as f64) / secs
    );

    if args.no_restore {
        return Ok(());
    }
    // Restores: bare pg_restore of the file into a new database vs the restore in place.
    let out = as_postgres("createdb").arg("bare_restore").output().await?;
    anyhow::ensure!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    let out = as_postgres("pg_restore")
        .args(["--exit-on-error", "--single-transaction", "--no-owner", "-d", "bare_restore"])
        .arg(&file)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    println!("bare pg_restore of the file into a new database: {:.1} s", t.elapsed().as_secs_f64());
    let _ = as_postgres("dropdb").arg("bare_restore").output().await;
    let sampler = Sampler::start(agent);
    let t = Instant::now();
    let path = format!("/v1/databases/{db}/backups/{backup_id}/restore");
    let op = p.api.start_op(Method::POST, &path, &json!({ "target": "in_place" })).await?;
    p.wait_operation(&op, Duration::from_secs(1800)).await?;
    let secs = t.elapsed().as_secs_f64();
    println!("POST …/restore in place → done, from {storage}: {secs:.1} s; {}", sampler.finish().await);
    let count: u64 = psql(bin, &url, "SELECT count(*) FROM pgbench_accounts").await?.parse()?;
    anyhow::ensure!(count == rows, "the restored database has {count} accounts, not {rows}");
    Ok(())
}
