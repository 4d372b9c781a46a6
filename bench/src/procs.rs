//! Processes: the `pgplane` binary's services started as our children (stopped by their pid,
//! never by name), resident memory from /proc, and the data plane's processes found by their
//! command lines and pid files so a benchmark can kill them with -9.

use anyhow::{bail, Context, Result};
use pgplane_localpg::Supervised;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `pgplane` binary: `$PGPLANE_BIN`, else next to this benchmark's binary
/// (`target/release/pgplane` after `cargo build --release -p pgplane`).
pub fn pgplane_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PGPLANE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let candidate = exe.parent().context("the benchmark's folder")?.join("pgplane");
    if !candidate.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p pgplane` (or set PGPLANE_BIN)",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// One service (api, scheduler, agent) run from the `pgplane` binary, logging to a file.
pub struct Service {
    pub name: String,
    pub log: PathBuf,
    proc: Supervised,
}

impl Service {
    /// Starts `pgplane <args>`; it gets SIGTERM from the kernel should this process die.
    pub fn start(name: &str, args: &[String], env: &[(&str, String)], log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(pgplane_bin()?);
        cmd.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).env("NO_COLOR", "1");
        // The API logs a line per request at info: warnings only, unless asked otherwise.
        let level = if name == "api" { "warn" } else { "info" };
        cmd.env("RUST_LOG", std::env::var("PGPLANE_BENCH_LOG").unwrap_or_else(|_| level.into()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Supervised::spawn(cmd, libc::SIGTERM).with_context(|| format!("starting pgplane {name}"))?;
        Ok(Service { name: name.to_string(), log, proc })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc.exit_status()
    }

    /// SIGTERM, then SIGKILL after `grace`; waits until it has exited (blocking).
    pub fn stop(&self, grace: Duration) {
        self.proc.stop(grace);
    }

    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// (VmRSS, VmHWM) of a process, in kB.
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// Pids of live processes whose command line contains `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if !is_zombie && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The postmaster of a data folder, from its postmaster.pid, if that process lives.
pub fn postmaster(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// `kill -9` of exactly these pids.
pub fn kill9(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill").arg("-9").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
}

/// `kill -<signal>` of exactly one pid (a child of ours).
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}
