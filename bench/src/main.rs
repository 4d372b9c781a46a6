//! pgplane's benchmarks. They print figures; nothing here asserts a timing.
//!
//! `cargo run --release -p pgplane-bench -- api [--duration 10 --connections 64 ...]`
//! `cargo run --release -p pgplane-bench -- queue | provision | failover | switchover | migrate | commit | lab`
//! `cargo run --release -p pgplane-bench -- workflows --databases 50`
//! `cargo run --release -p pgplane-bench -- dump [--scale 70]`
//! `cargo run --release -p pgplane-bench -- backup [--scale 70] [--s3] [--no-restore]`
//! `cargo run --release -p pgplane-bench -- pitr [--scale 70 --wal-seconds 60]`

mod api;
mod backup;
mod client;
mod commit;
mod controlpg;
mod cpu;
mod dcs;
mod dump;
mod failover;
mod figures;
mod fixture;
mod ha;
mod lab;
mod loadgen;
mod migrate;
mod minimal;
mod pitr;
mod platform;
mod procs;
mod provision;
mod queue;
mod report;
mod servers;
mod switchover;
mod workflows;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "pgplane benchmarks: print figures, assert nothing")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// GET /v1/databases/{id} on the real API vs a minimal axum + sqlx endpoint: saturated
    /// throughput and latency at a fixed rate, through oha (and optionally wrk).
    Api(api::Args),
    /// The job queue: enqueue → claim latency through LISTEN/NOTIFY, and no-op jobs drained
    /// per second by `run_worker` and by hand.
    Queue(queue::Args),
    /// POST a database → first query through its gateway over verify-ca (Starter, Business),
    /// and the resident memory of the api, scheduler and agent processes.
    Provision(provision::Args),
    /// kill -9 of a Business leader's Patroni and PostgreSQL under writes: write gap, lost
    /// writes, whether leadership moved; with the platform's Patroni timings and shorter ones.
    Failover(failover::Args),
    /// Planned switchovers through the API under writes: write gap and failed queries.
    Switchover(switchover::Args),
    /// Starter → Business → Starter plan changes: until done and answering on the same URL.
    Migrate(migrate::Args),
    /// Single-row INSERT commits through the gateway, synchronous replication on vs off:
    /// commits/s and latency p50 / p99 at 1 and 4 clients (pgbench).
    Commit(commit::Args),
    /// The partition lab (root): each scenario `--runs` times on network-namespace hosts; write
    /// gap, failed writes, acknowledged writes lost, time until whole again.
    Lab(lab::Args),
    /// Many operations at once on fake agents: databases created, changed and deleted together;
    /// operations done, step latency p50 / p99, retried and lease-expired attempts, heartbeats.
    Workflows(workflows::Args),
    /// Logical backups of a pgbench database: bare `pg_dump -Fc` to a file vs the agent's
    /// streaming dump into a local folder and S3 over TLS, restore times, and the resident
    /// memory of the streaming process.
    Dump(dump::Args),
    /// Logical backups through pgplane: `POST …/backups` → done (local folder or S3 over TLS) vs
    /// bare `pg_dump -Fc`, the download, restore in place vs bare `pg_restore`, and the agent's
    /// resident memory while it streams.
    Backup(backup::Args),
    /// Point-in-time recovery of a pgbench database with pgBackRest: full backup and restore to
    /// a time after some pgbench WAL, through the agent's driver vs bare pgbackrest.
    Pitr(pitr::Args),
    /// The streaming child of `dump` (not for direct use).
    #[command(hide = true)]
    DumpStream,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // No tracing subscriber unless `--api-log` asks for one: the API's request logging is off.
    match Cli::parse().bench {
        Bench::Api(args) => api::run(args).await,
        Bench::Queue(args) => queue::run(args).await,
        Bench::Provision(args) => provision::run(args).await,
        Bench::Failover(args) => failover::run(args).await,
        Bench::Switchover(args) => switchover::run(args).await,
        Bench::Migrate(args) => migrate::run(args).await,
        Bench::Commit(args) => commit::run(args).await,
        Bench::Lab(args) => lab::run(args).await,
        Bench::Workflows(args) => workflows::run(args).await,
        Bench::Dump(args) => dump::run(args).await,
        Bench::Backup(args) => backup::run(args).await,
        Bench::DumpStream => dump::stream().await,
        Bench::Pitr(args) => pitr::run(args).await,
    }
}

/// VmRSS and VmHWM (peak) of this process, from /proc/self/status.
pub fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    format!("VmRSS {} (peak VmHWM {})", field("VmRSS:"), field("VmHWM:"))
}

/// The 1/5/15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
