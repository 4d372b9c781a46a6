//! The `pgplane` binary.

mod backups;
mod bootstrap;
mod client;
mod doctor;
mod etcd;
mod up;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pgplane_api::{ApiConfig, AppState, JwtKeys};
use pgplane_store::Store;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "pgplane", version, about = "Managed PostgreSQL control plane")]
struct Cli {
    /// Log format: `text` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long, global = true, env = "PGPLANE_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts everything on embedded defaults: a private control-plane PostgreSQL (unless
    /// --database-url is given), etcd, the API, the scheduler and three local agents.
    #[command(long_about = up::LONG_ABOUT, after_help = up::AFTER_HELP)]
    Up(up::UpArgs),
    /// Runs the API against an existing control-plane database.
    Api(ApiArgs),
    /// Applies the control-plane migrations and exits.
    Migrate(DbArgs),
    /// Creates a platform operator (or a new API token for one) and prints the token once; on
    /// `up`'s state folder when no database URL is given.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Prints the OpenAPI document.
    Openapi,
    /// A database's logical backups, through the API: list, create, show, delete, download,
    /// restore, quota.
    Backups(backups::BackupsArgs),
    /// Runs the scheduler: workflows, lease reaping and the agent API.
    Scheduler(SchedulerArgs),
    /// Runs a node agent: drives PostgreSQL, Patroni and HAProxy on this host.
    Agent(AgentArgs),
    /// Checks this machine: the programs pgplane drives and their versions, the state folder,
    /// Patroni reaching etcd over https, HAProxy checking over TLS. Says what to install.
    Doctor(doctor::DoctorArgs),
    /// Prepares an etcd that pgplane does not start itself as `up` prepares its own: https with
    /// a CA of its own, authentication on with a `root` user.
    #[command(subcommand)]
    Etcd(etcd::EtcdCommand),
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_string()))
}

#[derive(clap::Args)]
struct DbArgs {
    /// Control-plane database URL.
    #[arg(long, env = "PGPLANE_DATABASE_URL", value_parser = secret, hide_env_values = true)]
    database_url: SecretString,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address the API listens on.
    #[arg(long, env = "PGPLANE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Requests per second allowed per API token.
    #[arg(long, env = "PGPLANE_RATE_LIMIT_PER_SECOND", default_value_t = ApiConfig::default().rate_per_second)]
    rate_limit_per_second: u32,
    /// Requests a token may burst before the per-second limit applies.
    #[arg(long, env = "PGPLANE_RATE_LIMIT_BURST", default_value_t = ApiConfig::default().rate_burst)]
    rate_limit_burst: u32,
    /// Connections the API keeps to the control-plane database.
    #[arg(long, env = "PGPLANE_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: u32,
    /// The API's address as the platform's clients reach it, e.g. `https://api.example.com`:
    /// backup download links name it. Without it, a link names the address its request was
    /// sent to (`http://` and the `Host` header).
    #[arg(long, env = "PGPLANE_PUBLIC_URL")]
    public_url: Option<String>,
}

#[derive(clap::Args)]
struct ApiArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    serve: ServeArgs,
    /// Secret that signs access tokens (at least 32 bytes); every API process of a platform
    /// must share it.
    #[arg(long, env = "PGPLANE_JWT_SECRET", value_parser = secret, hide_env_values = true)]
    jwt_secret: Option<SecretString>,
    /// File holding the signing secret (instead of --jwt-secret).
    #[arg(long, env = "PGPLANE_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// The backup storage's configuration (the agents' `--backup-storage` file): backups are
    /// downloaded from there. Without it, downloads fail (logged as an internal error).
    #[arg(long, env = "PGPLANE_BACKUP_STORAGE")]
    backup_storage: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Address the agent API listens on.
    #[arg(long, env = "PGPLANE_AGENT_LISTEN", default_value = "127.0.0.1:8081")]
    agent_listen: SocketAddr,
    /// Shared secret agents present to register.
    #[arg(long, env = "PGPLANE_AGENT_BOOTSTRAP_TOKEN", value_parser = secret, hide_env_values = true)]
    agent_bootstrap_token: SecretString,
    #[command(flatten)]
    etcd: etcd::EtcdArgs,
    /// Virtual IPs for databases whose gateways are on several hosts, as `first-last` (at most
    /// 255 addresses on the gateway hosts' private network, used by nothing else): keepalived
    /// on the gateway hosts moves a database's VIP to a live one, and its connection URL names
    /// it. Without it, that URL names the database's first gateway host.
    #[arg(long, env = "PGPLANE_GATEWAY_VIPS")]
    gateway_vips: Option<pgplane_scheduler::config::VipPool>,
    /// Seconds a running replica may not stream from its leader before it is shown
    /// `not_streaming` and re-cloned.
    #[arg(long, env = "PGPLANE_NOT_STREAMING_GRACE_SECS", default_value_t = pgplane_scheduler::truth::NOT_STREAMING_GRACE.as_secs())]
    not_streaming_grace_secs: u64,
    /// Seconds without news from an agent (heartbeats every 5 s) after which its host counts as
    /// lost: operations waiting on it end in `error`, removals on it are skipped, and
    /// cluster-wide requests go through another member.
    #[arg(long, env = "PGPLANE_AGENT_LOST_AFTER_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(10..))]
    agent_lost_after_secs: u64,
    /// The backup storage's configuration (the agents' `--backup-storage` file): the scheduler
    /// deletes evicted and deleted backups' objects there.
    #[arg(long, env = "PGPLANE_BACKUP_STORAGE")]
    backup_storage: Option<PathBuf>,
}

impl SchedulerArgs {
    /// The etcd access the scheduler administers, read from the files given.
    fn etcd(&self) -> Result<pgplane_core::agent::EtcdAccess> {
        let access = self.etcd.access()?;
        if access.password.is_none() {
            tracing::warn!("no --etcd-root-password-file: databases share etcd without users of their own");
        }
        Ok(access)
    }
}

async fn run_scheduler(args: SchedulerArgs) -> Result<()> {
    let store = Store::connect(args.db.database_url.expose_secret(), pgplane_scheduler::run::POOL_SIZE).await?;
    store.migrate().await?;
    let config = pgplane_scheduler::config::SchedulerConfig {
        etcd: args.etcd()?,
        bootstrap_token: args.agent_bootstrap_token.expose_secret().to_string(),
        gateway_vips: args.gateway_vips.clone(),
        not_streaming_grace: std::time::Duration::from_secs(args.not_streaming_grace_secs),
        agent_lost_after: std::time::Duration::from_secs(args.agent_lost_after_secs),
        backup_storage: match &args.backup_storage {
            Some(file) => Some(pgplane_storage::BackupStore::open(&pgplane_storage::StorageConfig::load(file)?)?),
            None => None,
        },
    };
    let listener = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("listening on {} (choose another with --agent-listen)", args.agent_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "agent API listening");
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    pgplane_scheduler::run::run(store, config, listener, rx).await;
    Ok(())
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The scheduler's agent API.
    #[arg(long, env = "PGPLANE_SCHEDULER_URL", default_value = "http://127.0.0.1:8081")]
    scheduler_url: String,
    /// Shared secret to register with.
    #[arg(long, env = "PGPLANE_AGENT_BOOTSTRAP_TOKEN", value_parser = secret, hide_env_values = true)]
    bootstrap_token: SecretString,
    /// Unique name of this agent.
    #[arg(long, env = "PGPLANE_AGENT_NAME")]
    name: String,
    /// Private address: other hosts and the platform's clients reach this host's services at it.
    #[arg(long, env = "PGPLANE_AGENT_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Public address: the gateways of databases exposed to the internet listen there too
    /// (only while exposed, admitting each database's allowlist). Defaults to --host.
    #[arg(long, env = "PGPLANE_AGENT_PUBLIC_HOST")]
    public_host: Option<String>,
    /// Memory and disk this host offers to databases.
    #[arg(long, env = "PGPLANE_AGENT_MEMORY_MB", default_value_t = 4096)]
    memory_mb: i64,
    #[arg(long, env = "PGPLANE_AGENT_DISK_GB", default_value_t = 100)]
    disk_gb: i64,
    /// Ports this host may give to members and gateways.
    #[arg(long, env = "PGPLANE_AGENT_PORT_MIN", default_value_t = 25000)]
    port_min: i32,
    #[arg(long, env = "PGPLANE_AGENT_PORT_MAX", default_value_t = 25999)]
    port_max: i32,
    /// Folder for the databases' files on this host.
    #[arg(long, env = "PGPLANE_AGENT_ROOT", default_value = "/var/lib/pgplane/agent")]
    root: PathBuf,
    /// The backup storage's configuration: a JSON file, `{"kind": "local", "root": "/srv/backups"}`
    /// or `{"kind": "s3", "endpoint": …, "bucket": …, "credentials_file": …, "ca_file": …}`.
    /// Without it this host takes no backups (its backup jobs fail saying so).
    #[arg(long, env = "PGPLANE_BACKUP_STORAGE")]
    backup_storage: Option<PathBuf>,
    /// On SIGTERM/SIGINT, stop the databases too. By default they keep running (the data plane
    /// outlives the agent, as after a crash) and the next agent re-adopts them; under systemd use
    /// KillMode=process so that stopping the unit does not kill them either.
    #[arg(long, env = "PGPLANE_AGENT_STOP_DATABASES_ON_EXIT")]
    stop_databases_on_exit: bool,
}

impl AgentArgs {
    pub fn config(&self) -> Result<pgplane_agent::runtime::AgentConfig> {
        Ok(pgplane_agent::runtime::AgentConfig {
            scheduler_url: self.scheduler_url.clone(),
            bootstrap_token: self.bootstrap_token.expose_secret().to_string(),
            name: self.name.clone(),
            host: self.host.clone(),
            public_host: self.public_host.clone().unwrap_or_else(|| self.host.clone()),
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            port_min: self.port_min,
            port_max: self.port_max,
            root: self.root.clone(),
            backup_storage: self.backup_storage.as_deref().map(pgplane_storage::StorageConfig::load).transpose()?,
        })
    }
}

async fn run_agent(args: AgentArgs) -> Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    let on_exit = if args.stop_databases_on_exit {
        pgplane_agent::lifecycle::OnExit::StopDatabases
    } else {
        pgplane_agent::lifecycle::OnExit::LeaveRunning
    };
    pgplane_agent::runtime::run_with(args.config()?, rx, on_exit).await
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a terminal, and never with NO_COLOR set (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Api(args) => run_api(args).await,
        Command::Migrate(args) => {
            let store = Store::connect(args.database_url.expose_secret(), 2).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Bootstrap(args) => bootstrap::run(args).await,
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&pgplane_api::openapi())?);
            Ok(())
        }
        Command::Scheduler(args) => run_scheduler(args).await,
        Command::Backups(args) => backups::run(args).await,
        Command::Agent(args) => run_agent(args).await,
        Command::Doctor(args) => {
            if !doctor::run(args).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Etcd(command) => etcd::run(command).await,
    }
}

pub fn jwt_keys(secret: &[u8]) -> Result<JwtKeys> {
    anyhow::ensure!(secret.len() >= 32, "the JWT signing secret must be at least 32 bytes");
    Ok(JwtKeys::from_secret(secret))
}

async fn run_api(args: ApiArgs) -> Result<()> {
    let secret = match (&args.jwt_secret, &args.jwt_secret_file) {
        (Some(s), _) => s.expose_secret().as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .as_bytes()
            .to_vec(),
        (None, None) => anyhow::bail!("give the access-token signing secret with --jwt-secret or --jwt-secret-file"),
    };
    let backups = match &args.backup_storage {
        Some(file) => Some(pgplane_storage::BackupStore::open(&pgplane_storage::StorageConfig::load(file)?)?),
        None => {
            tracing::warn!("no --backup-storage: backups cannot be downloaded through this API");
            None
        }
    };
    let store = Store::connect(args.db.database_url.expose_secret(), args.serve.db_pool_size).await?;
    store.migrate().await?;
    serve(store, &secret, backups, &args.serve, |addr| tracing::info!(%addr, "API listening")).await
}

/// Runs the API until Ctrl-C or SIGTERM: access tokens signed with `jwt_secret`, backups
/// downloaded from `backups` (their links signed with a key derived from the same secret).
pub async fn serve(
    store: Store,
    jwt_secret: &[u8],
    backups: Option<pgplane_storage::BackupStore>,
    args: &ServeArgs,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<()> {
    let config = ApiConfig { rate_per_second: args.rate_limit_per_second, rate_burst: args.rate_limit_burst };
    let mut state = AppState::new(store, jwt_keys(jwt_secret)?, &config);
    if let Some(backups) = backups {
        state = state.with_backup_storage(backups, jwt_secret, args.public_url.clone());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (choose another address with --listen)", args.listen))?;
    on_listen(listener.local_addr()?);
    pgplane_api::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
