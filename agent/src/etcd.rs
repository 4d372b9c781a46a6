//! A private single-member etcd 3.4 on loopback, the DCS of `pgplane up` and of the tests: a
//! supervised child with its data in a folder, plain http on 127.0.0.1 (per-database users and
//! TLS are for the platform's etcd), healthy before `start` returns, stopped when dropped.

use crate::files::{ensure_dir, find_program, open_log, tail};
use anyhow::{bail, Context, Result};
use pgplane_core::agent::EtcdAccess;
use pgplane_localpg::{free_port, Supervised};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running local etcd. Dropping it stops etcd (its data stays in the folder).
pub struct LocalEtcd {
    dir: PathBuf,
    client_port: u16,
    server: Supervised,
}

impl LocalEtcd {
    /// Starts etcd with its data in `dir/data`. The ports are kept in `dir/ports` and reused
    /// while free, so the endpoint written into Patroni's configurations stays valid.
    pub fn start(dir: &Path) -> Result<Self> {
        ensure_dir(dir, 0o700, None)?;
        ensure_dir(&dir.join("data"), 0o700, None)?;
        let (client_port, peer_port) = ports(dir)?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = open_log(&dir.join("etcd.log"), None)?;
        let mut cmd = Command::new(find_program("etcd", "PGPLANE_ETCD")?);
        cmd.args(["--name", "pgplane", "--logger", "zap", "--log-outputs", "stderr"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("pgplane={peer}"), "--initial-cluster-state", "new"])
            .args(["--auto-compaction-retention", "1"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let server = Supervised::spawn(cmd, libc::SIGTERM).context("starting etcd")?;
        let etcd = LocalEtcd { dir: dir.to_path_buf(), client_port, server };
        etcd.wait_healthy(Duration::from_secs(30))?;
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

    /// How a database's Patroni reaches this etcd: plain http, no user.
    pub fn access(&self) -> EtcdAccess {
        EtcdAccess {
            endpoints: vec![self.endpoint()],
            protocol: "http".into(),
            ca_pem: None,
            username: None,
            password: None,
        }
    }

    /// True when `GET /health` answers `"health":"true"`.
    pub fn is_healthy(&self) -> bool {
        health(self.client_port).unwrap_or(false)
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.server.exit_status() {
                bail!("etcd exited during start-up ({status}); {}", tail(&self.dir.join("etcd.log"), 15));
            }
            if self.is_healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd was not healthy within {timeout:?}; {}", tail(&self.dir.join("etcd.log"), 15));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
    crate::files::write_atomic(&file, &format!("{client} {peer}\n"), None)?;
    Ok((client, peer))
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// One plain HTTP/1.0 `GET /health`.
fn health(port: u16) -> Result<bool> {
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.starts_with("HTTP/1.") && answer.contains("\"health\":\"true\""))
}
