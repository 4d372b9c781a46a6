//! Data-plane processes that outlive the agent: started in their own session with no parent-death
//! signal and reaped by us while we live; a pid file in their folder (pid, start time, applied
//! configuration) lets a restarted agent re-adopt a live one, recognized by its command line.

use crate::files::write_atomic;
use anyhow::{Context, Result};
use pgplane_localpg::Supervised;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Woken when a process this agent started exits (stopped on purpose or crashed), so the
/// reconciler starts a crashed one again at once instead of at its next pass.
pub static EXITED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A running Patroni or HAProxy: our child, or one adopted after a restart of the agent.
pub struct Managed {
    pid: u32,
    start_time: u64,
    /// Digest of what it runs (configuration and TLS material); empty when unknown.
    applied: String,
    stop_signal: i32,
    /// Present when we started it: the thread that reaps it.
    child: Option<Supervised>,
}

/// The digest recorded for an applied configuration.
pub fn digest(applied: &str) -> String {
    hex::encode(Sha256::digest(applied.as_bytes()))
}

impl Managed {
    /// Starts `cmd` (whose arguments name `config`) detached, recording it in `pidfile`. The
    /// record is written before the spawn too, so a crash in between leaves the digest of what
    /// the process that the scan will find runs.
    pub fn start(cmd: Command, stop_signal: i32, pidfile: &Path, applied: &str) -> Result<Self> {
        let applied = digest(applied);
        write_atomic(pidfile, &format!("applied {applied}\n"), None)?;
        let child = Supervised::spawn_detached_notify(cmd, stop_signal, Box::new(|| EXITED.notify_one()))?;
        let pid = child.pid();
        let start_time = start_time(pid).unwrap_or(0);
        write_atomic(pidfile, &format!("pid {pid}\nstart {start_time}\napplied {applied}\n"), None)?;
        Ok(Managed { pid, start_time, applied, stop_signal, child: Some(child) })
    }

    /// The live process running `config`, if any: the one `pidfile` names when it still runs
    /// `config`, else any process whose arguments name `config` and pass `is_server` (which
    /// tells the server from a passing tool naming the same file, like `haproxy -c` or
    /// `patronictl`). Several found: all are stopped and none is adopted, so a fresh one starts.
    pub fn adopt(pidfile: &Path, config: &Path, stop_signal: i32, is_server: fn(&[String]) -> bool) -> Option<Self> {
        let record = std::fs::read_to_string(pidfile).unwrap_or_default();
        let field = |k: &str| record.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')).map(str::trim);
        let applied = field("applied").unwrap_or_default().to_string();
        if let (Some(pid), Some(start)) = (field("pid"), field("start")) {
            if let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) {
                if runs(pid, config, is_server) && start_time(pid) == Some(start) {
                    return Some(Managed { pid, start_time: start, applied, stop_signal, child: None });
                }
            }
        }
        let found = processes_naming(config, is_server);
        // Only a record without a pid (written just before a spawn) vouches for a found process.
        let applied = if field("pid").is_none() { applied } else { String::new() };
        match found.as_slice() {
            [] => None,
            [(pid, start)] => Some(Managed { pid: *pid, start_time: *start, applied, stop_signal, child: None }),
            many => {
                tracing::error!(config = %config.display(), count = many.len(), "several processes run one configuration; stopping them all");
                for &(pid, start) in many {
                    Managed { pid, start_time: start, applied: String::new(), stop_signal, child: None }
                        .stop(Duration::from_secs(30));
                }
                None
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn applied(&self) -> &str {
        &self.applied
    }

    /// True when we started it (and so reap it), false when adopted.
    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// None while it runs; how it ended otherwise (an adopted process's status is not ours to see).
    pub fn exited(&self) -> Option<String> {
        match &self.child {
            Some(child) => child.exit_status().map(|s| s.to_string()),
            None => (!self.still_adopted()).then(|| "gone".to_string()),
        }
    }

    fn still_adopted(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && alive(self.pid)
    }

    /// Asks it to re-read its configuration (SIGHUP) and records `applied` as what it runs now.
    pub fn reload(&mut self, pidfile: &Path, applied: &str) -> Result<()> {
        if self.exited().is_some() {
            anyhow::bail!("process {} is gone", self.pid);
        }
        let applied = digest(applied);
        write_atomic(pidfile, &format!("pid {}\nstart {}\napplied {applied}\n", self.pid, self.start_time), None)?;
        send_signal(self.pid, libc::SIGHUP);
        self.applied = applied;
        Ok(())
    }

    /// Sends `signal` (a soft stop: HAProxy's SIGUSR1 stops listening and lets its sessions
    /// end) and waits up to `grace` for it to exit, then stops it (`stop(then)`).
    pub fn stop_softly(&self, signal: i32, grace: Duration, then: Duration) {
        if self.exited().is_none() {
            match &self.child {
                Some(child) => child.signal(signal),
                None => send_signal(self.pid, signal),
            }
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stop(then);
    }

    /// Sends the stop signal and waits up to `grace`, then SIGKILL, and waits until it is gone.
    pub fn stop(&self, grace: Duration) {
        if let Some(child) = &self.child {
            child.stop(grace);
            return;
        }
        for (signal, wait) in [(self.stop_signal, grace), (libc::SIGKILL, Duration::from_secs(30))] {
            if !self.still_adopted() {
                return;
            }
            send_signal(self.pid, signal);
            let deadline = Instant::now() + wait;
            while self.still_adopted() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// kill(2) on a process checked to be the one meant just before.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill takes no pointers.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// The pid file of a process kept in `dir`.
pub fn pidfile(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("{program}.pid"))
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with(['Z', 'X'])))
        .unwrap_or(false)
}

/// The arguments of a live process (empty for zombies and kernel threads).
pub fn arguments(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// True when `pid` is alive, one of its arguments is `config`, and they pass `is_server`.
fn runs(pid: u32, config: &Path, is_server: fn(&[String]) -> bool) -> bool {
    let args = arguments(pid);
    alive(pid) && args.iter().any(|a| Path::new(a) == config) && is_server(&args)
}

/// Live processes one of whose arguments is `config`, with their start times.
fn processes_naming(config: &Path, is_server: fn(&[String]) -> bool) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found: Vec<(u32, u64)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && runs(pid, config, is_server))
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect();
    found.sort();
    found
}

/// Pids of live processes with an argument inside `dir` (a database's or member's folder).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && alive(pid))
        .filter(|&pid| arguments(pid).iter().any(|a| Path::new(a).starts_with(dir)))
        .collect()
}

/// Waits until no live process has an argument inside `dir`, up to `timeout`.
pub fn wait_none_under(dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("processes {left:?} still run in {}", dir.display()))
                .context("stopping the database's processes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_tail(args: &[String]) -> bool {
        args.first().is_some_and(|a| a.ends_with("tail")) && args.iter().any(|a| a == "-f")
    }

    #[test]
    fn a_detached_process_is_recorded_recognized_and_adopted() {
        let dir = std::env::temp_dir().join(format!("pgplane-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("tail.conf");
        std::fs::write(&config, "").unwrap();
        let pidfile = pidfile(&dir, "tail");
        let mut cmd = Command::new("tail");
        cmd.arg("-f").arg(&config);
        let started = Managed::start(cmd, libc::SIGTERM, &pidfile, "v1").unwrap();
        assert!(started.is_child() && started.exited().is_none());
        let adopted = Managed::adopt(&pidfile, &config, libc::SIGTERM, is_tail).expect("adopted");
        assert_eq!((adopted.pid(), adopted.applied()), (started.pid(), digest("v1").as_str()));
        assert!(!adopted.is_child());
        assert_eq!(processes_under(&dir), vec![started.pid()]);
        // Something else naming the file is not taken for the server.
        assert!(Managed::adopt(&pidfile, &config, libc::SIGTERM, |_| false).is_none());
        // Without its pid file it is still found by its arguments, with an unknown digest.
        std::fs::remove_file(&pidfile).unwrap();
        let found = Managed::adopt(&pidfile, &config, libc::SIGTERM, is_tail).expect("found");
        assert_eq!((found.pid(), found.applied()), (started.pid(), ""));
        found.stop(Duration::from_secs(5));
        assert!(started.wait_gone(Duration::from_secs(5)));
        assert!(Managed::adopt(&pidfile, &config, libc::SIGTERM, is_tail).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    impl Managed {
        fn wait_gone(&self, timeout: Duration) -> bool {
            let deadline = Instant::now() + timeout;
            while self.exited().is_none() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        }
    }
}
