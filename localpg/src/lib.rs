//! A private PostgreSQL server for `pgplane up`, the test harness and the benchmarks: finds
//! the local binaries, runs `initdb` once into a folder, and starts `postgres` on a free
//! loopback port as a supervised child, started again if it dies. When running as root the server runs as an
//! unprivileged OS user (PostgreSQL refuses root).

mod bins;
mod keeper;
mod supervise;
mod user;

pub use bins::find_bindir;
pub use keeper::{Keeper, StartFn};
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
    server: Keeper,
    remove_on_drop: bool,
}

impl LocalPg {
    /// Starts the server kept in `dir` (created and initialized on first use), and keeps it
    /// running: if it exits without being asked to (a crash, a kill -9), it is started again
    /// on the same folder and port, so that clients holding its URL reconnect by themselves.
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
        let (dir_owned, bindir) = (dir.to_path_buf(), bindir.to_path_buf());
        let server = Keeper::start(
            "control-plane PostgreSQL",
            Box::new(move || spawn_ready(&dir_owned, &bindir, port, &runas, durability)),
        )?;
        Ok(LocalPg { dir: dir.to_path_buf(), port, password, server, remove_on_drop: false })
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

    /// How many times the server was started again after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.server.restarts()
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

/// The URL of one database of the server kept in `dir` when a server runs on it now (its
/// `postmaster.pid` names a live process whose port accepts connections), as its superuser.
pub fn running_url(dir: &Path, database: &str) -> Result<Option<String>> {
    let Ok(pidfile) = fs::read_to_string(dir.join("data").join("postmaster.pid")) else { return Ok(None) };
    let mut lines = pidfile.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
    let port = lines.nth(2).and_then(|l| l.trim().parse::<u16>().ok());
    let (Some(pid), Some(port)) = (pid, port) else { return Ok(None) };
    let live = fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false);
    if !live || TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        return Ok(None);
    }
    let password_file = dir.join("superuser-password");
    let password = fs::read_to_string(&password_file)
        .with_context(|| format!("reading {}", password_file.display()))?
        .trim()
        .to_string();
    Ok(Some(format!("postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/{database}")))
}

/// Starts `postgres` on `port` and waits until it accepts connections.
fn spawn_ready(dir: &Path, bindir: &Path, port: u16, runas: &RunAs, durability: Durability) -> Result<Supervised> {
    let data = dir.join("data");
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("postgres.log"))?;
    let mut cmd = Command::new(bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
        .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
        // After a crash, one syncfs(2) of the folder's file system instead of an fsync of every
        // file before recovery: a restart after a kill -9 takes ~1 s instead of ~4 s here.
        .args(["-c", "recovery_init_sync_method=syncfs"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if durability == Durability::Ephemeral {
        cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
    }
    runas.apply(&mut cmd);
    let server = Supervised::spawn(cmd, libc::SIGINT).context("starting postgres")?;
    if let Err(e) = wait_ready(dir, port, &server, Duration::from_secs(60)) {
        server.stop(Duration::from_secs(10));
        return Err(e);
    }
    Ok(server)
}

fn wait_ready(dir: &Path, port: u16, server: &Supervised, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let pidfile = dir.join("data").join("postmaster.pid");
    loop {
        if let Some(status) = server.exit_status() {
            bail!(
                "postgres exited during start-up ({status}); its log {} ends with:\n{}",
                dir.join("postgres.log").display(),
                tail(&dir.join("postgres.log"), 15)
            );
        }
        // Line 8 of postmaster.pid says "ready" once connections are accepted; its first line
        // must be this server's pid (a killed server's file stays until the next one rewrites it).
        let ready = fs::read_to_string(&pidfile)
            .map(|s| {
                s.lines().next().map(|l| l.trim() == server.pid().to_string()).unwrap_or(false)
                    && s.lines().nth(7).map(|l| l.trim() == "ready").unwrap_or(false)
            })
            .unwrap_or(false);
        if ready && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("postgres did not become ready within {timeout:?}; see {}", dir.join("postgres.log").display());
        }
        std::thread::sleep(Duration::from_millis(20));
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
