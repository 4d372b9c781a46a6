//! `pgplane etcd`: preparing a platform etcd the way `pgplane up` prepares its own (`LocalEtcd`),
//! for an etcd that pgplane does not start (docker-compose, or a host of its own). `init` makes
//! the CA, server certificate and root's password (`pgplane_etcd::setup`) before etcd starts;
//! `enable-auth` turns authentication on with that password once it runs
//! (`pgplane_etcd::admin::enable_auth`). Both are idempotent. For a cluster of members on several
//! hosts, `member` prints one member's etcd flags (https for clients and peers, peers checking
//! each other's certificates against the same CA).

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
    /// Prints the flags of one member of an etcd cluster, one a line, to run it as
    /// `etcd $(pgplane etcd member …)`: https for clients and for peers with the folder's
    /// certificates (make the folder once with `init --san` naming every member's address, then
    /// copy it to each member's host), peers checking each other against its CA.
    Member(MemberArgs),
}

#[derive(clap::Args)]
pub struct MemberArgs {
    /// The folder `init` made (copied to this member's host).
    #[arg(long, env = "PGPLANE_ETCD_DIR")]
    dir: PathBuf,
    /// This member's name, as in --initial-cluster.
    #[arg(long)]
    name: String,
    /// Every member as `name=address` (comma-separated), this one included: the first start of
    /// each member forms the cluster; later starts find it in their data folder.
    #[arg(long, value_delimiter = ',', required = true)]
    initial_cluster: Vec<String>,
    /// The port clients (the scheduler, Patroni) reach etcd at.
    #[arg(long, default_value_t = 2379)]
    client_port: u16,
    /// The port members reach each other at.
    #[arg(long, default_value_t = 2380)]
    peer_port: u16,
    /// etcd's data folder (default: `data` in --dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// etcd's flags for the member `args` describes.
pub fn member_flags(args: &MemberArgs) -> Result<Vec<String>> {
    let files = pgplane_etcd::setup::EtcdFiles::new(&args.dir);
    for f in [files.ca_file(), files.cert_file(), files.key_file(), files.peer_cert_file(), files.peer_key_file()] {
        anyhow::ensure!(f.exists(), "{} is missing: run `pgplane etcd init --dir … --san …` first", f.display());
    }
    let mut members = Vec::new();
    for m in &args.initial_cluster {
        let (name, address) = m.split_once('=').with_context(|| format!("{m:?}: write each member as name=address"))?;
        anyhow::ensure!(!name.is_empty() && !address.is_empty(), "{m:?}: write each member as name=address");
        members.push((name, address));
    }
    let address = members
        .iter()
        .find(|(n, _)| *n == args.name)
        .map(|(_, a)| *a)
        .with_context(|| format!("--initial-cluster does not name this member ({})", args.name))?;
    let host = |a: &str| if a.contains(':') { format!("[{a}]") } else { a.to_string() };
    let client = format!("https://{}:{}", host(address), args.client_port);
    let peer = format!("https://{}:{}", host(address), args.peer_port);
    let cluster: Vec<String> =
        members.iter().map(|(n, a)| format!("{n}=https://{}:{}", host(a), args.peer_port)).collect();
    let data = args.data_dir.clone().unwrap_or_else(|| args.dir.join("data"));
    let p = |f: PathBuf| f.display().to_string();
    Ok(vec![
        format!("--name={}", args.name),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={}", cluster.join(",")),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=pgplane".into(),
        format!("--cert-file={}", p(files.cert_file())),
        format!("--key-file={}", p(files.key_file())),
        format!("--peer-cert-file={}", p(files.peer_cert_file())),
        format!("--peer-key-file={}", p(files.peer_key_file())),
        format!("--peer-trusted-ca-file={}", p(files.ca_file())),
        "--peer-client-cert-auth".into(),
        // A member cut off from the others keeps raising its term; without pre-vote it makes
        // the healthy leader step down when it comes back, and the cluster answers nothing for
        // seconds (the partition lab saw 3–6 s, long enough for Patroni leaders to demote).
        "--pre-vote=true".into(),
    ])
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
        EtcdCommand::Member(args) => {
            for flag in member_flags(&args)? {
                println!("{flag}");
            }
            Ok(())
        }
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
    println!("members' peer certificate: {} {}", f.peer_cert_file().display(), f.peer_key_file().display());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_speaks_https_to_clients_and_peers() {
        let dir = std::env::temp_dir().join(format!("pgplane-etcd-member-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        pgplane_etcd::setup::prepare(&dir, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]).unwrap();
        let args = MemberArgs {
            dir: dir.clone(),
            name: "b".into(),
            initial_cluster: vec!["a=10.0.0.1".into(), "b=10.0.0.2".into(), "c=10.0.0.3".into()],
            client_port: 2379,
            peer_port: 2380,
            data_dir: None,
        };
        let flags = member_flags(&args).unwrap();
        let has = |f: &str| flags.iter().any(|x| x == f);
        assert!(has("--listen-client-urls=https://10.0.0.2:2379"), "{flags:?}");
        assert!(has("--initial-advertise-peer-urls=https://10.0.0.2:2380"), "{flags:?}");
        assert!(
            has("--initial-cluster=a=https://10.0.0.1:2380,b=https://10.0.0.2:2380,c=https://10.0.0.3:2380"),
            "{flags:?}"
        );
        assert!(has("--peer-client-cert-auth"), "{flags:?}");
        assert!(has("--pre-vote=true"), "{flags:?}");
        assert!(has(&format!("--data-dir={}", dir.join("data").display())), "{flags:?}");
        let stranger = MemberArgs { name: "d".into(), ..args };
        assert!(member_flags(&stranger).unwrap_err().to_string().contains("does not name this member"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
