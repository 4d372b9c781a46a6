//! `pgplane etcd`: preparing a platform etcd the way `pgplane up` prepares its own (`LocalEtcd`),
//! for an etcd that pgplane does not start (docker-compose, or a host of its own). `init` makes
//! the CA, server certificate and root's password (`pgplane_etcd::setup`) before etcd starts;
//! `enable-auth` turns authentication on with that password once it runs
//! (`pgplane_etcd::admin::enable_auth`). Both are idempotent.

use anyhow::{Context, Result};
use pgplane_core::agent::EtcdAccess;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How pgplane reaches the platform's etcd as its administrator.
#[derive(clap::Args)]
pub struct EtcdArgs {
    /// The platform's etcd endpoints (host:port, comma-separated), as Patroni reaches them.
    #[arg(long, env = "PGPLANE_ETCD_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// PEM of the CA that signed etcd's server certificate: etcd is reached over https, checked
    /// against it (plain http without it).
    #[arg(long, env = "PGPLANE_ETCD_CA_FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// File holding the password of etcd's `root` user: each database then gets an etcd user of
    /// its own, confined to its key prefix. Without it etcd must run without authentication,
    /// and databases share it unconfined (development only).
    #[arg(long, env = "PGPLANE_ETCD_ROOT_PASSWORD_FILE")]
    etcd_root_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The etcd access these flags describe, read from the files given: as `root` when a
    /// password file is given.
    pub fn access(&self) -> Result<EtcdAccess> {
        let read =
            |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
        let ca_pem = self.etcd_ca_file.as_ref().map(read).transpose()?;
        let password = self.etcd_root_password_file.as_ref().map(read).transpose()?.map(|p| p.trim().to_string());
        let access = EtcdAccess {
            endpoints: self.etcd_endpoints.clone(),
            protocol: if ca_pem.is_some() { "https" } else { "http" }.into(),
            ca_pem,
            username: password.as_ref().map(|_| pgplane_etcd::admin::ROOT.to_string()),
            password,
        };
        pgplane_etcd::Client::new(&access).context("the etcd CA file")?;
        Ok(access)
    }
}

#[derive(clap::Subcommand)]
pub enum EtcdCommand {
    /// Makes what is missing of etcd's files in a folder: a CA of its own, a server certificate
    /// it signed (tls/ca.pem, ca.key, server.pem, server.key) and root's password
    /// (root-password); all 0600. Run it before etcd starts; files already there are kept.
    Init(InitArgs),
    /// Turns etcd's authentication on with user `root` and the password of
    /// --etcd-root-password-file, waiting for etcd to answer; nothing to do when it is on with
    /// that password already.
    EnableAuth(EnableAuthArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Folder for the files.
    #[arg(long, env = "PGPLANE_ETCD_DIR")]
    dir: PathBuf,
    /// Names clients reach etcd by (IP addresses or DNS names, comma-separated), written into the
    /// server certificate when it is made.
    #[arg(long, env = "PGPLANE_ETCD_SAN", value_delimiter = ',', required = true)]
    san: Vec<String>,
}

#[derive(clap::Args)]
pub struct EnableAuthArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// How long to wait for etcd to answer, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_seconds: u64,
}

pub async fn run(command: EtcdCommand) -> Result<()> {
    match command {
        EtcdCommand::Init(args) => init(args),
        EtcdCommand::EnableAuth(args) => enable_auth(args).await,
    }
}

fn init(args: InitArgs) -> Result<()> {
    let names: Vec<&str> = args.san.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    let prepared = pgplane_etcd::setup::prepare(&args.dir, &names)?;
    let f = &prepared.files;
    let state = |made: bool| if made { "made" } else { "kept" };
    println!("etcd's CA ({}):           {}", state(prepared.made_tls), f.ca_file().display());
    println!("its certificate and key: {} {}", f.cert_file().display(), f.key_file().display());
    println!("root's password ({}):     {}", state(prepared.made_password), f.root_password_file().display());
    Ok(())
}

async fn enable_auth(args: EnableAuthArgs) -> Result<()> {
    anyhow::ensure!(args.etcd.etcd_root_password_file.is_some(), "give root's password with --etcd-root-password-file");
    let admin = args.etcd.access()?;
    let password = admin.password.clone().unwrap_or_default();
    anyhow::ensure!(!password.is_empty(), "root's password file is empty");
    let anonymous = EtcdAccess { username: None, password: None, ..admin.clone() };
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    loop {
        match pgplane_etcd::admin::enable_auth(&anonymous, &password).await {
            Ok(()) => break,
            // etcd answered and refused (another root password, ...): waiting changes nothing.
            Err(e) if e.chain().any(|c| c.is::<pgplane_etcd::Refused>()) => return Err(e),
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = format!("{e:#}"), "waiting for etcd");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(format!("etcd did not answer within {} s", args.wait_seconds))),
        }
    }
    println!("etcd's authentication is on (user root) at {}", admin.endpoints.join(","));
    Ok(())
}
