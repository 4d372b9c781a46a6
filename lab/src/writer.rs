//! The tenant's writers: several on the database's connection URL (its VIP), each INSERTing
//! increasing ids with a new psql connection per INSERT (as a reconnecting client does), giving
//! an INSERT up after a timeout (`WRITE_TIMEOUT` unless the lab is told otherwise; as a client with a timeout does: a connection to a host
//! that vanished hangs), and recording which inserts were acknowledged, when, and by which member
//! (`inet_server_addr()`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub fn psql_bin() -> &'static str {
    if std::path::Path::new("/usr/lib/postgresql/15/bin/psql").exists() {
        "/usr/lib/postgresql/15/bin/psql"
    } else {
        "psql"
    }
}

/// How long a writer waits by default for one INSERT (connecting included) before it gives up and
/// retries.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// One psql run: its trimmed output or its error.
pub async fn psql(url: &str, sql: &str) -> Result<String, String> {
    psql_within(url, sql, Duration::from_secs(8)).await
}

/// One psql run given up after `within`.
pub async fn psql_within(url: &str, sql: &str, within: Duration) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(psql_bin());
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .kill_on_drop(true);
    match tokio::time::timeout(within, cmd.output()).await {
        Err(_) => Err("psql timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// One INSERT attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub start: Instant,
    pub end: Instant,
    /// The member that acknowledged it; `None`: not acknowledged.
    pub acked_by: Option<String>,
}

/// Writers running in the background until `stop`.
pub struct Writers {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// One writer per URL; writer `w` of `n` writes ids `first + k·n + w`, giving each INSERT up
    /// after `timeout`.
    pub fn start(urls: &[String], first: i64, timeout: Duration) -> Writers {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (stop, rx) = watch::channel(false);
        let n = urls.len() as i64;
        let tasks = urls
            .iter()
            .enumerate()
            .map(|(w, url)| {
                let (url, attempts, rx) = (url.clone(), attempts.clone(), rx.clone());
                tokio::spawn(async move {
                    let mut id = first + w as i64;
                    while !*rx.borrow() {
                        let start = Instant::now();
                        let sql = format!("INSERT INTO lab (id) VALUES ({id}) RETURNING inet_server_addr()");
                        let acked_by = psql_within(&url, &sql, timeout)
                            .await
                            .ok()
                            .map(|a| a.split('/').next().unwrap_or("").into());
                        let failed = acked_by.is_none();
                        attempts.lock().unwrap().push(Attempt { id, start, end: Instant::now(), acked_by });
                        id += n;
                        if failed {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect();
        Writers { attempts, stop, tasks }
    }

    /// Stops the writers; every attempt made.
    pub async fn stop(self) -> Vec<Attempt> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut all = self.attempts.lock().unwrap().clone();
        all.sort_by_key(|a| a.end);
        all
    }
}

/// The longest time without an acknowledged write, from `from` to the last attempt.
pub fn longest_gap(attempts: &[Attempt], from: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for a in attempts.iter().filter(|a| a.acked_by.is_some() && a.end >= from) {
        gap = gap.max(a.end - last);
        last = a.end;
    }
    if let Some(end) = attempts.last().map(|a| a.end) {
        gap = gap.max(end.saturating_duration_since(last));
    }
    gap
}
