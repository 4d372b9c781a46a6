//! File-system helpers shared by the drivers: atomic private writes owned by the server's OS
//! user, folders with fixed modes, safe names for paths, programs on PATH, and log tails for
//! error messages.

use anyhow::{bail, Context, Result};
use pgplane_localpg::{write_private, RunAs};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically (a private temporary file in the same folder, then a
/// rename), mode 0600, owned by `owner`. Returns whether the file's contents changed.
pub fn write_atomic(path: &Path, contents: &str, owner: Option<&RunAs>) -> Result<bool> {
    if fs::read_to_string(path).ok().as_deref() == Some(contents) {
        return Ok(false);
    }
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_private(&tmp, contents)?;
    if let Some(owner) = owner {
        owner.chown(&tmp)?;
    }
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(true)
}

/// Creates `dir` (and its parents) with `mode`, owned by `owner`.
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<&RunAs>) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    if let Some(owner) = owner {
        owner.chown(dir)?;
    }
    Ok(())
}

/// Member, gateway and scope names become folder names and config keys: keep them plain.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if !ok {
        bail!("invalid {what} {name:?}: use 1 to 63 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A program: `$<env>` if set, else the first match on PATH, else in /usr/sbin or /usr/bin.
pub fn find_program(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} was not found on PATH (set {env}); on Debian: apt-get install -y etcd-server patroni haproxy")
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!("{} ends with:\n{}", path.display(), all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Opens a log file for appending, owned by `owner`.
pub fn open_log(path: &Path, owner: Option<&RunAs>) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if let Some(owner) = owner {
        owner.chown(path)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("member", "m1").is_ok());
        assert!(check_name("member", "pg-0_a").is_ok());
        for bad in ["", "../x", "a/b", "-x", "a b", &"x".repeat(64)] {
            assert!(check_name("member", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn atomic_writes_report_changes() {
        let dir = std::env::temp_dir().join(format!("pgplane-files-{}", std::process::id()));
        ensure_dir(&dir, 0o700, None).unwrap();
        let f = dir.join("a.conf");
        assert!(write_atomic(&f, "one", None).unwrap());
        assert!(!write_atomic(&f, "one", None).unwrap());
        assert!(write_atomic(&f, "two", None).unwrap());
        assert_eq!(fs::read_to_string(&f).unwrap(), "two");
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(host_port("127.0.0.1", 5432), "127.0.0.1:5432");
        assert_eq!(host_port("::1", 5432), "[::1]:5432");
    }
}
