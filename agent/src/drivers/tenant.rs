//! The tenant's role and database on a primary: created idempotently by `psql` run as the
//! server's OS user over the member's unix socket (peer authentication, no password on disk).
//! The SQL goes through stdin, so no secret appears in a command line.

use crate::patroni::{MemberPaths, SUPERUSER};
use anyhow::{bail, Context, Result};
use pgplane_core::agent::MemberSpec;
use pgplane_localpg::RunAs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A SQL string literal (standard_conforming_strings is on).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The psql script: create what is missing, then make the password and owner what the spec says.
pub fn script(user: &str, password: &str, database: &str) -> String {
    let create_role = format!("CREATE ROLE {} LOGIN", ident(user));
    let create_db = format!("CREATE DATABASE {} OWNER {}", ident(database), ident(user));
    format!(
        "SELECT {} WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {})\\gexec\n\
         ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION PASSWORD {};\n\
         SELECT {} WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {})\\gexec\n\
         ALTER DATABASE {} OWNER TO {};\n",
        literal(&create_role),
        literal(user),
        ident(user),
        literal(password),
        literal(&create_db),
        literal(database),
        ident(database),
        ident(user),
    )
}

/// Makes the tenant's role and database exist on the primary `spec` describes.
pub async fn ensure(spec: &MemberSpec, paths: &MemberPaths, bin_dir: &Path, runas: &RunAs) -> Result<()> {
    let s = &spec.secrets;
    if pgplane_core::validate::is_reserved_name(&s.app_user) {
        bail!("the tenant's user may not be named {:?}: that name is reserved", s.app_user);
    }
    let sql = script(&s.app_user, &s.app_password, &s.app_database);
    superuser_sql(spec, paths, bin_dir, runas, &sql)
        .await
        .with_context(|| format!("creating the tenant's role {:?} and database {:?}", s.app_user, s.app_database))?;
    Ok(())
}

/// Runs `sql` (psql's stdin) as the superuser over the member's unix socket; returns its output.
pub async fn superuser_sql(
    spec: &MemberSpec,
    paths: &MemberPaths,
    bin_dir: &Path,
    runas: &RunAs,
    sql: &str,
) -> Result<String> {
    let mut cmd = std::process::Command::new(bin_dir.join("psql"));
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", SUPERUSER, "-d", "postgres", "-h"])
        .arg(&paths.socket_dir)
        .args(["-p", &spec.pg_port.to_string()])
        .current_dir(&paths.dir)
        .env("HOME", &paths.dir)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    runas.apply(&mut cmd);
    let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().context("running psql")?;
    let mut stdin = child.stdin.take().context("psql's stdin")?;
    stdin.write_all(sql.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("psql did not finish within 60 s")??;
    if !out.status.success() {
        bail!("psql failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn script_creates_then_aligns() {
        let sql = script("app", "p'w", "db");
        assert!(sql.contains("SELECT 'CREATE ROLE \"app\" LOGIN' WHERE NOT EXISTS"));
        assert!(sql.contains("PASSWORD 'p''w'"));
        assert!(sql.contains("SELECT 'CREATE DATABASE \"db\" OWNER \"app\"' WHERE NOT EXISTS"));
        assert!(sql.contains("ALTER DATABASE \"db\" OWNER TO \"app\""));
        assert_eq!(sql.matches("\\gexec").count(), 2);
    }
}
