//! The partition lab: pgplane on three database "hosts" and a control plane, each a network
//! namespace of this machine on a private bridge, driven as a user would drive real hosts (an etcd
//! member and an agent per host, a VIP moved by keepalived), with faults injected (partitions, a
//! lost host, a slow link) under writes. `run` makes the lab, runs scenarios one after another on
//! one Business database, and removes everything, also when a run fails or panics (its files
//! stay when `PGPLANE_LAB_KEEP_DIR` is set). Needs root, nftables, iproute2, etcd and keepalived.

pub mod net;
pub mod plane;
pub mod scenario;
pub mod writer;

pub use net::is_root;
pub use plane::Programs;
pub use scenario::{RunReport, Scenario};

use anyhow::{Context, Result};
use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub programs: Programs,
    pub scenarios: Vec<Scenario>,
    /// Runs of each scenario.
    pub repeats: usize,
    /// How long each fault lasts.
    pub hold: Duration,
    /// How long a writer waits for one INSERT (connecting included) before it gives up and
    /// retries (`writer::WRITE_TIMEOUT` by default).
    pub write_timeout: Duration,
    /// Synchronous replication on (a Business database's default) or off (as a tenant turns it
    /// off through the API).
    pub synchronous: bool,
    /// Print the tails of every process's log at the end even when all runs succeeded (they are
    /// printed when a run fails).
    pub keep_logs: bool,
}

/// Makes the lab, runs `repeats` rounds of every scenario in order (so a long run stopped early
/// has figures for each), calling `on_report` after each run, and removes the lab. Stops at the first run that fails
/// (after printing the tails of the processes' logs).
pub fn run(options: Options, mut on_report: impl FnMut(&RunReport) + Send + 'static) -> Result<Vec<RunReport>> {
    let net = net::Net::create().context("making the lab's namespaces")?;
    let dir = std::env::temp_dir().join(format!("pgplane-lab-{}", net.prefix.rsplit('.').next().unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
    let (cp, thread_dir) = (net.control.ns.clone(), dir.clone());
    // The net is shared with the thread; it is dropped (namespaces deleted) after the thread ends.
    let net = std::sync::Arc::new(net);
    let thread_net = net.clone();
    let handle = std::thread::spawn(move || -> Result<Vec<RunReport>> {
        thread_net.enter_control().with_context(|| format!("entering {cp}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        rt.block_on(async move {
            let mut plane = plane::Plane::start(&thread_net, &options.programs, &thread_dir).await?;
            let result = async {
                let mut db = scenario::Database::create(&plane, &thread_dir, options.synchronous)
                    .await
                    .context("the Business database")?;
                let mut reports = Vec::new();
                for i in 0..options.repeats {
                    for &s in &options.scenarios {
                        let report =
                            scenario::run(s, &thread_net, &mut plane, &mut db, options.hold, options.write_timeout)
                                .await
                                .with_context(|| format!("{} run {}", s.name(), i + 1))?;
                        on_report(&report);
                        reports.push(report);
                    }
                }
                Ok::<_, anyhow::Error>(reports)
            }
            .await;
            if result.is_err() || options.keep_logs {
                for log in plane.logs() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- {} ---\n{}", log.display(), lines[lines.len().saturating_sub(30)..].join("\n"));
                }
            }
            drop(plane);
            result
        })
    });
    let result = match handle.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the lab's thread panicked")),
    };
    drop(net);
    if std::env::var_os("PGPLANE_LAB_KEEP_DIR").is_some() {
        eprintln!("the lab's files and logs stay in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
