//! Platform operators from the command line: the first one of a new installation, or a new API
//! token when every token of the operator is lost or revoked. Works on a database URL, or on
//! `pgplane up`'s state folder (its private PostgreSQL, running or started for the moment).

use anyhow::{Context, Result};
use pgplane_core::model::{CreateUser, PlatformRole};
use pgplane_localpg::{find_bindir, Durability, LocalPg};
use pgplane_store::Store;
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BootstrapArgs {
    /// Control-plane database URL. Without it: the private PostgreSQL of `pgplane up`'s state
    /// folder (started for the moment if `up` is not running).
    #[arg(long, env = "PGPLANE_DATABASE_URL", value_parser = crate::secret, hide_env_values = true)]
    database_url: Option<SecretString>,
    /// `pgplane up`'s state folder, used when no database URL is given. Default: as for `up`.
    #[arg(long, env = "PGPLANE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Folder with PostgreSQL's postgres binary, to start `up`'s private server if it is not running.
    #[arg(long, env = "PGPLANE_PG_BINDIR")]
    pg_bindir: Option<PathBuf>,
    /// Email of the operator (created if missing; another token is made if it exists).
    #[arg(long, default_value = "admin@localhost.localdomain")]
    email: String,
}

/// Creates (or reuses) the operator and returns a fresh API token secret for them.
pub async fn operator_token(store: &Store, email: &str, token_name: &str) -> Result<String> {
    let user = match store.user_by_email(email).await? {
        Some(u) => u,
        None => {
            store
                .user_create(&CreateUser {
                    email: email.into(),
                    name: "Platform operator".into(),
                    platform_role: Some(PlatformRole::Operator),
                })
                .await?
        }
    };
    anyhow::ensure!(user.platform_role == Some(PlatformRole::Operator), "{email} exists and is not an operator");
    let (_, secret) = store.token_create(user.id, token_name, None).await?;
    Ok(secret)
}

pub async fn run(args: BootstrapArgs) -> Result<()> {
    // The private server started here, stopped (dropped) once the token is made.
    let mut started = None;
    let url = match &args.database_url {
        Some(url) => url.expose_secret().to_string(),
        None => {
            let state_dir = args.state_dir.clone().unwrap_or_else(crate::up::default_state_dir);
            let dir = state_dir.join("pg");
            match pgplane_localpg::running_url(&dir, crate::up::DATABASE)? {
                Some(url) => url,
                None => {
                    anyhow::ensure!(
                        dir.join("data/PG_VERSION").exists(),
                        "no private PostgreSQL of `pgplane up` in {} (give --state-dir or --database-url)",
                        dir.display()
                    );
                    let bindir = find_bindir(args.pg_bindir.as_deref())?;
                    eprintln!("starting the private PostgreSQL in {} for the moment", dir.display());
                    let pg = tokio::task::spawn_blocking(move || LocalPg::start(&dir, &bindir, Durability::Durable))
                        .await??;
                    crate::up::create_database_if_missing(&pg.url("postgres"), crate::up::DATABASE).await?;
                    let url = pg.url(crate::up::DATABASE);
                    started = Some(pg);
                    url
                }
            }
        }
    };
    let result = make_token(&url, &args.email).await;
    if let Some(pg) = started {
        tokio::task::spawn_blocking(move || drop(pg)).await?;
    }
    let secret = result?;
    println!("{secret}");
    eprintln!("API token of operator {}; it is not shown again.", args.email);
    Ok(())
}

async fn make_token(url: &str, email: &str) -> Result<String> {
    let store = Store::connect(url, 2).await.context("connecting to the control-plane database")?;
    store.migrate().await?;
    let secret = operator_token(&store, email, "bootstrap").await;
    store.close().await;
    secret
}
