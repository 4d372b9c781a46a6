//! The first operator of a new installation: a user with the `operator` platform role and
//! an API token, created once.

use anyhow::Result;
use pgplane_core::model::{CreateUser, PlatformRole};
use pgplane_store::Store;
use secrecy::{ExposeSecret, SecretString};

#[derive(clap::Args)]
pub struct BootstrapArgs {
    #[arg(long, env = "PGPLANE_DATABASE_URL", value_parser = crate::secret, hide_env_values = true)]
    database_url: SecretString,
    /// Email of the operator (created if missing).
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
    let store = Store::connect(args.database_url.expose_secret(), 2).await?;
    store.migrate().await?;
    let secret = operator_token(&store, &args.email, "bootstrap").await?;
    println!("{secret}");
    eprintln!("API token of operator {}; it is not shown again.", args.email);
    Ok(())
}
