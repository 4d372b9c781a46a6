//! pgplane's benchmarks. They print figures; nothing here asserts a timing.
//!
//! `cargo run --release -p pgplane-bench -- api [--duration 10 --connections 64 ...]`

mod api;
mod cpu;
mod fixture;
mod loadgen;
mod minimal;
mod report;
mod servers;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // No tracing subscriber unless `--api-log` asks for one: the API's request logging is off.
    match Cli::parse().bench {
        Bench::Api(args) => api::run(args).await,
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
