//! `commit`: what synchronous replication costs a Business database's commits. pgbench runs
//! single-row INSERT transactions (one commit each) through the database's gateway over
//! verify-ca, on persistent connections, with synchronous replication on (the Business
//! default) and then off (`PATCH /v1/databases/{id}/configuration`): per mode and client
//! count, commits/s and the per-commit latency p50 / p99 from pgbench's transaction log.

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use crate::client::eventually;
use crate::figures::{footer, header, ms, Summary, Table};
use crate::ha;
use crate::platform::Platform;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of load per mode and client count.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Client counts (pgbench -c, one thread each).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    clients: Vec<u32>,
    #[arg(long, default_value = "business-1")]
    plan: String,
}

struct Run {
    mode: &'static str,
    clients: u32,
    tps: f64,
    latency: Summary,
}

pub async fn run(args: Args) -> Result<()> {
    header("commit: single-row INSERT commits through the gateway, synchronous replication on vs off");
    let p = Platform::start(2).await?;
    let result = measure(&args, &p).await;
    p.stop().await?;
    let runs = result?;
    println!();
    println!(
        "{}: pgbench -n, one `INSERT INTO c (v) VALUES (1)` per transaction (autocommit), persistent \
         connections through the gateway (HAProxy) with sslmode=verify-ca, {} s per row",
        args.plan, args.duration
    );
    let mut t = Table::new(&["synchronous replication", "clients", "commits/s", "latency p50", "latency p99"]);
    for r in &runs {
        t.row(vec![
            r.mode.into(),
            r.clients.to_string(),
            format!("{:.0}", r.tps),
            ms(r.latency.p50),
            ms(r.latency.p99),
        ]);
    }
    t.print();
    footer();
    Ok(())
}

async fn measure(args: &Args, p: &Platform) -> Result<Vec<Run>> {
    // A Business database starts with synchronous replication on: no PATCH here, and the keys
    // must name a synchronous standby.
    let (db, url, _) = ha::database(p, "commit", &args.plan, false).await?;
    p.wait_healthy(&db, 2, true, Duration::from_secs(120)).await.context("a Business database starts synchronous")?;
    eventually(
        &url,
        "CREATE TABLE IF NOT EXISTS c (id bigserial PRIMARY KEY, v int); SELECT 'ok'",
        "ok",
        Duration::from_secs(30),
    )
    .await?;
    let script = p.dir().join("commit.sql");
    std::fs::write(&script, "INSERT INTO c (v) VALUES (1);\n")?;
    let mut runs = Vec::new();
    for (mode, sync) in [("on", true), ("off", false)] {
        if !sync {
            let path = format!("/v1/databases/{db}/configuration");
            p.run_op(Method::PATCH, &path, &json!({ "synchronous_replication": false }), Duration::from_secs(120))
                .await?;
        }
        let named = if sync { "true" } else { "false" };
        let sql = "SELECT (current_setting('synchronous_standby_names') <> '')::text";
        eventually(&url, sql, named, Duration::from_secs(60))
            .await
            .with_context(|| format!("synchronous_standby_names with synchronous replication {mode}"))?;
        for &clients in &args.clients {
            let (tps, latency) = pgbench(p.dir(), &script, &url, clients, args.duration, mode).await?;
            println!(
                "synchronous {mode}, {clients} clients: {tps:.0} commits/s, p50 {}, p99 {}",
                ms(latency.p50),
                ms(latency.p99)
            );
            runs.push(Run { mode, clients, tps, latency });
        }
    }
    Ok(runs)
}

/// One pgbench run; (commits/s, per-commit latency in seconds) from its transaction log.
async fn pgbench(dir: &Path, script: &Path, url: &str, clients: u32, secs: u64, mode: &str) -> Result<(f64, Summary)> {
    let bin = crate::client::psql_bin().replace("psql", "pgbench");
    let prefix = dir.join(format!("pgbench-{mode}-{clients}"));
    let out = tokio::process::Command::new(&bin)
        .args(["-n", "-f"])
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &clients.to_string(), "-T", &secs.to_string(), "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(url)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {bin}"))?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stem = prefix.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let mut latencies = Vec::new();
    let mut failed = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{stem}."))) {
            continue;
        }
        // client_id transaction_no time script_no time_epoch time_us: `time` is the latency in µs.
        for line in std::fs::read_to_string(&path)?.lines() {
            match line.split_whitespace().nth(2).map(str::parse::<f64>) {
                Some(Ok(us)) => latencies.push(us / 1e6),
                _ => failed += 1,
            }
        }
        std::fs::remove_file(&path)?;
    }
    if failed > 0 {
        bail!("{failed} pgbench transactions failed or were skipped");
    }
    let latency = Summary::of(&latencies).context("pgbench logged no transaction")?;
    Ok((latencies.len() as f64 / secs as f64, latency))
}
