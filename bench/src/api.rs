//! `api`: GET /v1/databases/{id} on the real API against a minimal axum + sqlx endpoint doing
//! the same work, both in this process on loopback ports, driven by an external load
//! generator: saturated throughput, then latency at a fixed rate.

use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

use crate::fixture::{self, Fixture};
use crate::loadgen::{self, Figures, Load, Target, Tool};
use crate::servers::{exchange, spawn_minimal, spawn_pgplane, verify, Endpoint};
use crate::{cpu, loadavg, report, rss};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connections of the saturated run.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Seconds of the saturated run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total requests per second of the fixed-rate run (always with oha).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of the fixed-rate run.
    #[arg(long, default_value_t = 10.0)]
    pub rate_duration: f64,
    /// Connections of the fixed-rate run.
    #[arg(long, default_value_t = 16)]
    pub rate_connections: u32,
    /// Seconds of saturated load on each endpoint before measuring (fills pools, warms caches).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Load generator of the saturated run.
    #[arg(long, value_enum, default_value_t = Tool::Oha)]
    pub saturate_with: Tool,
    /// Database connections of each endpoint's pool (pgplane's default is 16).
    #[arg(long, default_value_t = 16)]
    pub pool_size: u32,
    /// Load only this endpoint (for profiling); the comparison and goals are then not printed.
    #[arg(long, value_enum)]
    pub only: Option<Which>,
    /// Install a tracing subscriber with this filter (e.g. `info`, as `pgplane api` runs by
    /// default) writing the API's logs to a file, to measure what logging costs. Default: none.
    #[arg(long)]
    pub api_log: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Pgplane,
    Minimal,
}

/// Goals for pgplane.
const GOAL_P99_AT_RATE: f64 = 1e-3;
const GOAL_THROUGHPUT_SHARE: f64 = 0.5;
/// Above this share of the CPU taken by other processes, a run's figures are flagged.
const DISTURBED: f64 = 0.03;

struct Tools {
    oha: PathBuf,
    saturate: (Tool, PathBuf),
}

/// Finds the load generators, or says how to install them and exits with status 2.
fn tools(args: &Args) -> Tools {
    let mut missing = Vec::new();
    let oha = loadgen::locate(Tool::Oha);
    if oha.is_none() {
        missing.push(Tool::Oha);
    }
    let saturate = loadgen::locate(args.saturate_with);
    if saturate.is_none() && args.saturate_with != Tool::Oha {
        missing.push(args.saturate_with);
    }
    if !missing.is_empty() {
        for tool in missing {
            eprintln!(
                "error: the load generator `{}` is not installed (searched PATH and ~/.cargo/bin).",
                tool.binary()
            );
            eprintln!("install it with:\n    {}", tool.install_hint());
        }
        std::process::exit(2);
    }
    Tools { oha: oha.unwrap_or_default(), saturate: (args.saturate_with, saturate.unwrap_or_default()) }
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(args.duration > 0.0 && args.rate_duration > 0.0 && args.warmup >= 0.0, "durations must be positive");
    ensure!(args.connections > 0 && args.rate_connections > 0 && args.rate > 0, "connections and rate must be > 0");
    let tools = tools(&args);
    println!("pgplane bench api: GET /v1/databases/{{id}} (pgplane) vs GET /databases/{{id}} (minimal axum + sqlx)");
    println!("load average before: {}", loadavg());
    let server = fixture::Server::start().await?;
    match server.postgres_pid() {
        Some(pid) => println!("PostgreSQL: private throw-away server (postmaster pid {pid}, fsync off)"),
        None => println!("PostgreSQL: {} (a fresh database on it)", fixture::ENV_DATABASE_URL),
    }
    let result = async {
        let fixture = fixture::create(&server.url).await?;
        measure(&args, &tools, &server, &fixture).await
    }
    .await;
    let stopped = server.stop().await;
    result?;
    stopped.context("dropping the benchmark database / stopping PostgreSQL")
}

async fn measure(args: &Args, tools: &Tools, server: &fixture::Server, fixture: &Fixture) -> Result<()> {
    let url = server.url.as_str();
    let secret: [u8; 32] = std::array::from_fn(|i| uuid::Uuid::new_v4().as_bytes()[i % 16]);
    let (logging, log_file) = match &args.api_log {
        None => ("no tracing subscriber installed: its request spans and logs are disabled".to_string(), None),
        Some(filter) => {
            let path = std::env::temp_dir().join(format!("pgplane-bench-api-{}.log", std::process::id()));
            let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .init();
            let text = format!(
                "tracing subscriber with filter {filter:?} writing to {} (the minimal logs nothing)",
                path.display()
            );
            (text, Some(RemovedOnDrop(path)))
        }
    };
    let pgplane = spawn_pgplane(url, &secret, args.pool_size).await?;
    let minimal = spawn_minimal(url, &secret, args.pool_size).await?;
    println!(
        "pgplane API: http://{} (in-process, DB pool {}, rate limit 100,000,000/s, {logging})",
        pgplane.addr, args.pool_size
    );
    println!("minimal:     http://{} (in-process, DB pool {}, no middleware)", minimal.addr, args.pool_size);

    let http = reqwest::Client::new();
    let bearer = exchange(&http, pgplane.addr, &fixture.api_token).await?;
    let db = fixture.database_id;
    let mut endpoints = vec![
        Endpoint { name: "pgplane", url: format!("http://{}/v1/databases/{db}", pgplane.addr), plan_field: "plan" },
        Endpoint { name: "minimal", url: format!("http://{}/databases/{db}", minimal.addr), plan_field: "plan_id" },
    ];
    for e in &endpoints {
        verify(&http, e, &bearer, fixture).await?;
    }
    println!("verified: both answer 200 with the fixture's database row, and 401 without a token");
    match args.only {
        Some(Which::Pgplane) => endpoints.truncate(1),
        Some(Which::Minimal) => {
            endpoints.remove(0);
        }
        None => {}
    }
    println!("RSS after setup: {}", rss());

    let secs = Duration::from_secs_f64;
    let saturated = Load { connections: args.connections, duration: secs(args.duration), rate: None };
    let fixed = Load { connections: args.rate_connections, duration: secs(args.rate_duration), rate: Some(args.rate) };
    let (sat_tool, sat_bin) = (tools.saturate.0, tools.saturate.1.as_path());
    println!(
        "runs: saturated {} connections × {:.1} s with {}; fixed {} requests/s × {:.1} s on {} connections with oha \
         (--latency-correction); warm-up {:.1} s each; the load generator shares this machine's {} cores",
        args.connections,
        args.duration,
        sat_tool.binary(),
        args.rate,
        args.rate_duration,
        args.rate_connections,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let pg_pid = server.postgres_pid();
    let mut results = Vec::new();
    for e in &endpoints {
        let target = Target { url: &e.url, bearer: &bearer };
        if args.warmup > 0.0 {
            let warm = Load { connections: args.connections, duration: secs(args.warmup), rate: None };
            loadgen::run(Tool::Oha, &tools.oha, &target, warm).await.with_context(|| format!("warming {}", e.name))?;
        }
        let sat = observed(sat_tool, sat_bin, &target, saturated, pg_pid)
            .await
            .with_context(|| format!("{} saturated", e.name))?;
        println!(
            "  {:<8} saturated: {:>9.0} req/s  p50 {}  p99 {}  (other processes: {:.1}% CPU)",
            e.name,
            sat.requests_per_sec,
            ms(sat.p50),
            ms(sat.p99),
            sat.other_cpu * 100.0
        );
        results.push((e.name, sat, Figures::default()));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let target = Target { url: &e.url, bearer: &bearer };
        let fix = observed(Tool::Oha, &tools.oha, &target, fixed, pg_pid)
            .await
            .with_context(|| format!("{} fixed", e.name))?;
        println!(
            "  {:<8} {} req/s:  {:>9.0} req/s  p50 {}  p99 {}  p99.9 {}  (other processes: {:.1}% CPU)",
            e.name,
            args.rate,
            fix.requests_per_sec,
            ms(fix.p50),
            ms(fix.p99),
            fix.p999.map_or("-".into(), ms),
            fix.other_cpu * 100.0
        );
        results[i].2 = fix;
    }
    let rss_after = rss();
    pgplane.stop().await?;
    minimal.stop().await?;
    if let Some(RemovedOnDrop(path)) = &log_file {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        println!("the API wrote {:.1} MB of logs (file removed)", size as f64 / 1e6);
    }

    for (name, sat, fix) in &results {
        for (run, f) in [("saturated", sat), ("fixed-rate", fix)] {
            if f.failed > 0 || f.ok == 0 {
                bail!("{name} {run}: {} ok, {} failed: {}", f.ok, f.failed, f.failures.join(", "));
            }
        }
    }
    let goals = report::Goals { p99_at_rate: GOAL_P99_AT_RATE, throughput_share: GOAL_THROUGHPUT_SHARE };
    if args.only.is_none() {
        report::print(args.rate, &results, &goals);
    }
    println!("RSS of this process (both servers, their pools, the harness): {rss_after}");
    let disturbed = results.iter().map(|(_, s, f)| s.other_cpu.max(f.other_cpu)).fold(0.0, f64::max);
    if disturbed > DISTURBED {
        println!(
            "WARNING: other processes took up to {:.0}% of the CPU during a run: these figures are disturbed; \
             rerun when the machine is idle",
            disturbed * 100.0
        );
    } else if server.postgres_pid().is_some() {
        println!("other processes took at most {:.1}% of the CPU during any run: undisturbed", disturbed * 100.0);
    }
    println!("load average after: {}", loadavg());
    Ok(())
}

/// A file of ours, removed when the run ends however it ends.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One load-generator run, noting how much CPU other processes took meanwhile.
async fn observed(
    tool: Tool,
    bin: &std::path::Path,
    target: &Target<'_>,
    load: Load,
    pg: Option<u32>,
) -> Result<Figures> {
    let before = cpu::snapshot(pg);
    let mut figures = loadgen::run(tool, bin, target, load).await?;
    figures.other_cpu = cpu::other_share(&before, &cpu::snapshot(pg));
    Ok(figures)
}

/// Seconds as milliseconds, for the printout.
pub fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}
