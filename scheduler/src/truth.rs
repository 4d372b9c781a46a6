//! The control plane's view from the source of truth: every second, for every placed database,
//! one range read of its Patroni keys in etcd (`/service/<id>/`) says who holds the leader key,
//! who is the synchronous standby, and where each member's WAL is. Roles and leadership events
//! come from that (one event per change of holder, a fail-back included; agents' stale claims
//! count for nothing); replicas that diverged or stopped streaming are marked and re-cloned once
//! per detection.

use pgplane_core::agent::{AgentTask, PatroniApi};
use pgplane_core::ids::DatabaseId;
use pgplane_store::jobs::NewJob;
use pgplane_store::truth::{truth_lock_in, truth_record_in, truth_reinit_in, Suspicion, TruthRead};
use pgplane_store::workflow::secrets_get_in;
use pgplane_store::Store;
use std::time::Duration;
use tokio::sync::watch;

use crate::divergence::{judge, DcsView, Reported, Suspect};

/// How often etcd is read.
pub const TRUTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a replica must look diverged before it is shown so and re-cloned (a rejoining
/// former leader is rewound by Patroni within seconds; etcd's member keys lag by a loop).
pub const DIVERGED_GRACE_SECS: f64 = 10.0;
/// How long a running replica may not stream before it is shown so and re-cloned, unless the
/// scheduler's configuration says otherwise (`SchedulerConfig::not_streaming_grace`). A
/// replica that does not stream acknowledges no commit (Patroni's non-strict synchronous mode
/// drops it), so the leader holds everything it has: re-cloning it loses nothing.
pub const NOT_STREAMING_GRACE: Duration = Duration::from_secs(30);

/// etcd's answer is awaited this long per endpoint (the database's row is locked meanwhile).
pub const ETCD_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why one database's reading failed.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// etcd did not answer: the other databases' readings would not fare better this round.
    #[error("etcd: {0:#}")]
    Etcd(anyhow::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for TruthError {
    fn from(e: sqlx::Error) -> Self {
        TruthError::Other(e.into())
    }
}

impl From<pgplane_store::Error> for TruthError {
    fn from(e: pgplane_store::Error) -> Self {
        TruthError::Other(anyhow::anyhow!("{e}"))
    }
}

/// One database's reading gives up after this (a row lock held elsewhere, etcd slow on every
/// endpoint): the loop goes on with the next database and the next round.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(10);
/// While etcd keeps failing, the failure is logged again this often, and the client is made anew
/// (fresh connections and token, the first endpoint first): whatever state wedged it goes.
pub const ETCD_DOWN_RENEW: Duration = Duration::from_secs(30);

/// Reads etcd and records what it says until `shutdown`.
pub async fn run_truth(
    store: Store,
    mut etcd: pgplane_etcd::Client,
    not_streaming_grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Since when etcd has failed, and when that was last logged.
    let mut etcd_down: Option<(std::time::Instant, std::time::Instant)> = None;
    loop {
        match store.truth_databases().await {
            Ok(dbs) => {
                for db in dbs {
                    let reading =
                        tokio::time::timeout(RECONCILE_TIMEOUT, reconcile(&store, &etcd, db, not_streaming_grace))
                            .await
                            .unwrap_or_else(|_| {
                                Err(TruthError::Other(anyhow::anyhow!("no reading within {RECONCILE_TIMEOUT:?}")))
                            });
                    match reading {
                        Ok(()) => {
                            if let Some((since, _)) = etcd_down.take() {
                                tracing::info!(after = ?since.elapsed(), "etcd answers again");
                            }
                        }
                        Err(TruthError::Etcd(e)) => {
                            let now = std::time::Instant::now();
                            match &mut etcd_down {
                                None => {
                                    tracing::warn!(error = %format!("{e:#}"), "etcd does not answer: roles stay as last read");
                                    etcd_down = Some((now, now));
                                }
                                Some((since, logged)) if logged.elapsed() >= ETCD_DOWN_RENEW => {
                                    tracing::warn!(error = %format!("{e:#}"), down_for = ?since.elapsed(), "etcd still does not answer: reading with a new client");
                                    *logged = now;
                                    match pgplane_etcd::Client::with_timeout(etcd.access(), ETCD_TIMEOUT) {
                                        Ok(fresh) => etcd = fresh,
                                        Err(e) => tracing::error!(error = %e, "making a new etcd client failed"),
                                    }
                                }
                                Some(_) => {}
                            }
                            break;
                        }
                        Err(e) => tracing::warn!(database = %db, error = %e, "recording the database's leader failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing databases to watch failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TRUTH_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One database: lock its row, read etcd, record. The read happens under the lock so that two
/// schedulers (or a switchover's last step) cannot record an older holder after a newer one.
pub async fn reconcile(
    store: &Store,
    etcd: &pgplane_etcd::Client,
    db: DatabaseId,
    not_streaming_grace: Duration,
) -> Result<(), TruthError> {
    let mut tx = store.begin().await?;
    let Some(before) = truth_lock_in(&mut tx, db).await? else { return Ok(()) };
    let prefix = pgplane_etcd::scope_prefix(&db.to_string());
    let kvs = etcd.list(&prefix).await.map_err(TruthError::Etcd)?;
    let view = DcsView::parse(&prefix, &kvs);
    let reported = |name: &str| {
        before.members.iter().find(|m| m.name == name).map(|m| Reported {
            fresh: m.fresh,
            state: &m.state,
            streaming_replicas: &m.streaming_replicas,
        })
    };
    let leader = view.leader.as_deref().and_then(reported);
    let mut read = TruthRead {
        leader: view.leader.clone(),
        timeline: view.leader.as_ref().and_then(|l| view.members.get(l)).and_then(|m| m.timeline),
        sync: view.sync.clone(),
        suspects: Vec::new(),
    };
    for m in &before.members {
        let me = Reported { fresh: m.fresh, state: &m.state, streaming_replicas: &m.streaming_replicas };
        let suspect = match judge(&view, &m.name, me, leader) {
            Some(Suspect::Diverged(why)) => {
                Some(Suspicion { health: "diverged".into(), grace_secs: DIVERGED_GRACE_SECS, why })
            }
            Some(Suspect::NotStreaming(why)) => {
                Some(Suspicion { health: "not_streaming".into(), grace_secs: not_streaming_grace.as_secs_f64(), why })
            }
            None => None,
        };
        read.suspects.push((m.name.clone(), suspect));
    }
    let (change, due) = truth_record_in(&mut tx, db, &before, &read).await?;
    if let Some(c) = &change {
        tracing::warn!(database = %db, from = %c.from, to = %c.to, kind = %c.kind, "the leader key changed hands");
    }
    if !due.is_empty() {
        let secrets =
            secrets_get_in(&mut tx, db).await?.ok_or_else(|| TruthError::Other(anyhow::anyhow!("secrets missing")))?;
        for d in &due {
            let Some(m) = before.members.iter().find(|m| m.name == d.member) else { continue };
            let task = AgentTask::ReinitMember {
                database_id: db,
                generation: before.generation,
                member: m.name.clone(),
                api: PatroniApi {
                    host: m.host.clone(),
                    patroni_port: u16::try_from(m.patroni_port).map_err(anyhow::Error::from)?,
                    ca_pem: secrets.ca_cert_pem.clone(),
                    restapi_password: secrets.secrets.restapi_password.clone(),
                },
            };
            let mut job = NewJob::new(
                format!("agent:{}", m.agent_id),
                "reinit_member",
                serde_json::json!({ "task": serde_json::to_value(&task).map_err(anyhow::Error::from)? }),
            );
            job.database_id = Some(db);
            job.generation = Some(before.generation);
            job.max_attempts = 3;
            if truth_reinit_in(&mut tx, db, d, &job).await? {
                tracing::warn!(database = %db, member = %d.member, health = %d.health, why = %d.why, "re-cloning a replica");
            }
        }
    }
    tx.commit().await?;
    Ok(())
}
