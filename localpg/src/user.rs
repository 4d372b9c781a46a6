//! Which OS user runs PostgreSQL: the current one, or an unprivileged one when we are root.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The user a child process runs as. `None` fields mean "as ourselves".
#[derive(Debug, Clone)]
pub struct RunAs {
    name: String,
    ids: Option<(u32, u32)>,
}

impl RunAs {
    /// Ourselves when unprivileged; as root, the user named by `PGPLANE_PG_USER` (default
    /// `postgres`), because PostgreSQL refuses to run as root.
    pub fn for_postgres() -> Result<Self> {
        if !is_root() {
            return Ok(RunAs { name: std::env::var("USER").unwrap_or_else(|_| "current user".into()), ids: None });
        }
        let name = std::env::var("PGPLANE_PG_USER").unwrap_or_else(|_| "postgres".into());
        match lookup(&name)? {
            Some(ids) => Ok(RunAs { name, ids: Some(ids) }),
            None => bail!(
                "running as root, PostgreSQL needs an unprivileged OS user and {name:?} does not exist; \
                 create one (useradd --system --home-dir /var/lib/postgresql {name}) or name another with PGPLANE_PG_USER"
            ),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `cmd` run as this user.
    pub fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Gives `path` to this user (no-op when running as ourselves).
    pub fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }
}

pub fn is_root() -> bool {
    // The owner of /proc/self is our effective uid; this avoids an unsafe libc call.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// uid and gid of a user from /etc/passwd.
fn lookup(name: &str) -> Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            return Ok(Some((fields[2].parse()?, fields[3].parse()?)));
        }
    }
    Ok(None)
}
