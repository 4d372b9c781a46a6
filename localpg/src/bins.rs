//! Locating PostgreSQL's server binaries.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// The folder holding `initdb` and `postgres`: the explicit choice, else `pg_config --bindir`,
/// else `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        if has_server(dir) {
            return Ok(dir.to_path_buf());
        }
        bail!("{} does not contain initdb and postgres", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.pop() {
        return Ok(dir);
    }
    bail!(
        "PostgreSQL's server binaries (initdb, postgres) were not found in pg_config --bindir, PATH or \
         /usr/lib/postgresql/*/bin.\nInstall them, e.g. on Debian or Ubuntu: sudo apt-get install -y postgresql\n\
         or name their folder with --pg-bindir / PGPLANE_PG_BINDIR, or use an existing server with \
         --database-url / PGPLANE_DATABASE_URL."
    )
}
