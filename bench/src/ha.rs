//! What the failover, switchover and migrate benchmarks share: a database with a table to
//! write into, and a write window around an event (a writer running through the gateway from
//! before the event until writes have flowed again for a while).

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

use crate::client::{eventually, lost_writes, write_gap, Gap, Writer};
use crate::platform::Platform;

/// The table every writer inserts into.
pub const TABLE: &str = "w";

/// Creates a database of `plan` (waiting for it), its `w` table, and with `sync` synchronous
/// replication through the API. Returns (database id, verify-ca URL, seconds to create).
pub async fn database(p: &Platform, name: &str, plan: &str, sync: bool) -> Result<(String, String, f64)> {
    let t = Instant::now();
    let (db, op) = p.create_database(name, plan).await?;
    p.wait_operation(&op, Duration::from_secs(300)).await?;
    let url = p.url(&db).await?;
    let create =
        format!("CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    eventually(&url, &format!("{create}; SELECT 'ok'"), "ok", Duration::from_secs(60)).await?;
    let created = t.elapsed().as_secs_f64();
    if sync {
        let path = format!("/v1/databases/{db}/configuration");
        p.run_op(Method::PATCH, &path, &json!({ "synchronous_replication": true }), Duration::from_secs(120)).await?;
    }
    Ok((db, url, created))
}

/// What happened to the writes around one event.
pub struct Window {
    pub gap: Gap,
    /// Acknowledged writes missing afterwards.
    pub lost: usize,
}

/// Runs `event` while a writer inserts through `url`: the writer starts first and must get 10
/// writes acknowledged; after `event` returns, it goes on until `settle` has passed and 10 more
/// writes started after the event's end were acknowledged (at most `within`). `next_id` is
/// the first id to write, advanced past the ids used.
pub async fn around<F, T>(
    url: &str,
    next_id: &mut i64,
    settle: Duration,
    within: Duration,
    event: F,
) -> Result<(Window, T)>
where
    F: std::future::Future<Output = Result<(Instant, T)>>,
{
    let writer = Writer::start(url.to_string(), TABLE, *next_id, Duration::from_millis(25));
    if !writer.wait_acks_after(Instant::now(), 10, Duration::from_secs(30)).await {
        let attempts = writer.stop().await;
        bail!("writes through the gateway do not succeed before the event ({} attempts)", attempts.len());
    }
    let outcome = event.await;
    let (started, value) = match outcome {
        Ok(v) => v,
        Err(e) => {
            writer.stop().await;
            return Err(e);
        }
    };
    let ended = Instant::now();
    let resumed = writer.wait_acks_after(ended, 10, within).await;
    let rest = settle.saturating_sub(ended.elapsed());
    tokio::time::sleep(rest).await;
    let attempts = writer.stop().await;
    *next_id = attempts.iter().map(|a| a.id + 1).max().unwrap_or(*next_id);
    if !resumed {
        bail!("writes did not resume within {within:?} after the event");
    }
    let gap = write_gap(&attempts, started);
    let lost =
        lost_writes(url, TABLE, &attempts).await.map_err(anyhow::Error::msg).context("reading back the writes")?;
    Ok((Window { gap, lost: lost.len() }, value))
}
