//! Logical backups: a pgbench database (scale 70 ≈ 1 GB) dumped by bare `pg_dump -Fc` to a file
//! vs through the agent's streaming path (`pgdump::dump`: row counts in the dump's snapshot,
//! SHA-256 on the fly, multipart upload) into a local folder and into S3 over TLS (moto served
//! by gunicorn, as in the tests); restore time (bare `pg_restore` from the file vs the agent's
//! restore in place from storage); and the resident memory of the process that streams, sampled
//! from /proc every 50 ms. The streaming runs in a child process of its own (this binary, the
//! hidden `dump-stream` subcommand) so that its memory is only the streaming path's. Everything
//! is deleted afterwards.

use crate::procs::memory_kb;
use anyhow::{Context, Result};
use pgplane_agent::pgdump::{self, PgTarget};
use pgplane_localpg::{find_bindir, free_port, LocalPg};
use pgplane_storage::{BackupStore, StorageConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// pgbench scale (70 ≈ 1 GB).
    #[arg(long, default_value_t = 70)]
    scale: u32,
    /// The S3 test server's virtual environment (gunicorn and moto).
    #[arg(long, env = "PGPLANE_S3_TEST_VENV", default_value = "/opt/pgplane/s3test")]
    s3_venv: PathBuf,
    /// Skip the S3 run.
    #[arg(long)]
    no_s3: bool,
}

/// What the `dump-stream` child is told (JSON in `PGPLANE_BENCH_DUMP`).
#[derive(serde::Serialize, serde::Deserialize)]
struct StreamJob {
    bin_dir: PathBuf,
    port: u16,
    user: String,
    password: Option<String>,
    storage: PathBuf,
    key: String,
    restore_into: Option<String>,
    sha256: Option<String>,
}

/// The child: one dump (or restore) through the agent's driver; prints the report as JSON.
pub async fn stream() -> Result<()> {
    let job: StreamJob = serde_json::from_str(&std::env::var("PGPLANE_BENCH_DUMP").context("PGPLANE_BENCH_DUMP")?)?;
    let target = PgTarget {
        bin_dir: job.bin_dir,
        host: "127.0.0.1".into(),
        port: job.port,
        user: job.user,
        password: job.password,
        runas: None,
    };
    let store = BackupStore::open(&StorageConfig::load(&job.storage)?)?;
    match job.restore_into {
        None => {
            let report = pgdump::dump(&target, "bench", &store, &job.key).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Some(database) => {
            pgdump::restore_in_place(
                &target,
                &store,
                &job.key,
                job.sha256.as_deref(),
                &database,
                pgplane_localpg::SUPERUSER,
            )
            .await?;
            println!("{{}}");
        }
    }
    Ok(())
}

struct Streamed {
    secs: f64,
    rss_max_kb: u64,
    rss_samples: Vec<u64>,
    output: String,
}

/// Runs the child with `job`, sampling its resident memory.
async fn run_child(job: &StreamJob) -> Result<Streamed> {
    let started = Instant::now();
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("dump-stream")
        .env("PGPLANE_BENCH_DUMP", serde_json::to_string(job)?)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("the child's pid")?;
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while let Some((rss, _)) = memory_kb(pid) {
            samples.push(rss);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples
    });
    let out = child.wait_with_output().await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "the streaming child failed ({})", out.status);
    let rss_samples = sampler.await?;
    Ok(Streamed {
        secs,
        rss_max_kb: rss_samples.iter().copied().max().unwrap_or(0),
        rss_samples,
        output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// RSS at 10 %, 50 % and 90 % of the run, in MB: flat or growing.
fn shape(samples: &[u64]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    let at = |f: f64| samples[((samples.len() - 1) as f64 * f) as usize] as f64 / 1024.0;
    format!("{:.1} / {:.1} / {:.1} MB at 10/50/90 %", at(0.1), at(0.5), at(0.9))
}

pub async fn run(args: Args) -> Result<()> {
    let bin = find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(Path::new))?;
    let dir = std::env::temp_dir().join(format!("pgplane-bench-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &bin, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: &Args, bin: &Path, dir: &Path) -> Result<()> {
    let b = bin.to_path_buf();
    let pg = tokio::task::spawn_blocking(move || LocalPg::temporary(&b)).await??;
    let target = pgdump::scratch_target(bin, &pg);
    let env_password = target.password.clone().unwrap_or_default();
    target.sql("postgres", "CREATE DATABASE bench;").await?;
    println!("pgbench -i -s {} …", args.scale);
    let started = Instant::now();
    let out = tokio::process::Command::new(bin.join("pgbench"))
        .args(["-i", "-q", "-s", &args.scale.to_string(), "-h", "127.0.0.1", "-p", &target.port.to_string()])
        .args(["-U", &target.user, "bench"])
        .env("PGPASSWORD", &env_password)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    let db_size: i64 = target.sql("bench", "SELECT pg_database_size('bench');").await?.parse()?;
    println!("database: {:.0} MB, loaded in {:.0} s", mb(db_size as u64), started.elapsed().as_secs_f64());
    target.sql("bench", "CHECKPOINT; VACUUM ANALYZE;").await?;

    // Bare pg_dump -Fc to a file (warms the cache for the runs after it; run it twice, keep the second).
    let file = dir.join("bare.dump");
    let mut bare_secs = 0.0;
    for _ in 0..2 {
        let started = Instant::now();
        let out = tokio::process::Command::new(bin.join("pg_dump"))
            .args(["-Fc", "-h", "127.0.0.1", "-p", &target.port.to_string(), "-U", &target.user, "-f"])
            .arg(&file)
            .arg("bench")
            .env("PGPASSWORD", &env_password)
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        bare_secs = started.elapsed().as_secs_f64();
    }
    let bare_size = std::fs::metadata(&file)?.len();
    println!("bare pg_dump -Fc to a file: {bare_secs:.1} s, {:.1} MB", mb(bare_size));

    let mut stores = vec![("local folder", local_config(dir)?)];
    let mut s3_server = None;
    if !args.no_s3 {
        let (server, config) = start_s3(&args.s3_venv, dir).await?;
        s3_server = Some(server);
        stores.push(("S3 over TLS (moto)", config));
    }
    let mut restore_from = None;
    for (name, config) in &stores {
        let job = StreamJob {
            bin_dir: bin.to_path_buf(),
            port: target.port,
            user: target.user.clone(),
            password: target.password.clone(),
            storage: config.clone(),
            key: "databases/bench/backups/b.dump".into(),
            restore_into: None,
            sha256: None,
        };
        let streamed = run_child(&job).await?;
        let report: pgdump::DumpReport = serde_json::from_str(&streamed.output)?;
        println!(
            "agent's streaming dump into {name}: {:.1} s ({:+.1} % vs bare), {:.1} MB, {:.1} MB/s; streaming process RSS max {:.1} MB ({}), {} samples",
            streamed.secs,
            (streamed.secs / bare_secs - 1.0) * 100.0,
            mb(report.size),
            mb(report.size) / streamed.secs,
            streamed.rss_max_kb as f64 / 1024.0,
            shape(&streamed.rss_samples),
            streamed.rss_samples.len()
        );
        if restore_from.is_none() {
            restore_from = Some((job, report.sha256));
        }
    }

    // Restores: bare pg_restore from the file into a new database vs the agent's restore in
    // place (scratch database + swap) from the local folder.
    target.sql("postgres", "CREATE DATABASE bare_restore;").await?;
    let started = Instant::now();
    let out = tokio::process::Command::new(bin.join("pg_restore"))
        .args([
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "-h",
            "127.0.0.1",
            "-p",
            &target.port.to_string(),
        ])
        .args(["-U", &target.user, "-d", "bare_restore"])
        .arg(&file)
        .env("PGPASSWORD", &env_password)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    println!("bare pg_restore from the file: {:.1} s", started.elapsed().as_secs_f64());
    target.sql("postgres", "DROP DATABASE bare_restore;").await?;
    if let Some((mut job, sha256)) = restore_from {
        target.sql("postgres", "CREATE DATABASE restored;").await?;
        job.restore_into = Some("restored".into());
        job.sha256 = Some(sha256);
        let streamed = run_child(&job).await?;
        println!(
            "agent's restore in place from the local folder: {:.1} s; streaming process RSS max {:.1} MB ({})",
            streamed.secs,
            streamed.rss_max_kb as f64 / 1024.0,
            shape(&streamed.rss_samples)
        );
    }
    drop(s3_server);
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}

fn local_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("local.json");
    let config = serde_json::json!({ "kind": "local", "root": dir.join("store") });
    std::fs::write(&path, config.to_string())?;
    Ok(path)
}

/// moto's S3 under gunicorn over TLS, stopped (by its pid) when dropped.
pub struct S3Server(std::process::Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn start_s3(venv: &Path, dir: &Path) -> Result<(S3Server, PathBuf)> {
    let ca = pgplane_pki::DatabaseCa::generate("bench s3")?;
    let cert = ca.issue_server(&["127.0.0.1"])?;
    std::fs::write(dir.join("s3.crt"), &cert.cert_pem)?;
    std::fs::write(dir.join("s3.key"), &cert.key_pem)?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(
        dir.join("moto_app.py"),
        "from moto.moto_server.werkzeug_app import create_backend_app\napp = create_backend_app('s3')\n",
    )?;
    let port = free_port()?;
    let child = std::process::Command::new(venv.join("bin/gunicorn"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "1", "--threads", "8", "--log-level", "critical"])
        .args(["--certfile", "s3.crt", "--keyfile", "s3.key", "--timeout", "600", "moto_app:app"])
        .current_dir(dir)
        .spawn()
        .context("starting gunicorn (PGPLANE_WITH_S3_TEST=1 scripts/install-deps installs it)")?;
    let server = S3Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the S3 server did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())?)
        .build()?;
    let made = http.put(format!("https://127.0.0.1:{port}/bench")).send().await?;
    anyhow::ensure!(made.status().is_success(), "creating the bucket: {}", made.status());
    let credentials = dir.join("s3-credentials.json");
    std::fs::write(&credentials, r#"{"access_key_id":"bench","secret_access_key":"bench-secret"}"#)?;
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600))?;
    let path = dir.join("s3.json");
    let config = serde_json::json!({
        "kind": "s3", "endpoint": format!("https://127.0.0.1:{port}"), "bucket": "bench",
        "credentials_file": credentials, "ca_file": dir.join("ca.pem"),
    });
    std::fs::write(&path, config.to_string())?;
    Ok((server, path))
}
