//! A private single-member etcd 3.4 on loopback, the DCS of `pgplane up` and of the tests: a
//! supervised child with its data in a folder, https only (a CA of its own, made once), auth on
//! with a `root` user; healthy and locked down before `start` returns, started again on the same
//! ports if it dies, stopped when dropped.

use crate::files::{ensure_dir, find_program, open_log, tail, write_atomic};
use anyhow::{bail, Context, Result};
use pgplane_core::agent::EtcdAccess;
use pgplane_localpg::{free_port, Keeper, Supervised};
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running local etcd. Dropping it stops etcd (its data stays in the folder).
pub struct LocalEtcd {
    dir: PathBuf,
    client_port: u16,
    ca_pem: String,
    root_password: String,
    server: Keeper,
}

impl LocalEtcd {
    /// Starts etcd with its data in `dir/data`, its CA and certificate in `dir/tls` and root's
    /// password in `dir/root-password` (keys and password 0600). The ports are kept in
    /// `dir/ports` and reused while free, so the endpoint in Patroni's configurations stays valid.
    ///
    /// No `--trusted-ca-file`: with it etcd 3.4 demands a client certificate from every client
    /// even without `--client-cert-auth` (and a certificate's CN would act as a user name).
    /// Clients authenticate with a user and password instead.
    pub fn start(dir: &Path) -> Result<Self> {
        ensure_dir(dir, 0o700, None)?;
        ensure_dir(&dir.join("data"), 0o700, None)?;
        // The same files, made the same way, as `pgplane etcd init` makes for docker-compose.
        let prepared = pgplane_etcd::setup::prepare(dir, &["127.0.0.1", "localhost"])?;
        let (ca_pem, root_password) = (prepared.ca_pem, prepared.root_password);
        let (cert, key) = (prepared.files.cert_file(), prepared.files.key_file());
        let (client_port, peer_port) = ports(dir)?;
        let access = access(client_port, &ca_pem);
        let dir_owned = dir.to_path_buf();
        // Kept running: restarted on the same ports and data if it dies (auth stays on).
        let server = Keeper::start(
            "etcd",
            Box::new(move || spawn_healthy(&dir_owned, &access, client_port, peer_port, &cert, &key)),
        )?;
        let etcd = LocalEtcd { dir: dir.to_path_buf(), client_port, ca_pem, root_password, server };
        block_on(pgplane_etcd::admin::enable_auth(&etcd.access(), &etcd.root_password))
            .context("turning etcd's authentication on")?;
        Ok(etcd)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// How a client reaches this etcd: https checked against its CA, no user yet. Every key
    /// needs one: a database gets its own (`pgplane_etcd::Client::ensure_database_user`).
    pub fn access(&self) -> EtcdAccess {
        access(self.client_port, &self.ca_pem)
    }

    /// The control plane's handle: `access` as `root`. Never for a database's Patroni, a tenant
    /// or anything on a database host.
    pub fn admin(&self) -> EtcdAccess {
        EtcdAccess {
            username: Some(pgplane_etcd::admin::ROOT.into()),
            password: Some(self.root_password.clone()),
            ..self.access()
        }
    }

    /// The PEM of the CA that signed etcd's certificate (for `pgplane scheduler --etcd-ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// Root's password, 0600 (for `pgplane scheduler --etcd-root-password-file`).
    pub fn root_password_file(&self) -> PathBuf {
        self.dir.join("root-password")
    }

    /// True when `GET /health` answers `"health":"true"` over https.
    pub fn is_healthy(&self) -> bool {
        block_on(health(&self.access())).unwrap_or(false)
    }

    /// How many times etcd was started again after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.server.restarts()
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&self) {
        self.server.stop(Duration::from_secs(10));
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn access(client_port: u16, ca_pem: &str) -> EtcdAccess {
    EtcdAccess {
        endpoints: vec![format!("127.0.0.1:{client_port}")],
        protocol: "https".into(),
        ca_pem: Some(ca_pem.to_string()),
        username: None,
        password: None,
    }
}

/// Starts etcd and waits until it answers healthy over https.
fn spawn_healthy(
    dir: &Path,
    access: &EtcdAccess,
    client_port: u16,
    peer_port: u16,
    cert: &Path,
    key: &Path,
) -> Result<Supervised> {
    let client = format!("https://127.0.0.1:{client_port}");
    let peer = format!("https://127.0.0.1:{peer_port}");
    let log = open_log(&dir.join("etcd.log"), None)?;
    let mut cmd = Command::new(find_program("etcd", "PGPLANE_ETCD")?);
    cmd.args(["--name", "pgplane", "--logger", "zap", "--log-outputs", "stderr"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("pgplane={peer}"), "--initial-cluster-state", "new"])
        .args(["--auto-compaction-retention", "1"])
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .arg("--peer-cert-file")
        .arg(cert)
        .arg("--peer-key-file")
        .arg(key)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let server = Supervised::spawn(cmd, libc::SIGTERM).context("starting etcd")?;
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.exit_status() {
            bail!("etcd exited during start-up ({status}); {}", tail(&dir.join("etcd.log"), 15));
        }
        if block_on(health(access)).unwrap_or(false) {
            return Ok(server);
        }
        if Instant::now() > deadline {
            server.stop(Duration::from_secs(10));
            bail!("etcd was not healthy within {timeout:?}; {}", tail(&dir.join("etcd.log"), 15));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` to completion on a runtime of its own in a thread of its own, so that the blocking
/// `start` works from any context, async or not.
fn block_on<F: Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f))
            .join()
            .expect("the etcd client thread")
    })
}

async fn health(access: &EtcdAccess) -> Result<bool> {
    let ca = reqwest::Certificate::from_pem(access.ca_pem.as_deref().unwrap_or_default().as_bytes())?;
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("https://{}/health", access.endpoints[0]);
    Ok(http.get(url).send().await?.text().await?.contains("\"health\":\"true\""))
}

/// The client and peer ports recorded in `dir/ports` when both are still free, else new ones.
fn ports(dir: &Path) -> Result<(u16, u16)> {
    let file = dir.join("ports");
    let recorded = std::fs::read_to_string(&file).ok().and_then(|s| {
        let (c, p) = s.trim().split_once(' ')?;
        Some((c.parse::<u16>().ok()?, p.parse::<u16>().ok()?))
    });
    if let Some((c, p)) = recorded {
        if is_free(c) && is_free(p) {
            return Ok((c, p));
        }
    }
    let client = free_port()?;
    let mut peer = free_port()?;
    while peer == client {
        peer = free_port()?;
    }
    write_atomic(&file, &format!("{client} {peer}\n"), None)?;
    Ok((client, peer))
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
