//! `pgplane doctor`: checks this machine as a database host and as `pgplane up`'s (every
//! program pgplane drives with its version, the state folder, the kernel setting, Patroni's
//! Python reaching etcd over https, HAProxy checking over TLS). One line per check; the exit
//! status is non-zero when a required check fails. The agent runs the same checks at start.

use pgplane_agent::doctor;
use pgplane_core::agent::CheckStatus;
use std::path::PathBuf;

/// The catalog's default PostgreSQL version (seeded by the first migration): checked even when
/// no PostgreSQL is installed, to say what to install.
const DEFAULT_VERSION: &str = "15";

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The state folder to check (default: `up`'s, /var/lib/pgplane as root, else
    /// ~/.local/state/pgplane; for an agent, its --root).
    #[arg(long, env = "PGPLANE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A PostgreSQL major version that must be runnable here (repeat for several; every
    /// version installed is checked anyway). Default: 15, the catalog's default.
    #[arg(long = "pg-version")]
    pg_versions: Vec<String>,
    /// Skip the checks that start a short-lived etcd, TLS server and HAProxy.
    #[arg(long)]
    quick: bool,
}

/// Prints one line per check; false when a required one failed.
pub async fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let mut versions = args.pg_versions;
    if versions.is_empty() {
        versions.push(DEFAULT_VERSION.to_string());
    }
    let options = doctor::Options {
        state_dir: args.state_dir.unwrap_or_else(crate::up::default_state_dir),
        versions,
        exercise: !args.quick,
    };
    let capabilities = tokio::task::spawn_blocking(move || doctor::run(&options)).await?;
    for check in &capabilities.checks {
        println!("{}", doctor::line(check));
    }
    let failed = capabilities.checks.iter().filter(|c| c.status == CheckStatus::Fail).count();
    if failed > 0 {
        println!("{failed} required check(s) failed");
    } else {
        println!("this machine can run pgplane");
    }
    Ok(failed == 0)
}
