//! The control-plane PostgreSQL of the platform benchmarks: a private server in a fresh folder,
//! durable by default (fsync on, as in production, unlike the tests' throw-away servers),
//! stopped and removed when dropped.

use anyhow::{Context, Result};
use pgplane_localpg::{find_bindir, Durability, LocalPg};
use std::path::PathBuf;

pub struct ControlPg {
    pg: Option<LocalPg>,
    dir: PathBuf,
    pub url: String,
    pub durable: bool,
}

impl ControlPg {
    pub async fn start(durable: bool) -> Result<Self> {
        let bindir = find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(std::path::Path::new))
            .context("PostgreSQL binaries (set PGPLANE_PG_BINDIR)")?;
        let dir = std::env::temp_dir().join(format!("pgb-cp-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let durability = if durable { Durability::Durable } else { Durability::Ephemeral };
        let start_dir = dir.clone();
        let pg = tokio::task::spawn_blocking(move || LocalPg::start(&start_dir, &bindir, durability)).await??;
        let url = pg.url("postgres");
        Ok(ControlPg { pg: Some(pg), dir, url, durable })
    }

    /// Stops the server and removes its folder.
    pub fn stop(&mut self) {
        if let Some(mut pg) = self.pg.take() {
            pg.stop();
            drop(pg);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn describe(&self) -> &'static str {
        if self.durable {
            "private PostgreSQL 15, fsync on, synchronous_commit on"
        } else {
            "private PostgreSQL 15, fsync off, synchronous_commit off"
        }
    }
}

impl Drop for ControlPg {
    fn drop(&mut self) {
        self.stop();
    }
}
