//! Logical backups of one database, streamed: `pg_dump -Fc` (the server's own major version)
//! piped straight into backup storage, never held in memory nor written to this host's disk,
//! with each table's row count taken in the very snapshot the dump reads (a session exports
//! its snapshot and `pg_dump --snapshot` uses it). Restores stream the other way into
//! `pg_restore`: in place through a scratch database whose name is swapped with the target's
//! in one transaction (a crash leaves the old content or the new, never a mix), and "verify"
//! restores into a throw-away PostgreSQL whose row counts must match the recorded ones.

use crate::tenant::{ident, literal};
use anyhow::{bail, Context, Result};
use pgplane_localpg::RunAs;
use pgplane_storage::{BackupStore, Uploaded};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How much of a tool's standard error is kept for an error message.
const STDERR_KEPT: usize = 4096;
/// Scratch databases of restores in place, and replaced ones awaiting their drop, are named
/// with these prefixes (a restore removes those a crash left behind).
pub const SCRATCH_PREFIX: &str = "pgplane_restore_";
pub const REPLACED_PREFIX: &str = "pgplane_replaced_";

/// A PostgreSQL server to dump from or restore into, and the client tools of its major version.
#[derive(Clone)]
pub struct PgTarget {
    /// The folder of `pg_dump`, `pg_restore` and `psql` of the server's major version.
    pub bin_dir: PathBuf,
    /// A unix socket folder or an address.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Given to the tools through `PGPASSWORD`, never on a command line; none for peer
    /// authentication over a socket.
    pub password: Option<String>,
    /// The OS user the tools run as (peer authentication on a member's socket).
    pub runas: Option<RunAs>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("bin_dir", &self.bin_dir)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PgTarget {
    fn command(&self, tool: &str, database: &str) -> Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(tool));
        cmd.args(["-h", &self.host, "-p", &self.port.to_string(), "-U", &self.user, "-d", database])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pgplane-backup")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        if let Some(runas) = &self.runas {
            runas.apply(&mut cmd);
        }
        let mut cmd = Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    /// A psql session on `database` driven through its stdin (see `Session`).
    async fn session(&self, database: &str) -> Result<Session> {
        let mut cmd = self.command("psql", database);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]).stdin(Stdio::piped());
        let mut child = cmd.spawn().context("running psql")?;
        let stdin = child.stdin.take().context("psql's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("psql's stdout")?);
        let stderr = collect_stderr(&mut child);
        Ok(Session { child, stdin, stdout, stderr })
    }

    /// Runs `sql` in a one-off psql on `database`; returns its output.
    pub async fn sql(&self, database: &str, sql: &str) -> Result<String> {
        let mut session = self.session(database).await?;
        let out = session.query(sql).await;
        session.close().await;
        out
    }
}

/// An open psql session: queries go in one at a time, each answer ends at a marker line.
struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: tokio::task::JoinHandle<String>,
}

const END: &str = "__pgplane_end__";

impl Session {
    async fn query(&mut self, sql: &str) -> Result<String> {
        let script = format!("{sql}\n\\echo {END}\n");
        self.stdin.write_all(script.as_bytes()).await.context("writing to psql")?;
        self.stdin.flush().await.context("writing to psql")?;
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).await.context("reading psql's answer")? == 0 {
                let _ = self.child.wait().await;
                let stderr = (&mut self.stderr).await.unwrap_or_default();
                bail!("psql failed: {}", stderr.trim());
            }
            if line.trim_end() == END {
                return Ok(out.trim_end().to_string());
            }
            out.push_str(&line);
        }
    }

    async fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait().await;
    }
}

/// Keeps the first `STDERR_KEPT` bytes of a child's standard error, draining the rest.
fn collect_stderr(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else { return String::new() };
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = STDERR_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Every table's row count (`schema.table` → rows) and the number of large objects, read by
/// `session` in its current snapshot.
async fn count_rows(session: &mut Session) -> Result<RowCounts> {
    let tables = session
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) || '|' || \
                    (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', \
                     n.nspname, c.relname), false, true, '')))[1]::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
             ORDER BY 1;",
        )
        .await
        .context("counting rows")?;
    let mut counts = RowCounts::default();
    for line in tables.lines().filter(|l| !l.is_empty()) {
        let (table, rows) = line.rsplit_once('|').context("a row count")?;
        counts.tables.insert(table.to_string(), rows.parse().with_context(|| format!("the row count of {table}"))?);
    }
    counts.large_objects = session
        .query("SELECT count(*) FROM pg_largeobject_metadata;")
        .await?
        .parse()
        .context("the large objects' count")?;
    Ok(counts)
}

/// What a dump saw: rows per table and large objects, in the dump's own snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowCounts {
    pub tables: BTreeMap<String, i64>,
    pub large_objects: i64,
}

/// What a dump produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DumpReport {
    pub size: u64,
    pub sha256: String,
    /// `server_version` of the server dumped (e.g. `15.14 (Debian 15.14-0+deb12u1)`).
    pub server_version: String,
    /// Dumped from a hot standby.
    pub from_standby: bool,
    pub row_counts: RowCounts,
}

/// Dumps `database` of `target` into the object `key` of `store`. The object appears only when
/// the dump completed (pg_dump exited 0 and the upload completed).
///
/// On a hot standby the dump's snapshot must not be cancelled by recovery conflicts (VACUUM on
/// the leader removing rows it still sees, or the truncation's exclusive lock): the standby has
/// to run with `hot_standby_feedback = on` and `max_standby_streaming_delay = -1`, and a dump
/// on one without them is refused (see `standby_ready`).
pub async fn dump(target: &PgTarget, database: &str, store: &BackupStore, key: &str) -> Result<DumpReport> {
    let mut session = target.session(database).await?;
    let facts = session
        .query("SELECT pg_is_in_recovery(), current_setting('server_version'), current_setting('hot_standby_feedback'), current_setting('max_standby_streaming_delay');")
        .await?;
    let fields: Vec<&str> = facts.split('|').collect();
    let [in_recovery, server_version, feedback, delay] = fields[..] else { bail!("unexpected answer {facts:?}") };
    let from_standby = in_recovery == "t";
    if from_standby {
        standby_ready(feedback, delay)?;
    }
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;").await?;
    let snapshot = session.query("SELECT pg_export_snapshot();").await.context("exporting the dump's snapshot")?;

    let mut cmd = target.command("pg_dump", database);
    cmd.args(["-Fc", "--no-sync", &format!("--snapshot={snapshot}")]);
    let mut child = cmd.spawn().context("running pg_dump")?;
    let stdout = child.stdout.take().context("pg_dump's stdout")?;
    let stderr = collect_stderr(&mut child);
    let exited = async {
        let status = child.wait().await.context("waiting for pg_dump")?;
        if !status.success() {
            let stderr = stderr.await.unwrap_or_default();
            bail!("pg_dump failed ({status}): {}", stderr.trim());
        }
        Ok(())
    };
    // The rows are counted in the same snapshot while pg_dump reads it (on another core).
    let (uploaded, row_counts) = tokio::join!(store.upload_checked(key, stdout, exited), count_rows(&mut session));
    // The snapshot is held until pg_dump is done with it.
    let _ = session.query("COMMIT;").await;
    session.close().await;
    let Uploaded { size, sha256 } = uploaded?;
    let row_counts = match row_counts {
        Ok(counts) => counts,
        Err(e) => {
            // A dump without its counts cannot be verified: it is not kept.
            store.delete(key).await?;
            return Err(e);
        }
    };
    Ok(DumpReport { size, sha256, server_version: server_version.to_string(), from_standby, row_counts })
}

/// Refuses a standby on which a long dump would be cancelled by recovery conflicts.
pub fn standby_ready(hot_standby_feedback: &str, max_standby_streaming_delay: &str) -> Result<()> {
    if hot_standby_feedback != "on" || max_standby_streaming_delay != "-1" {
        bail!(
            "this standby would cancel a long dump on recovery conflicts (hot_standby_feedback = {hot_standby_feedback}, \
             max_standby_streaming_delay = {max_standby_streaming_delay}; a dump needs on and -1): dump on the leader"
        );
    }
    Ok(())
}

/// Streams the object `key` into `pg_restore` into `database` (which exists and is empty).
/// Checks the object's SHA-256 against `sha256` when given; the restore fails when it differs.
async fn restore_into(
    target: &PgTarget,
    store: &BackupStore,
    key: &str,
    sha256: Option<&str>,
    database: &str,
    owner: Option<&str>,
) -> Result<()> {
    let mut cmd = target.command("pg_restore", database);
    cmd.args(["--exit-on-error", "--single-transaction", "--no-owner"]).stdin(Stdio::piped());
    match owner {
        // The objects belong to the database's owner; its grants are kept (same roles).
        Some(owner) => cmd.args(["--role", owner]),
        // A scratch server has none of the roles the grants name.
        None => cmd.arg("--no-privileges"),
    };
    let mut child = cmd.spawn().context("running pg_restore")?;
    let mut stdin = child.stdin.take().context("pg_restore's stdin")?;
    let stderr = collect_stderr(&mut child);
    let fed = store.download(key, &mut stdin).await;
    drop(stdin);
    let status = child.wait().await.context("waiting for pg_restore")?;
    if !status.success() {
        let stderr = stderr.await.unwrap_or_default();
        bail!("pg_restore failed ({status}): {}", stderr.trim());
    }
    let fed = fed?;
    if let Some(expected) = sha256 {
        if fed.sha256 != expected {
            bail!("the backup {key} is damaged: its SHA-256 is {} instead of {expected}", fed.sha256);
        }
    }
    Ok(())
}

/// Drops what an interrupted restore in place left behind: scratch databases, and a replaced
/// database whose drop did not happen.
async fn drop_leftovers(target: &PgTarget) -> Result<()> {
    let names = target
        .sql(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE starts_with(datname, {}) OR starts_with(datname, {});",
                literal(SCRATCH_PREFIX),
                literal(REPLACED_PREFIX)
            ),
        )
        .await?;
    for name in names.lines().filter(|l| !l.is_empty()) {
        target.sql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", ident(name))).await?;
    }
    Ok(())
}

/// Replaces the content of `database` by the backup `key`: restored into a scratch database
/// first (the target keeps serving meanwhile), then the two names swap in one transaction, so a
/// crash at any point leaves either the old content or the new under the name, never a mix.
/// Sessions on the target are ended at the swap. The restored objects belong to `owner`.
pub async fn restore_in_place(
    target: &PgTarget,
    store: &BackupStore,
    key: &str,
    sha256: Option<&str>,
    database: &str,
    owner: &str,
) -> Result<()> {
    // A swap interrupted after closing the target to new sessions leaves it closed: open it.
    target.sql("postgres", &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true;", ident(database))).await?;
    drop_leftovers(target).await?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let scratch = format!("{SCRATCH_PREFIX}{}", &suffix[..12]);
    let replaced = format!("{REPLACED_PREFIX}{}", &suffix[..12]);
    target
        .sql("postgres", &format!("CREATE DATABASE {} OWNER {} TEMPLATE template0;", ident(&scratch), ident(owner)))
        .await?;
    if let Err(e) = restore_into(target, store, key, sha256, &scratch, Some(owner)).await {
        let _ = target.sql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", ident(&scratch))).await;
        return Err(e);
    }
    swap(target, database, &scratch, &replaced).await?;
    target.sql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", ident(&replaced))).await?;
    Ok(())
}

/// Renames `database` to `replaced` and `scratch` to `database` in one transaction, after ending
/// the target's sessions (new ones are refused meanwhile). Tried a few times: a client may
/// reconnect between the end of the sessions and the renames.
async fn swap(target: &PgTarget, database: &str, scratch: &str, replaced: &str) -> Result<()> {
    let (db, scratch, replaced) = (ident(database), ident(scratch), ident(replaced));
    let script = format!(
        "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false;\n\
         SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {name} AND pid <> pg_backend_pid();\n\
         BEGIN;\n\
         ALTER DATABASE {db} RENAME TO {replaced};\n\
         ALTER DATABASE {scratch} RENAME TO {db};\n\
         COMMIT;",
        name = literal(database)
    );
    let mut last = None;
    for _ in 0..10 {
        match target.sql("postgres", &script).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    // The old content stays, open again.
    let _ = target.sql("postgres", &format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true;")).await;
    Err(last.expect("tried at least once")).context("swapping the restored database in")
}

/// What a verify restore found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    /// Every table read back and every count matched.
    pub ok: bool,
    /// What differed, for the backup's verification result.
    pub problems: Vec<String>,
}

/// Restores the backup `key` into a throw-away PostgreSQL of the tools' version (started with
/// `bin_dir`, removed afterwards), reads every table back and compares row counts with those
/// recorded at dump time.
pub async fn verify(
    bin_dir: &std::path::Path,
    store: &BackupStore,
    key: &str,
    sha256: Option<&str>,
    expected: &RowCounts,
) -> Result<Verification> {
    let dir = bin_dir.to_path_buf();
    let pg = tokio::task::spawn_blocking(move || pgplane_localpg::LocalPg::temporary(&dir))
        .await
        .context("starting a scratch PostgreSQL")??;
    let target = scratch_target(bin_dir, &pg);
    let result = async {
        target.sql("postgres", "CREATE DATABASE verify TEMPLATE template0;").await?;
        restore_into(&target, store, key, sha256, "verify", None).await?;
        let mut session = target.session("verify").await?;
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;").await?;
        let found = count_rows(&mut session).await;
        session.close().await;
        Ok::<_, anyhow::Error>(compare(expected, &found?))
    }
    .await;
    tokio::task::spawn_blocking(move || drop(pg)).await.ok();
    result
}

/// A target on a scratch server of this host (its superuser over TCP).
pub fn scratch_target(bin_dir: &std::path::Path, pg: &pgplane_localpg::LocalPg) -> PgTarget {
    let url = pg.url("postgres");
    let password = url
        .strip_prefix(&format!("postgres://{}:", pgplane_localpg::SUPERUSER))
        .and_then(|rest| rest.split_once('@'))
        .map(|(p, _)| p.to_string());
    PgTarget {
        bin_dir: bin_dir.to_path_buf(),
        host: "127.0.0.1".into(),
        port: pg.port(),
        user: pgplane_localpg::SUPERUSER.into(),
        password,
        runas: None,
    }
}

/// The differences between recorded and restored counts.
pub fn compare(expected: &RowCounts, found: &RowCounts) -> Verification {
    let mut problems = Vec::new();
    for (table, rows) in &expected.tables {
        match found.tables.get(table) {
            None => problems.push(format!("table {table} is missing")),
            Some(n) if n != rows => problems.push(format!("table {table} has {n} rows instead of {rows}")),
            Some(_) => {}
        }
    }
    for table in found.tables.keys().filter(|t| !expected.tables.contains_key(*t)) {
        problems.push(format!("table {table} was not in the dump's counts"));
    }
    if expected.large_objects != found.large_objects {
        problems.push(format!("{} large objects instead of {}", found.large_objects, expected.large_objects));
    }
    Verification { ok: problems.is_empty(), problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_must_hold_its_snapshots() {
        assert!(standby_ready("on", "-1").is_ok());
        assert!(standby_ready("off", "-1").is_err());
        assert!(standby_ready("on", "30s").is_err());
    }

    #[test]
    fn compare_names_every_difference() {
        let mut expected = RowCounts::default();
        expected.tables.insert("public.a".into(), 3);
        expected.tables.insert("public.b".into(), 1);
        expected.large_objects = 2;
        assert!(compare(&expected, &expected).ok);
        let mut found = expected.clone();
        found.tables.insert("public.a".into(), 2);
        found.tables.remove("public.b");
        found.tables.insert("public.c".into(), 0);
        found.large_objects = 1;
        let v = compare(&expected, &found);
        assert!(!v.ok);
        assert_eq!(v.problems.len(), 4, "{:?}", v.problems);
    }
}
