//! The tenant's side: psql through the gateway with `sslmode=verify-ca`, and a writer that
//! INSERTs continuously, one new connection per INSERT, recording when each was acknowledged,
//! so a benchmark can measure the write gap around an event and check no acknowledged write
//! was lost.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub fn psql_bin() -> &'static str {
    if Path::new("/usr/lib/postgresql/15/bin/psql").exists() {
        "/usr/lib/postgresql/15/bin/psql"
    } else {
        "psql"
    }
}

/// libpq's connect timeout for every psql: `$PGPLANE_BENCH_CONNECT_TIMEOUT` seconds, else 3
/// (libpq takes 2 as its minimum).
pub fn connect_timeout() -> u64 {
    std::env::var("PGPLANE_BENCH_CONNECT_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

/// One psql run: its trimmed output, or its error message. At most the connect timeout + 7 s.
pub async fn psql(url: &str, sql: &str) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(psql_bin());
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", connect_timeout().to_string())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(connect_timeout() + 7), cmd.output()).await {
        Err(_) => Err("psql timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// Retries `sql` until it answers `expected`; returns how long that took.
pub async fn eventually(url: &str, sql: &str, expected: &str, within: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let got = psql(url, sql).await;
        if got.as_deref() == Ok(expected) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > within {
            anyhow::bail!("{sql} answered {got:?}, not {expected:?}, for {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One INSERT attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
    /// psql's message when it failed (first line).
    pub error: Option<String>,
}

/// INSERTs `id` values into `table` through `url`, one psql (one new connection) each; after a
/// failure it waits `retry` before the next attempt.
pub struct Writer {
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(url: String, table: &str, first_id: i64, retry: Duration) -> Writer {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let (table, shared) = (table.to_string(), log.clone());
        let task = tokio::spawn(async move {
            let mut id = first_id;
            while !*stopped.borrow() {
                let start = Instant::now();
                let answer = psql(&url, &format!("INSERT INTO {table} (id) VALUES ({id}) RETURNING id")).await;
                let ok = answer.as_deref() == Ok(id.to_string().as_str());
                let error = match &answer {
                    Ok(_) if ok => None,
                    Ok(other) => Some(format!("answered {other:?}")),
                    Err(e) => Some(e.lines().next().unwrap_or("").to_string()),
                };
                shared.lock().unwrap().push(Attempt { id, start, end: Instant::now(), ok, error });
                id += 1;
                if !ok {
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        });
        Writer { log, stop, task }
    }

    /// Acknowledged writes that started after `t`.
    pub fn acks_after(&self, t: Instant) -> usize {
        self.log.lock().unwrap().iter().filter(|a| a.ok && a.start > t).count()
    }

    /// Waits until `n` writes started after `t` were acknowledged; false after `within`.
    pub async fn wait_acks_after(&self, t: Instant, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.acks_after(t) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops after the attempt in flight; returns every attempt.
    pub async fn stop(self) -> Vec<Attempt> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// The write gap around an event: from the last acknowledged write that ended at or before
/// `event`, the longest wait between two consecutive acknowledgements; and the attempts that
/// failed meanwhile (after that last acknowledgement).
#[derive(Debug, Clone)]
pub struct Gap {
    pub gap: Duration,
    pub failed: usize,
    pub acked: usize,
    /// The slowest attempt after that last acknowledgement, and whether it succeeded.
    pub slowest: (Duration, bool),
    /// The distinct errors of the failed attempts, in order.
    pub errors: Vec<String>,
}

pub fn write_gap(attempts: &[Attempt], event: Instant) -> Gap {
    let mut acks: Vec<Instant> = attempts.iter().filter(|a| a.ok).map(|a| a.end).collect();
    acks.sort();
    let from = acks.iter().rev().find(|t| **t <= event).copied().unwrap_or(event);
    let mut gap = Duration::ZERO;
    let mut prev = from;
    for &t in acks.iter().filter(|t| **t > from) {
        gap = gap.max(t - prev);
        prev = t;
    }
    let after: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= from).collect();
    let failed = after.iter().filter(|a| !a.ok).count();
    let slowest = after.iter().map(|a| (a.end - a.start, a.ok)).max().unwrap_or_default();
    let mut errors: Vec<String> = Vec::new();
    for e in after.iter().filter_map(|a| a.error.as_ref()) {
        // Host and port differ little between messages; keep the gist.
        let gist: String = e.chars().take(110).collect();
        if !errors.contains(&gist) {
            errors.push(gist);
        }
    }
    Gap { gap, failed, acked: attempts.iter().filter(|a| a.ok).count(), slowest, errors }
}

/// Acknowledged ids missing from `table` (read through `url`); Err when it cannot be read.
pub async fn lost_writes(url: &str, table: &str, attempts: &[Attempt]) -> Result<Vec<i64>, String> {
    let acked: Vec<i64> = attempts.iter().filter(|a| a.ok).map(|a| a.id).collect();
    let (Some(lo), Some(hi)) = (acked.iter().min(), acked.iter().max()) else { return Ok(Vec::new()) };
    let mut last = Err(String::new());
    for _ in 0..20 {
        last =
            psql(url, &format!("SELECT string_agg(id::text, ',') FROM {table} WHERE id BETWEEN {lo} AND {hi}")).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let present: std::collections::HashSet<i64> = last?.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    Ok(acked.into_iter().filter(|id| !present.contains(id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_spans_the_failed_attempts_after_the_event() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let a = |id, s, e, ok: bool| Attempt { id, start: at(s), end: at(e), ok, error: (!ok).then(|| "x".into()) };
        let log = vec![
            a(1, 0, 30, true),
            a(2, 30, 60, true),
            a(3, 60, 70, false),
            a(4, 100, 110, false),
            a(5, 140, 900, true),
            a(6, 900, 930, true),
        ];
        let g = write_gap(&log, at(65));
        assert_eq!((g.gap, g.failed, g.acked), (Duration::from_millis(840), 2, 4));
        // No failure: the gap is the usual interval.
        let g = write_gap(&log[..2], at(35));
        assert_eq!((g.gap, g.failed), (Duration::from_millis(30), 0));
    }
}
