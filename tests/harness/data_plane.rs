//! Helpers for tests that run real data-plane processes: short temporary folders, psql, and
//! finding processes by what their command line names.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A folder removed when dropped; short, since PostgreSQL's socket path must stay under 107 bytes.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pg{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("folder mode");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one SQL string with the real psql client; Ok(output) or Err(its error). The URL says
/// how to authenticate (no password from the environment); a connection attempt gives up after
/// 3 s unless the URL says otherwise.
pub async fn psql(url: &str, sql: &str) -> Result<String, String> {
    let bin =
        if Path::new("/usr/lib/postgresql/15/bin/psql").exists() { "/usr/lib/postgresql/15/bin/psql" } else { "psql" };
    let out = tokio::process::Command::new(bin)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Retries `sql` every 100 ms until it answers `expected`; panics with the last answer once
/// `within` has passed (a gateway routes to a new primary within about a second).
pub async fn eventually(url: &str, sql: &str, expected: &str, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = psql(url, sql).await;
        if got.as_deref() == Ok(expected) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{sql} answered {got:?}, not {expected:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Pids of processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The first file named `name` below `dir`.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// The postmaster of a member, from its data folder's postmaster.pid.
pub fn postmaster(member_dir: &Path) -> Option<u32> {
    let found = find_file(member_dir, "postmaster.pid")?;
    std::fs::read_to_string(found).ok()?.lines().next()?.trim().parse().ok()
}
