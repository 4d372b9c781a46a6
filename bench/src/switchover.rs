//! `switchover`: planned switchovers of a Business database through the API
//! (POST /v1/databases/{id}/switchover) while a client writes through the gateway, one INSERT
//! per new connection: the write gap and the failed client queries per switchover.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

use crate::figures::{dur, footer, header, met, Summary, Table};
use crate::ha;
use crate::platform::Platform;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long, default_value = "business-1")]
    plan: String,
    /// Turn synchronous replication on first.
    #[arg(long)]
    synchronous: bool,
}

struct Trial {
    before: String,
    after: String,
    /// POST → operation done.
    operation: Duration,
    gap: Duration,
    failed: usize,
    lost: usize,
}

pub async fn run(args: Args) -> Result<()> {
    header("switchover: planned, through the API, under writes");
    let p = Platform::start(2).await?;
    let result = measure(&args, &p).await;
    p.stop().await?;
    let trials = result?;
    println!();
    println!(
        "{}, synchronous replication {}; writer: one psql INSERT per new connection through the gateway \
         (verify-ca, connect timeout {} s), 25 ms pause after a failure; the gap is the longest wait between two \
         acknowledged writes from the last one before the POST",
        args.plan,
        if args.synchronous { "on" } else { "off" },
        crate::client::connect_timeout()
    );
    let mut t = Table::new(&["trial", "leader before → after", "POST → done", "write gap", "failed queries", "lost"]);
    for (i, tr) in trials.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            format!("{} → {}", tr.before, tr.after),
            dur(tr.operation.as_secs_f64()),
            dur(tr.gap.as_secs_f64()),
            tr.failed.to_string(),
            tr.lost.to_string(),
        ]);
    }
    t.print();
    println!();
    let gaps = Summary::of_durations(&trials.iter().map(|t| t.gap).collect::<Vec<_>>()).context("no trials")?;
    let failed = Summary::of(&trials.iter().map(|t| t.failed as f64).collect::<Vec<_>>()).context("no trials")?;
    let ops = Summary::of_durations(&trials.iter().map(|t| t.operation).collect::<Vec<_>>()).context("no trials")?;
    let moved = trials.iter().filter(|t| t.before != t.after).count();
    let lost: usize = trials.iter().map(|t| t.lost).sum();
    let mut t = Table::new(&["figure", "p50", "max", "goal", "FACTS.md"]);
    t.row(vec![
        "write gap per switchover".into(),
        dur(gaps.p50),
        dur(gaps.max),
        format!("≤ 1 s: {}", met(gaps.p50 <= 1.0)),
        "2.4 s (Patroni + HAProxy)".into(),
    ]);
    t.row(vec![
        "failed client queries per switchover".into(),
        format!("{:.0}", failed.p50),
        format!("{:.0}", failed.max),
        "-".into(),
        "2 failed inserts".into(),
    ]);
    t.row(vec!["POST → operation done".into(), dur(ops.p50), dur(ops.max), "-".into(), "-".into()]);
    t.print();
    println!("leadership moved in {moved} of {} trials; acknowledged writes lost: {lost}", trials.len());
    footer();
    Ok(())
}

async fn measure(args: &Args, p: &Platform) -> Result<Vec<Trial>> {
    let (db, url, created) = ha::database(p, "so", &args.plan, args.synchronous).await?;
    println!("  {} created in {created:.2} s", args.plan);
    let mut next_id = 1;
    let mut trials = Vec::new();
    for i in 0..args.trials {
        p.wait_healthy(&db, 2, args.synchronous, Duration::from_secs(180)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = p.dcs.cluster(&db).await.leader.context("no leader")?;
        let path = format!("/v1/databases/{db}/switchover");
        let event = async {
            let t = Instant::now();
            p.run_op(Method::POST, &path, &json!({}), Duration::from_secs(120)).await?;
            Ok((t, t.elapsed()))
        };
        let (window, operation) =
            ha::around(&url, &mut next_id, Duration::from_secs(1), Duration::from_secs(60), event).await?;
        let after = p.dcs.cluster(&db).await.leader.unwrap_or_else(|| "none".into());
        let tr = Trial { before, after, operation, gap: window.gap.gap, failed: window.gap.failed, lost: window.lost };
        println!(
            "  trial {}: {} → {}, done in {:.2} s, gap {:.2} s, {} failed, slowest attempt {:.2} s ({})",
            i + 1,
            tr.before,
            tr.after,
            operation.as_secs_f64(),
            tr.gap.as_secs_f64(),
            tr.failed,
            window.gap.slowest.0.as_secs_f64(),
            if window.gap.slowest.1 { "acknowledged" } else { "failed" }
        );
        for e in &window.gap.errors {
            println!("    error seen: {e}");
        }
        trials.push(tr);
    }
    Ok(trials)
}
