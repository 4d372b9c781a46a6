//! `pgplane up`: one command that gives a newcomer a working control plane. Without a
//! database URL it runs a private PostgreSQL under the state folder; it keeps a signing
//! secret and an operator's API token there too, so the next `up` finds everything again.

use anyhow::{Context, Result};
use pgplane_localpg::{find_bindir, write_private, Durability, LocalPg};
use pgplane_store::Store;
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use std::path::{Path, PathBuf};

use crate::ServeArgs;

/// `pgplane up --help`: everything `up` starts.
pub const LONG_ABOUT: &str = "\
Starts a whole pgplane on one machine, on embedded defaults, and keeps it running until Ctrl-C:

  Control-plane PostgreSQL  Unless --database-url is given: a private server made with the local
                            initdb in STATE/pg (data in STATE/pg/data, log in STATE/pg/postgres.log,
                            its superuser's password in STATE/pg/superuser-password), on a free
                            port of 127.0.0.1 with fsync on. As root it runs as the OS user
                            `postgres` (PGPLANE_PG_USER names another): PostgreSQL refuses root.
                            If it dies, it is started again on the same folder and port (with a
                            backoff while it keeps dying) and everything below reconnects.
  etcd                      The databases' DCS, in STATE/etcd: https only on 127.0.0.1 with a CA of
                            its own (STATE/etcd/tls/ca.pem), authentication on, root's password in
                            STATE/etcd/root-password. Also started again if it dies.
  API                       The public REST API on --listen (127.0.0.1:8080); it serves backup
                            downloads from the backup storage below.
  Scheduler                 Workflows, the job queue and lease reaping, with the agent API on
                            --agent-listen (127.0.0.1:8081).
  Three agents              local-1, local-2 and local-3, all on 127.0.0.1 (so a Business
                            database's members land on distinct \"hosts\"), with ports
                            25000-25199, 25200-25399 and 25400-25599 and their databases in
                            STATE/agents/local-N. They run Patroni, PostgreSQL and HAProxy.
  Backup storage            A local folder, STATE/backups, named by STATE/backup-storage.json (the
                            agents', the scheduler's and the API's --backup-storage file): edit
                            that file to use an S3-compatible store instead.";

/// The rest of `pgplane up --help`: the state folder and Ctrl-C.
pub const AFTER_HELP: &str = "\
The state folder STATE (--state-dir; /var/lib/pgplane as root, else ~/.local/state/pgplane)
holds pg/ and etcd/ as above, agents/, the access-token signing secret (jwt-secret), the
agents' shared secret (agent-bootstrap-token) and the platform operator's first API token
(admin-token); all secrets are 0600. The next `up` reuses it and keeps the data.
`pgplane bootstrap --state-dir STATE` makes a new operator token.

Ctrl-C (or SIGTERM) stops everything `up` started, the databases included; the next `up`
starts them again from what the agents kept.";

/// The control-plane database in the private PostgreSQL.
pub const DATABASE: &str = "pgplane";

#[derive(clap::Args)]
pub struct UpArgs {
    /// Folder for pgplane's state (private PostgreSQL, secrets). Default: /var/lib/pgplane
    /// as root, else $XDG_STATE_HOME/pgplane or ~/.local/state/pgplane.
    #[arg(long, env = "PGPLANE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Use this control-plane database instead of a private one.
    #[arg(long, env = "PGPLANE_DATABASE_URL", value_parser = crate::secret, hide_env_values = true)]
    database_url: Option<SecretString>,
    /// Folder with PostgreSQL's initdb and postgres (found automatically otherwise).
    #[arg(long, env = "PGPLANE_PG_BINDIR")]
    pg_bindir: Option<PathBuf>,
    /// Address the scheduler's agent API listens on.
    #[arg(long, env = "PGPLANE_AGENT_LISTEN", default_value = "127.0.0.1:8081")]
    agent_listen: std::net::SocketAddr,
    #[command(flatten)]
    serve: ServeArgs,
}

pub fn default_state_dir() -> PathBuf {
    if pgplane_localpg::is_root() {
        return PathBuf::from("/var/lib/pgplane");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("pgplane");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/pgplane")
}

/// The backup storage of `up`'s agents and scheduler: what `STATE/backup-storage.json` says,
/// written on first use to name the local folder `STATE/backups`.
fn local_backup_storage(state_dir: &Path) -> Result<pgplane_storage::StorageConfig> {
    let file = state_dir.join("backup-storage.json");
    if !file.exists() {
        let config = serde_json::json!({ "kind": "local", "root": state_dir.join("backups") });
        std::fs::write(&file, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    pgplane_storage::StorageConfig::load(&file)
}

/// Reads a secret kept in the state folder, creating it on first use.
fn state_secret(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    let s = make();
    write_private(path, &s)?;
    Ok(s)
}

pub async fn run(args: UpArgs) -> Result<()> {
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let (url, local_pg) = match &args.database_url {
        Some(url) => (url.expose_secret().to_string(), None),
        None => {
            let bindir = find_bindir(args.pg_bindir.as_deref())?;
            let dir = state_dir.join("pg");
            tracing::info!(data = %dir.display(), bindir = %bindir.display(), "starting the private control-plane PostgreSQL");
            let pg = tokio::task::spawn_blocking(move || LocalPg::start(&dir, &bindir, Durability::Durable)).await??;
            create_database_if_missing(&pg.url("postgres"), DATABASE).await?;
            (pg.url(DATABASE), Some(pg))
        }
    };
    let store = Store::connect(&url, args.serve.db_pool_size).await?;
    store.migrate().await?;

    let jwt_secret = state_secret(&state_dir.join("jwt-secret"), random_secret)?;
    let token_file = state_dir.join("admin-token");
    if !token_file.exists() {
        let token = crate::bootstrap::operator_token(&store, "admin@localhost.localdomain", "pgplane up").await?;
        write_private(&token_file, &token)?;
    }

    // The scheduler runs beside the API, with its agent API on its own listener.
    let bootstrap_token = state_secret(&state_dir.join("agent-bootstrap-token"), random_secret)?;
    let agent_listener = tokio::net::TcpListener::bind(args.agent_listen)
        .await
        .with_context(|| format!("listening on {} (choose another with --agent-listen)", args.agent_listen))?;
    let agent_addr = agent_listener.local_addr()?;
    let (stop_scheduler, stopped) = tokio::sync::watch::channel(false);
    let etcd_dir = state_dir.join("etcd");
    let etcd = tokio::task::spawn_blocking(move || pgplane_agent::LocalEtcd::start(&etcd_dir)).await??;
    let backup_storage = local_backup_storage(&state_dir)?;
    let scheduler_config = pgplane_scheduler::config::SchedulerConfig {
        etcd: etcd.admin(),
        bootstrap_token: bootstrap_token.clone(),
        gateway_vips: None,
        not_streaming_grace: pgplane_scheduler::truth::NOT_STREAMING_GRACE,
        agent_lost_after: pgplane_scheduler::engine::AGENT_LOST_AFTER,
        backup_storage: Some(pgplane_storage::BackupStore::open(&backup_storage)?),
    };
    let scheduler =
        tokio::spawn(pgplane_scheduler::run::run(store.clone(), scheduler_config, agent_listener, stopped.clone()));
    // Three local agents, so that a Business database's members land on distinct "hosts".
    let mut agents = Vec::new();
    for (i, port_min) in [(1, 25000), (2, 25200), (3, 25400)] {
        let config = pgplane_agent::runtime::AgentConfig {
            scheduler_url: format!("http://{agent_addr}"),
            bootstrap_token: bootstrap_token.clone(),
            name: format!("local-{i}"),
            host: "127.0.0.1".into(),
            public_host: "127.0.0.1".into(),
            memory_mb: 4096,
            disk_gb: 100,
            port_min,
            port_max: port_min + 199,
            root: state_dir.join("agents").join(format!("local-{i}")),
            backup_storage: Some(backup_storage.clone()),
        };
        agents.push(tokio::spawn(pgplane_agent::runtime::run(config, stopped.clone())));
    }

    let api_backups = pgplane_storage::BackupStore::open(&backup_storage)?;
    let result = crate::serve(store, jwt_secret.as_bytes(), Some(api_backups), &args.serve, |addr| {
        let pg_line = match &local_pg {
            Some(pg) => format!("private PostgreSQL on 127.0.0.1:{} (data in {})", pg.port(), pg.dir().display()),
            None => "the database given by --database-url".to_string(),
        };
        println!(
            "\npgplane is up.\n  API:            http://{addr}  (OpenAPI: http://{addr}/v1/openapi.json)\n  \
             Agent API:      http://{agent_addr}  (3 local agents; bootstrap token in {state}/agent-bootstrap-token)\n  \
             etcd:           https://{etcd_endpoint}  (CA in {etcd_ca}; root's password in {etcd_root})\n  \
             Control plane:  {pg_line}\n  Operator token: {token}  (an API token of the platform operator)\n\n\
             Get an access token (valid one hour) and call the API:\n  \
             TOKEN=$(curl -s -X POST http://{addr}/v1/auth/token -H 'content-type: application/json' \\\n      \
             -d \"{{\\\"api_token\\\":\\\"$(cat {token})\\\"}}\" | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n  \
             curl -s http://{addr}/v1/me -H \"authorization: Bearer $TOKEN\"\n\nCtrl-C stops everything.",
            token = token_file.display(),
            state = state_dir.display(),
            etcd_endpoint = etcd.endpoint(),
            etcd_ca = etcd.ca_file().display(),
            etcd_root = etcd.root_password_file().display()
        );
    })
    .await;
    let _ = stop_scheduler.send(true);
    for agent in agents {
        let _ = agent.await;
    }
    let _ = scheduler.await;
    drop(etcd);
    drop(local_pg);
    result
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Creates `name` on the server if it is not there yet.
pub async fn create_database_if_missing(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await?;
    }
    Ok(())
}
