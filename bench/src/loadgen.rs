//! External load generators, run as child processes against loopback URLs: `oha` (JSON
//! output; the only one here that can hold a fixed rate) and `wrk` (saturation only).
//! Each run is bounded: the child is killed by its PID if it overruns its duration.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    Oha,
    Wrk,
}

impl Tool {
    pub fn binary(self) -> &'static str {
        match self {
            Tool::Oha => "oha",
            Tool::Wrk => "wrk",
        }
    }

    pub fn install_hint(self) -> &'static str {
        match self {
            Tool::Oha => {
                "cargo install oha --locked   (a few minutes; without --locked a dependency wants a newer rustc)"
            }
            Tool::Wrk => "apt-get install -y wrk   (Debian package; run apt-get update first)",
        }
    }
}

/// Where a tool's binary is, searching PATH and ~/.cargo/bin.
pub fn locate(tool: Tool) -> Option<std::path::PathBuf> {
    let name = tool.binary();
    let mut dirs: Vec<std::path::PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// One run's figures. Latencies in seconds.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub requests_per_sec: f64,
    pub p50: f64,
    pub p99: f64,
    /// Not reported by wrk.
    pub p999: Option<f64>,
    pub ok: u64,
    /// Answers other than 200, and transport errors (deadline aborts excluded).
    pub failed: u64,
    pub failures: Vec<String>,
    /// Share of the machine's CPU that processes other than the benchmark's took meanwhile.
    pub other_cpu: f64,
}

/// What to send.
pub struct Target<'a> {
    pub url: &'a str,
    pub bearer: &'a str,
}

/// How hard.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: u32,
    pub duration: Duration,
    /// Fixed total rate (oha only); `None` saturates.
    pub rate: Option<u32>,
}

pub async fn run(tool: Tool, bin: &std::path::Path, target: &Target<'_>, load: Load) -> Result<Figures> {
    match tool {
        Tool::Oha => oha(bin, target, load).await,
        Tool::Wrk => {
            if load.rate.is_some() {
                bail!("wrk cannot hold a fixed rate; use oha");
            }
            wrk(bin, target, load).await
        }
    }
}

async fn output(mut cmd: Command, duration: Duration) -> Result<String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().context("starting the load generator")?;
    let pid = child.id();
    let limit = duration + Duration::from_secs(30);
    // On timeout the future (and the child with it) is dropped: kill_on_drop kills that PID.
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("the load generator (pid {pid:?}) ran past {limit:?} and was killed"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("the load generator failed ({}): {}\n{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

#[derive(Deserialize)]
struct OhaJson {
    summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    latency: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    status: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    errors: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct OhaSummary {
    #[serde(rename = "requestsPerSec")]
    requests_per_sec: f64,
}

async fn oha(bin: &std::path::Path, target: &Target<'_>, load: Load) -> Result<Figures> {
    let mut cmd = Command::new(bin);
    cmd.args(["--no-tui", "--output-format", "json", "-c", &load.connections.to_string()])
        .args(["-z", &format!("{}ms", load.duration.as_millis())])
        .args(["-H", &format!("Authorization: Bearer {}", target.bearer)]);
    if let Some(rate) = load.rate {
        // Latencies measured from when each request was due, so a stall is not hidden.
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    cmd.arg(target.url);
    let text = output(cmd, load.duration).await?;
    let parsed: OhaJson = serde_json::from_str(&text).with_context(|| format!("reading oha's JSON: {text}"))?;
    let pct = |k: &str| parsed.latency.get(k).copied().flatten();
    let mut f = Figures {
        requests_per_sec: parsed.summary.requests_per_sec,
        p50: pct("p50").context("oha gave no p50")?,
        p99: pct("p99").context("oha gave no p99")?,
        p999: pct("p99.9"),
        ..Figures::default()
    };
    for (code, n) in parsed.status {
        if code == "200" {
            f.ok += n;
        } else {
            f.failed += n;
            f.failures.push(format!("{n} × HTTP {code}"));
        }
    }
    for (error, n) in parsed.errors {
        // With -z, requests still open at the deadline are aborted; that is not a failure.
        if !error.contains("deadline") {
            f.failed += n;
            f.failures.push(format!("{n} × {error}"));
        }
    }
    Ok(f)
}

async fn wrk(bin: &std::path::Path, target: &Target<'_>, load: Load) -> Result<Figures> {
    let mut cmd = Command::new(bin);
    let threads = load.connections.clamp(1, 2);
    cmd.args(["--latency", "-t", &threads.to_string(), "-c", &load.connections.to_string()])
        .args(["-d", &format!("{}s", load.duration.as_secs().max(1))])
        .args(["-H", &format!("Authorization: Bearer {}", target.bearer)])
        .arg(target.url);
    let text = output(cmd, load.duration).await?;
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<Figures> {
    let mut f = Figures::default();
    let (mut p50, mut p99, mut total) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => p50 = Some(wrk_duration(v)?),
            (Some("99%"), Some(v)) => p99 = Some(wrk_duration(v)?),
            (Some("Requests/sec:"), Some(v)) => f.requests_per_sec = v.parse()?,
            _ => {}
        }
        if let Some(rest) = line.split_once(" requests in ").map(|(n, _)| n) {
            total = Some(rest.trim().parse::<u64>()?);
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            let n: u64 = n.trim().parse()?;
            f.failed += n;
            f.failures.push(format!("{n} × non-2xx/3xx"));
        }
        if line.starts_with("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            let n: u64 = line.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum();
            if n > 0 {
                f.failed += n;
                f.failures.push(line.to_string());
            }
        }
    }
    f.p50 = p50.with_context(|| format!("no 50% line in wrk's output:\n{text}"))?;
    f.p99 = p99.with_context(|| format!("no 99% line in wrk's output:\n{text}"))?;
    f.ok = total.unwrap_or(0).saturating_sub(f.failed);
    Ok(f)
}

/// "612.00us", "1.23ms", "2.00s" → seconds.
fn wrk_duration(v: &str) -> Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).context("a unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        other => bail!("unknown unit {other:?} in {v:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:1/x\n  2 threads and 64 connections\n  Latency Distribution\n     50%  612.00us\n     75%    1.00ms\n     90%    2.00ms\n     99%    3.50ms\n  181234 requests in 10.00s, 100.00MB read\n  Non-2xx or 3xx responses: 4\nRequests/sec:  18123.40\nTransfer/sec:     10.00MB\n";
        let f = parse_wrk(text).unwrap();
        assert_eq!(f.requests_per_sec, 18123.40);
        assert!((f.p50 - 612e-6).abs() < 1e-12);
        assert!((f.p99 - 3.5e-3).abs() < 1e-12);
        assert_eq!((f.ok, f.failed), (181230, 4));
    }
}
