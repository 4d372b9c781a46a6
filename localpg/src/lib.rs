//! A private PostgreSQL server for `pgplane up`, the test harness and the benchmarks: finds
//! the local binaries, runs `initdb` once into a folder, and starts `postgres` on a free
//! loopback port as a supervised child. When running as root the server runs as an
//! unprivileged OS user (PostgreSQL refuses root).

mod bins;
mod supervise;
mod user;

pub use bins::find_bindir;
pub use supervise::Supervised;
pub use user::{is_root, RunAs};

use anyhow::{bail, Context, Result};
use rand::distributions::{Alphanumeric, DistString};
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "pgplane";

/// How a server is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on: data survives a machine crash (`pgplane up`).
    Durable,
    /// fsync off and no initdb sync: for throw-away test servers.
    Ephemeral,
}

/// A running private server. Dropping it stops the server (fast shutdown).
pub struct LocalPg {
    dir: PathBuf,
    port: u16,
    password: String,
    server: Supervised,
    remove_on_drop: bool,
}

impl LocalPg {
    /// Starts the server kept in `dir` (created and initialized on first use).
    pub fn start(dir: &Path, bindir: &Path, durability: Durability) -> Result<Self> {
        let runas = RunAs::for_postgres()?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        runas.chown(dir)?;
        let data = dir.join("data");
        let password_file = dir.join("superuser-password");
        if !data.join("PG_VERSION").exists() {
            init(dir, &data, bindir, &runas, &password_file, durability)?;
        }
        let password = fs::read_to_string(&password_file)
            .with_context(|| format!("reading {}", password_file.display()))?
            .trim()
            .to_string();
        let port = free_port()?;
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("postgres.log"))?;
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if durability == Durability::Ephemeral {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        runas.apply(&mut cmd);
        let server = Supervised::spawn(cmd, libc::SIGINT).context("starting postgres")?;
        let pg = LocalPg { dir: dir.to_path_buf(), port, password, server, remove_on_drop: false };
        pg.wait_ready(Duration::from_secs(60))?;
        Ok(pg)
    }

    /// A throw-away server in a fresh temporary folder, removed when dropped. If the process
    /// dies first, the server gets SIGQUIT from the kernel and the next call removes the folder.
    pub fn temporary(bindir: &Path) -> Result<Self> {
        let base = std::env::temp_dir();
        remove_stale_temporaries(&base);
        let dir = base.join(format!(
            "pgplane-pg-{}-{}",
            std::process::id(),
            Alphanumeric.sample_string(&mut rand::thread_rng(), 6).to_lowercase()
        ));
        let mut pg = Self::start(&dir, bindir, Durability::Ephemeral)?;
        pg.remove_on_drop = true;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// A connection URL for one database of this server, as its superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let pidfile = self.dir.join("data").join("postmaster.pid");
        loop {
            if let Some(status) = self.server.exit_status() {
                bail!(
                    "postgres exited during start-up ({status}); its log {} ends with:\n{}",
                    self.dir.join("postgres.log").display(),
                    tail(&self.dir.join("postgres.log"), 15)
                );
            }
            // Line 8 of postmaster.pid says "ready" once connections are accepted.
            let ready = fs::read_to_string(&pidfile)
                .map(|s| s.lines().nth(7).map(|l| l.trim() == "ready").unwrap_or(false))
                .unwrap_or(false);
            if ready && TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not become ready within {timeout:?}; see {}",
                    self.dir.join("postgres.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fast shutdown, waiting for the server to exit.
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(30));
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        self.stop();
        if self.remove_on_drop {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn init(
    dir: &Path,
    data: &Path,
    bindir: &Path,
    runas: &RunAs,
    password_file: &Path,
    durability: Durability,
) -> Result<()> {
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    // The password file is for pgplane; initdb reads a copy readable by the server's user.
    write_private(password_file, &password)?;
    let pwfile = dir.join("initdb-pwfile");
    write_private(&pwfile, &password)?;
    runas.chown(&pwfile)?;
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(dir)
        .stdin(Stdio::null());
    if durability == Durability::Ephemeral {
        cmd.arg("--no-sync");
    }
    runas.apply(&mut cmd);
    let out = cmd.output().with_context(|| format!("running {}", bindir.join("initdb").display()))?;
    let _ = fs::remove_file(&pwfile);
    if !out.status.success() {
        let _ = fs::remove_dir_all(data);
        bail!(
            "initdb failed ({}):\n{}{}\nThe folder {} must be reachable by the OS user {}.",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            dir.display(),
            runas.name()
        );
    }
    Ok(())
}

/// Writes a file only its owner can read (0600).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes temporary server folders left by processes that no longer exist.
fn remove_stale_temporaries(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("pgplane-pg-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
