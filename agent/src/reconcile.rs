//! The reconciler: makes what runs match the specs persisted on this node, when the agent starts
//! and every few seconds. A live process is adopted or left alone (so an agent restart never
//! restarts a healthy database); a dead one is started again; a database being removed is skipped.

use crate::haproxy::GatewayPaths;
use crate::keepalived;
use crate::node::{bin_dir_for, Node, Outcome, Processes};
use crate::patroni::MemberPaths;
use crate::specs;
use anyhow::Result;
use pgplane_core::agent::{GatewaySpec, MemberSpec};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What one pass found and did, counted in processes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Ours and running their configuration.
    pub unchanged: usize,
    /// Found running after a restart of the agent, and kept.
    pub adopted: usize,
    /// Started again (exited, killed, or never started).
    pub started: usize,
    /// Told to re-read a changed configuration.
    pub reloaded: usize,
    /// Skipped this pass: a job holds the database.
    pub busy: usize,
    pub failed: usize,
}

impl Reconciled {
    fn count(&mut self, outcome: Result<Outcome>, what: &str) {
        match outcome {
            Ok(Outcome::Unchanged) => self.unchanged += 1,
            Ok(Outcome::Adopted) => self.adopted += 1,
            Ok(Outcome::Started | Outcome::Restarted) => self.started += 1,
            Ok(Outcome::Reloaded) => self.reloaded += 1,
            Err(e) => {
                tracing::warn!(%what, error = format!("{e:#}"), "reconciling failed; trying again next pass");
                self.failed += 1;
            }
        }
    }

    /// True when the pass changed or failed something worth a log line.
    pub fn eventful(&self) -> bool {
        self.adopted + self.started + self.reloaded + self.failed > 0
    }
}

impl Node {
    /// One pass over every database with persisted specs. Databases a job is working on are
    /// skipped (the job makes them right); it never waits for PostgreSQL to be ready.
    pub async fn reconcile(&self) -> Reconciled {
        crate::reaper::reap_orphans();
        let mut out = Reconciled::default();
        for id in specs::databases(&self.root) {
            let db = self.database(id);
            let Ok(mut procs) = db.try_lock() else {
                out.busy += 1;
                continue;
            };
            if specs::removing(&self.root, id).is_some() {
                continue;
            }
            let persisted = specs::load(&self.database_dir(id), id);
            for spec in &persisted.members {
                let what = format!("member {} of {id}", spec.member);
                out.count(self.reconcile_member(&mut procs, spec).await, &what);
            }
            for spec in &persisted.gateways {
                let what = format!("gateway {} of {id}", spec.name);
                out.count(self.reconcile_gateway(&mut procs, spec).await, &what);
                if spec.vip.is_some() || self.database_dir(id).join(keepalived::dir_name(&spec.name)).exists() {
                    let gateway = GatewayPaths::new(self.gateway_dir(id, &spec.name));
                    out.count(self.run_vip(&mut procs, spec, &gateway).await, &format!("VIP of {what}"));
                }
                if let Err(e) = self.lapse_drains(id, &spec.name).await {
                    tracing::warn!(%what, error = format!("{e:#}"), "lifting a lapsed drain failed; trying again next pass");
                }
            }
        }
        out
    }

    async fn reconcile_member(&self, procs: &mut Processes, spec: &MemberSpec) -> Result<Outcome> {
        let paths = MemberPaths::new(self.member_dir(spec.database_id, &spec.member));
        let applied = self.write_member_files(spec, &paths, &bin_dir_for(&spec.version)?)?;
        self.run_member(procs, spec, &paths, &applied).await
    }

    async fn reconcile_gateway(&self, procs: &mut Processes, spec: &GatewaySpec) -> Result<Outcome> {
        let paths = GatewayPaths::new(self.gateway_dir(spec.database_id, &spec.name));
        let applied = self.write_gateway_files(spec, &paths)?;
        let outcome = self.run_gateway(procs, spec, &paths, &applied).await?;
        if outcome == Outcome::Adopted {
            crate::node::sync_allowlist(spec, &paths).await?;
        }
        Ok(outcome)
    }
}

/// Reconciles every `every`, and soon after a child of the agent exits, until `shutdown`
/// turns true.
pub async fn run_loop(node: Arc<Node>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // A child exited: look now (after a moment, so that one that was stopped on
            // purpose has been replaced or forgotten by the job that stopped it).
            _ = crate::process::EXITED.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let pass = node.reconcile().await;
        if pass.eventful() {
            tracing::info!(?pass, "reconciled");
        }
    }
}
