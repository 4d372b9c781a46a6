//! The partition lab as a benchmark: each scenario (`pgplane_lab::Scenario`) run `--runs` times on
//! one Business database with synchronous replication on or off (`--sync`), printing per scenario
//! the write gap through the database's VIP (p50/p99), failed writes, acknowledged writes lost,
//! writes acknowledged by two members, the time from healing until the database is whole again,
//! and how often the VIP moved. Needs root.

use anyhow::{bail, Result};
use pgplane_lab::{Options, Programs, RunReport, Scenario};
use std::path::PathBuf;
use std::time::Duration;

use crate::figures::{dur, Summary, Table};

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each scenario.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Scenarios to run (comma-separated; default all): leader-partitioned,
    /// leader-cut-from-etcd-and-follower, follower-partitioned, leader-lost, gateway-lost,
    /// slow-link.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// How long each fault lasts, in seconds.
    #[arg(long, default_value_t = 20)]
    hold: u64,
    /// Synchronous replication: `on` (a Business database's default) or `off` (turned off through
    /// the API as a tenant does), to measure what an asynchronous database loses.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    sync: String,
    /// How long a writer waits for one INSERT, connecting included, before it gives up and
    /// retries, in milliseconds (a client's timeout: a connection to a vanished host hangs).
    #[arg(long, default_value_t = pgplane_lab::writer::WRITE_TIMEOUT.as_millis() as u64)]
    write_timeout_ms: u64,
    /// The `pgplane` binary (default: the one built beside this benchmark).
    #[arg(long)]
    pgplane: Option<PathBuf>,
    /// The Patroni the agents run (default: `$PGPLANE_LAB_PATRONI`, else whatever the agent finds).
    #[arg(long)]
    patroni: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    if !pgplane_lab::is_root() {
        bail!("the partition lab needs root (network namespaces, nftables)");
    }
    let scenarios = if args.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenario
            .iter()
            .map(|s| Scenario::parse(s).ok_or_else(|| anyhow::anyhow!("unknown scenario {s}")))
            .collect::<Result<_>>()?
    };
    let pgplane = match args.pgplane {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("pgplane"),
    };
    if !pgplane.exists() {
        bail!("{} is missing: build it first (cargo build --release -p pgplane) or pass --pgplane", pgplane.display());
    }
    let mut programs = Programs::new(pgplane);
    if let Some(p) = args.patroni {
        programs.patroni = Some(p);
    }
    let synchronous = args.sync == "on";
    println!(
        "partition lab: {} run(s) of {} scenario(s), faults of {} s, synchronous replication {}, writers give an insert up after {} ms",
        args.runs,
        scenarios.len(),
        args.hold,
        args.sync,
        args.write_timeout_ms
    );
    println!("Patroni: {}", programs.patroni.as_ref().map_or("the agent's own".into(), |p| p.display().to_string()));
    let options = Options {
        programs,
        scenarios: scenarios.clone(),
        repeats: args.runs,
        hold: Duration::from_secs(args.hold),
        write_timeout: Duration::from_millis(args.write_timeout_ms),
        synchronous,
        keep_logs: false,
    };
    let round = scenarios.clone();
    let mut so_far: Vec<RunReport> = Vec::new();
    let reports = tokio::task::spawn_blocking(move || {
        pgplane_lab::run(options, move |r| {
            println!(
                "  {}: gap {}, failed {}, lost {}, two leaders {}, whole after {}, leader moved {}, API agrees {}, VIP {} -> {}",
                r.scenario.name(),
                dur(r.write_gap.as_secs_f64()),
                r.failed_writes,
                r.lost_acked,
                r.acked_by_two_leaders,
                dur(r.until_whole.as_secs_f64()),
                r.leader_changed,
                r.api_agrees,
                r.vip_before,
                r.vip_after
            );
            // The table after every round, so that a long run stopped early has its figures.
            so_far.push(r.clone());
            if so_far.len().is_multiple_of(round.len()) {
                println!("after {} round(s):", so_far.len() / round.len());
                print_table(&round, &so_far);
            }
        })
    })
    .await??;
    print_table(&scenarios, &reports);
    Ok(())
}

fn print_table(scenarios: &[Scenario], reports: &[RunReport]) {
    let mut table = Table::new(&[
        "scenario",
        "runs",
        "write gap p50",
        "p99",
        "failed writes (sum)",
        "acked lost (sum)",
        "acked by two leaders (sum)",
        "whole again p50",
        "p99",
        "old leader rejoined",
        "VIP moved",
    ]);
    for &s in scenarios {
        let runs: Vec<&RunReport> = reports.iter().filter(|r| r.scenario == s).collect();
        let gap = Summary::of_durations(&runs.iter().map(|r| r.write_gap).collect::<Vec<_>>());
        let whole = Summary::of_durations(&runs.iter().map(|r| r.until_whole).collect::<Vec<_>>());
        let p = |s: Option<Summary>, f: fn(&Summary) -> f64| s.map_or("-".into(), |s| dur(f(&s)));
        table.row(vec![
            s.name().into(),
            runs.len().to_string(),
            p(gap, |s| s.p50),
            p(gap, |s| s.p99),
            runs.iter().map(|r| r.failed_writes).sum::<usize>().to_string(),
            runs.iter().map(|r| r.lost_acked).sum::<usize>().to_string(),
            runs.iter().map(|r| r.acked_by_two_leaders).sum::<usize>().to_string(),
            p(whole, |s| s.p50),
            p(whole, |s| s.p99),
            format!("{}/{}", runs.iter().filter(|r| r.old_leader_rejoined).count(), runs.len()),
            format!("{}/{}", runs.iter().filter(|r| r.vip_before != r.vip_after).count(), runs.len()),
        ]);
    }
    table.print();
}
