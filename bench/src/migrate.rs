//! `migrate`: plan changes, by default Starter → Business and back (POST
//! /v1/databases/{id}/change-plan; `--sequence` for others, such as a resize
//! `business-2,business-1`),
//! timed until the operation is done and until the database answers its data through the same
//! URL; a client writes through the gateway meanwhile (one INSERT per new connection), so the
//! write gap and failed writes of each change are printed too.

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

use crate::client::psql;
use crate::figures::{dur, footer, header, Summary, Table};
use crate::ha;
use crate::platform::Platform;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds of the sequence.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// The plan the database is created with.
    #[arg(long, default_value = "starter-1")]
    starter: String,
    /// The plans to change to in each round, in order (the last should be where a round
    /// starts again).
    #[arg(long, value_delimiter = ',', default_value = "business-1,starter-1")]
    sequence: Vec<String>,
    /// Rows in the table whose count must answer through the URL after each change.
    #[arg(long, default_value_t = 100_000)]
    rows: u32,
}

struct Trial {
    /// `from → to`.
    to: String,
    /// POST → operation done.
    operation: Duration,
    /// POST → the data answered through the URL (the URL unchanged).
    answer: Duration,
    members: usize,
    gap: Duration,
    failed: usize,
    lost: usize,
}

pub async fn run(args: Args) -> Result<()> {
    header(&format!("migrate: {} → {}, under writes", args.starter, args.sequence.join(" → ")));
    let p = Platform::start(2).await?;
    let result = measure(&args, &p).await;
    p.stop().await?;
    let trials = result?;
    println!();
    println!(
        "a {} database with a table of {} rows; after each change the same URL must answer its count; writer: one \
         psql INSERT per new connection through the gateway (verify-ca, connect timeout {} s)",
        args.starter,
        args.rows,
        crate::client::connect_timeout()
    );
    let mut t = Table::new(&["change", "POST → done", "POST → answers", "members", "write gap", "failed", "lost"]);
    for tr in &trials {
        t.row(vec![
            tr.to.clone(),
            dur(tr.operation.as_secs_f64()),
            dur(tr.answer.as_secs_f64()),
            tr.members.to_string(),
            dur(tr.gap.as_secs_f64()),
            tr.failed.to_string(),
            tr.lost.to_string(),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["change", "n", "POST → answers p50", "max", "write gap p50", "max", "goal"]);
    let mut changes: Vec<&String> = Vec::new();
    for t in &trials {
        if !changes.contains(&&t.to) {
            changes.push(&t.to);
        }
    }
    for to in changes {
        let of: Vec<&Trial> = trials.iter().filter(|t| &t.to == to).collect();
        let (Some(a), Some(g)) = (
            Summary::of_durations(&of.iter().map(|t| t.answer).collect::<Vec<_>>()),
            Summary::of_durations(&of.iter().map(|t| t.gap).collect::<Vec<_>>()),
        ) else {
            continue;
        };
        t.row(vec![to.clone(), a.n.to_string(), dur(a.p50), dur(a.max), dur(g.p50), dur(g.max), "-".into()]);
    }
    t.print();
    footer();
    Ok(())
}

async fn measure(args: &Args, p: &Platform) -> Result<Vec<Trial>> {
    let (db, url, created) = ha::database(p, "mig", &args.starter, false).await?;
    let rows = args.rows.to_string();
    psql(&url, &format!("CREATE TABLE t AS SELECT generate_series(1, {rows}) AS id"))
        .await
        .map_err(anyhow::Error::msg)?;
    println!("  {} created in {created:.2} s, {rows} rows loaded", args.starter);
    let mut next_id = 1;
    let mut trials = Vec::new();
    let (_, listed) = p.api.get(&format!("/v1/databases/{db}/members")).await?;
    let mut members = listed["items"].as_array().context("members")?.len();
    let mut from = args.starter.clone();
    for _ in 0..args.trials {
        for to in &args.sequence {
            p.wait_healthy(&db, members, false, Duration::from_secs(180)).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let path = format!("/v1/databases/{db}/change-plan");
            let event = async {
                let t = Instant::now();
                let op = p.api.start_op(Method::POST, &path, &json!({ "plan": to })).await?;
                p.wait_operation(&op, Duration::from_secs(300)).await?;
                let (op, op_id) = (t.elapsed(), op["id"].as_str().unwrap_or_default().to_string());
                loop {
                    let now_url = p.url(&db).await?;
                    if now_url != url {
                        bail!("the URL changed: {url} → {now_url}");
                    }
                    if psql(&now_url, "SELECT count(*) FROM t").await.as_deref() == Ok(rows.as_str()) {
                        break;
                    }
                    if t.elapsed() > op + Duration::from_secs(60) {
                        bail!("the data did not answer through the URL within 60 s of the operation");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok((t, (op, t.elapsed(), op_id)))
            };
            let (window, (operation, answer, op_id)) =
                ha::around(&url, &mut next_id, Duration::from_secs(1), Duration::from_secs(60), event).await?;
            let (_, listed) = p.api.get(&format!("/v1/databases/{db}/members")).await?;
            members = listed["items"].as_array().context("members")?.len();
            let tr = Trial {
                to: format!("{from} → {to}"),
                operation,
                answer,
                members,
                gap: window.gap.gap,
                failed: window.gap.failed,
                lost: window.lost,
            };
            from = to.clone();
            println!(
                "  → {to}: done {:.2} s, answers {:.2} s, {members} member(s), gap {:.2} s, {} failed",
                operation.as_secs_f64(),
                answer.as_secs_f64(),
                tr.gap.as_secs_f64(),
                tr.failed
            );
            for e in &window.gap.errors {
                println!("    error seen: {e}");
            }
            if trials.len() < 2 {
                let (phases, retries) = crate::provision::phases(p, &op_id).await?;
                for (job, waited, ran, at) in phases {
                    println!("    {job}: queue wait {}, ran {}, finished at {}", dur(waited), dur(ran), dur(at));
                }
                for (job, error) in retries {
                    println!("    {job} was retried: {error}");
                }
            }
            trials.push(tr);
        }
    }
    Ok(trials)
}
