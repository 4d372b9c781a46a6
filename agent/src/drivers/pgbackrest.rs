//! pgBackRest, which keeps a database's physical backups and its WAL for point-in-time
//! recovery: one stanza per database (`pgplane_core::pitr::stanza_name`), configured by a file
//! the agent writes beside the member (repository: a folder of the local backup storage or a
//! prefix of the S3 bucket, either under the database's own id, so a fork never archives into
//! its source's repository; S3 credentials sit in that 0600 file, owned by the server's OS
//! user, never on a command line). The commands PostgreSQL runs (`archive-push`, `archive-get`),
//! `stanza-create`, `check`, `backup`, `info` (parsed into the typed window of
//! `pgplane_core::pitr`), `expire`, and `restore` of a target into a data folder. Every command
//! runs as the server's OS user (pgBackRest refuses root).

use crate::files::{ensure_dir, find_program, write_atomic};
use crate::pgdump::PgTarget;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, TimeZone, Utc};
use pgplane_core::ids::DatabaseId;
use pgplane_core::pitr::{self, ArchiveHealth, Lsn, PitrBackup, RestoreTarget, TimelineSwitch};
use pgplane_localpg::RunAs;
use pgplane_storage::StorageConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How much of pgBackRest's standard error an error message keeps.
const STDERR_KEPT: usize = 4000;

/// Seconds after which PostgreSQL switches to a new WAL segment when there was activity: the
/// most a live database's latest recoverable time lags behind.
pub const ARCHIVE_TIMEOUT_SECS: u32 = 60;

/// The folder of a repository's stanzas inside the backup storage (local root or bucket).
pub const REPO_PREFIX: &str = "pitr";

/// The pgBackRest program: `PGPLANE_PGBACKREST`, else on PATH.
pub fn program() -> Result<PathBuf> {
    find_program("pgbackrest", "PGPLANE_PGBACKREST")
        .map_err(|_| anyhow::anyhow!("pgbackrest was not found (set PGPLANE_PGBACKREST): run scripts/install-deps"))
}

/// The newest PostgreSQL major a pgBackRest version backs up (`PG_VERSION_MAX` of its source):
/// 2.45, Debian 12's, refuses 16 ("unexpected control version").
pub fn max_postgres_major(version: &str) -> Option<u32> {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    Some(match (major, minor) {
        (2, 0..=45) => 15,
        (2, 46..=51) => 16,
        (2, 52..=54) => 17,
        _ => 18,
    })
}

/// The PostgreSQL server a stanza backs up, as pgBackRest reaches it: its data folder, and its
/// socket as the OS superuser (peer authentication).
#[derive(Debug, Clone)]
pub struct PgServer {
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
}

/// A stanza's files on this host: its configuration and pgBackRest's log, lock and spool
/// folders, all inside `dir`.
#[derive(Debug, Clone)]
pub struct StanzaPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub lock: PathBuf,
    pub spool: PathBuf,
}

impl StanzaPaths {
    pub fn new(dir: PathBuf) -> Self {
        StanzaPaths {
            config: dir.join("pgbackrest.conf"),
            log: dir.join("log"),
            lock: dir.join("lock"),
            spool: dir.join("spool"),
            dir,
        }
    }
}

/// One database's stanza as this host runs it.
#[derive(Debug, Clone)]
pub struct Stanza {
    pub name: String,
    pub paths: StanzaPaths,
    pub program: PathBuf,
    pub runas: RunAs,
}

/// `key=value` lines of a pgBackRest configuration section.
type Options = Vec<(String, String)>;

/// The repository options of `storage` for `database`'s stanza (`repo1-*` lines) and, for a
/// local folder, the folder to make.
fn repo_options(storage: &StorageConfig, database: DatabaseId) -> Result<(Options, Option<PathBuf>)> {
    let mut options = Vec::new();
    let mut put = |k: &str, v: String| options.push((k.to_string(), v));
    let local = match storage {
        StorageConfig::Local { root } => {
            let path = root.join(REPO_PREFIX).join(database.to_string());
            put("repo1-type", "posix".into());
            put("repo1-path", path.display().to_string());
            Some(path)
        }
        StorageConfig::S3(s3) => {
            let endpoint = s3.endpoint.as_deref().unwrap_or("https://s3.amazonaws.com");
            let Some(rest) = endpoint.strip_prefix("https://") else {
                bail!("pgBackRest reaches S3 over https only, and the endpoint is {endpoint}");
            };
            let host_port = rest.trim_end_matches('/');
            let (host, port) = match host_port.rsplit_once(':') {
                Some((h, p))
                    if !p.is_empty()
                        && p.chars().all(|c| c.is_ascii_digit())
                        && (!h.contains(':') || h.ends_with(']')) =>
                {
                    (
                        h.trim_start_matches('[').trim_end_matches(']').to_string(),
                        Some(p.parse::<u16>().with_context(|| format!("the port of {endpoint}"))?),
                    )
                }
                _ => (host_port.to_string(), None),
            };
            let credentials = s3.credentials()?;
            put("repo1-type", "s3".into());
            put("repo1-path", format!("/{REPO_PREFIX}/{database}"));
            put("repo1-s3-bucket", s3.bucket.clone());
            put("repo1-s3-endpoint", host);
            if let Some(port) = port {
                put("repo1-storage-port", port.to_string());
            }
            put("repo1-s3-region", s3.region.clone());
            put("repo1-s3-uri-style", if s3.path_style { "path" } else { "host" }.into());
            put("repo1-s3-key", credentials.access_key_id.clone());
            put("repo1-s3-key-secret", credentials.secret_access_key.clone());
            if let Some(ca) = &s3.ca_file {
                put("repo1-storage-ca-file", ca.display().to_string());
            }
            None
        }
    };
    Ok((options, local))
}

/// The whole configuration file of a stanza.
pub fn render_config(
    stanza: &str,
    repo: &[(String, String)],
    paths: &StanzaPaths,
    server: &PgServer,
    window_days: u32,
) -> Result<String> {
    let mut global: Options = repo.to_vec();
    let mut put = |k: &str, v: String| global.push((k.to_string(), v));
    // Time-based retention keeps the full backups (and their WAL) a restore to any second of the
    // last `window_days` days needs: the newest full backup older than the window stays.
    put("repo1-retention-full-type", "time".into());
    put("repo1-retention-full", window_days.max(1).to_string());
    put("log-path", paths.log.display().to_string());
    put("lock-path", paths.lock.display().to_string());
    put("spool-path", paths.spool.display().to_string());
    put("log-level-console", "off".into());
    put("log-level-stderr", "warn".into());
    put("log-level-file", "info".into());
    put("start-fast", "y".into());
    put("compress-type", "lz4".into());
    put("process-max", "2".into());
    let stanza_lines = [
        ("pg1-path", server.data.display().to_string()),
        ("pg1-socket-path", server.socket_dir.display().to_string()),
        ("pg1-port", server.port.to_string()),
        ("pg1-user", server.user.clone()),
    ];
    let mut text = String::from("# Written by pgplane's agent: one stanza per database.\n[global]\n");
    for (k, v) in global.iter().map(|(k, v)| (k.as_str(), v.as_str())) {
        line(&mut text, k, v)?;
    }
    text.push_str(&format!("\n[{stanza}]\n"));
    for (k, v) in stanza_lines.iter().map(|(k, v)| (*k, v.as_str())) {
        line(&mut text, k, v)?;
    }
    Ok(text)
}

fn line(text: &mut String, key: &str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r']) || value.is_empty() {
        bail!("the pgBackRest option {key} cannot be empty or span lines");
    }
    text.push_str(&format!("{key}={value}\n"));
    Ok(())
}

/// Quotes a word for the shell that runs `archive_command` and `restore_command`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `archive_command`: pushes each completed segment into the stanza's repository.
pub fn archive_command(program: &Path, config: &Path, stanza: &str) -> String {
    format!(
        "{} --config={} --stanza={stanza} archive-push %p",
        shell_quote(&program.display().to_string()),
        shell_quote(&config.display().to_string()),
    )
}

/// `restore_command`: how a replica, or a server in recovery, fetches WAL from the repository.
pub fn restore_command(program: &Path, config: &Path, stanza: &str) -> String {
    format!(
        "{} --config={} --stanza={stanza} archive-get %f \"%p\"",
        shell_quote(&program.display().to_string()),
        shell_quote(&config.display().to_string()),
    )
}

/// The PostgreSQL parameters of a member that archives into `stanza`. Every member has them and
/// the one that leads archives (`archive_mode = on`), whichever it is after a failover or
/// switchover. Not `always` (replicas archiving what they receive too, which would cover a
/// segment a lost leader had not archived yet): pgBackRest 2.45's `backup` and `check` refuse it
/// ("archive_mode=always not supported"). After a failover, `push_segment` sends the old
/// timeline's segments the repository lacks from the new leader's `pg_wal`.
pub fn archive_parameters(program: &Path, config: &Path, stanza: &str) -> Vec<(&'static str, String)> {
    vec![
        ("archive_mode", "on".into()),
        ("archive_command", archive_command(program, config, stanza)),
        ("archive_timeout", format!("{ARCHIVE_TIMEOUT_SECS}s")),
    ]
}

/// A command's output.
struct Output {
    stdout: String,
}

impl Stanza {
    /// Writes the configuration of `database`'s stanza for `server` into `dir` (and makes the
    /// local repository folder), owned by `runas`; idempotent.
    pub fn configure(
        dir: &Path,
        database: DatabaseId,
        storage: &StorageConfig,
        server: &PgServer,
        window_days: u32,
        runas: &RunAs,
    ) -> Result<Stanza> {
        let name = pitr::stanza_name(database);
        let paths = StanzaPaths::new(dir.to_path_buf());
        ensure_dir(&paths.dir, 0o700, Some(runas))?;
        for sub in [&paths.log, &paths.lock, &paths.spool] {
            ensure_dir(sub, 0o700, Some(runas))?;
        }
        let (repo, local) = repo_options(storage, database)?;
        if let Some(path) = local {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            ensure_dir(&path, 0o750, Some(runas))?;
        }
        let text = render_config(&name, &repo, &paths, server, window_days)?;
        write_atomic(&paths.config, &text, Some(runas))?;
        Ok(Stanza { name, paths, program: program()?, runas: runas.clone() })
    }

    /// `archive_command` of this stanza (see `archive_command`).
    pub fn archive_command(&self) -> String {
        archive_command(&self.program, &self.paths.config, &self.name)
    }

    /// `restore_command` of this stanza (see `restore_command`).
    pub fn restore_command(&self) -> String {
        restore_command(&self.program, &self.paths.config, &self.name)
    }

    /// The PostgreSQL parameters of a member archiving into this stanza (see `archive_parameters`).
    pub fn archive_parameters(&self) -> Vec<(&'static str, String)> {
        archive_parameters(&self.program, &self.paths.config, &self.name)
    }

    /// Runs `pgbackrest --config … --stanza … <args>` as the server's OS user.
    async fn run(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg(format!("--config={}", self.paths.config.display()))
            .arg(format!("--stanza={}", self.name))
            .args(args)
            .current_dir(&self.paths.dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.runas.apply(&mut cmd);
        die_with_the_agent(&mut cmd);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let out = cmd.output().await.with_context(|| format!("running {}", self.program.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let kept: String = stderr.chars().take(STDERR_KEPT).collect();
            bail!("pgbackrest {} failed ({}): {}", args.join(" "), out.status, kept.trim());
        }
        Ok(Output { stdout: String::from_utf8_lossy(&out.stdout).into_owned() })
    }

    /// `stanza-create`: the repository learns the server's version and system id. Running it
    /// again on the same server changes nothing.
    pub async fn create(&self) -> Result<()> {
        self.run(&["stanza-create"]).await.map(drop)
    }

    /// `check`: switches the server's WAL and waits until that segment is in the repository.
    pub async fn check(&self) -> Result<()> {
        self.run(&["check"]).await.map(drop)
    }

    /// A backup (`full`, or `incr` on top of the newest backup), then `expire` by retention;
    /// returns the new backup as `info` shows it.
    pub async fn backup(&self, kind: BackupKind) -> Result<PitrBackup> {
        let kind = match kind {
            BackupKind::Full => "--type=full",
            BackupKind::Incremental => "--type=incr",
        };
        self.run(&["backup", kind]).await?;
        let info = self.info().await?;
        info.backups.into_iter().max_by_key(|b| (b.stopped_at, b.stop_lsn)).context("no backup after a backup")
    }

    /// `expire`: deletes the full backups (and their WAL) retention no longer needs.
    pub async fn expire(&self) -> Result<()> {
        self.run(&["expire"]).await.map(drop)
    }

    /// Pushes one WAL segment file (a path in a member's `pg_wal`) into the repository, as
    /// `archive_command` would: the same segment again is accepted, a different one refused.
    pub async fn push_segment(&self, segment: &Path) -> Result<()> {
        let path = segment.display().to_string();
        self.run(&["archive-push", &path]).await.map(drop)
    }

    /// The stanza's backups and archive, parsed from `info --output=json`.
    pub async fn info(&self) -> Result<StanzaInfo> {
        let out = self.run(&["--output=json", "info"]).await?;
        parse_info(&out.stdout, &self.name)
    }

    /// The history of `timeline` (its ancestors and where each was left) from the repository;
    /// timeline 1 has none.
    pub async fn timeline_history(&self, archive_id: &str, timeline: u32) -> Result<Vec<TimelineSwitch>> {
        if timeline <= 1 {
            return Ok(Vec::new());
        }
        let file = format!("archive/{}/{archive_id}/{timeline:08X}.history", self.name);
        let out = self.run(&["repo-get", &file]).await?;
        pitr::parse_history(&out.stdout).map_err(anyhow::Error::msg)
    }

    /// Restores `plan` into `data` (an empty or missing folder, or with `delta` the folder of a
    /// stopped copy of the same database, whose unchanged files are kept). The folder then holds
    /// a server that replays WAL from the repository up to the target and promotes itself.
    /// With `delta` the old content is gone as soon as the restore starts: an in-place restore
    /// that must survive a crash with the old content or the new uses `restore_staged`.
    pub async fn restore(&self, data: &Path, plan: &RestorePlan, delta: bool) -> Result<()> {
        self.restore_into(data, data, plan, delta).await
    }

    /// Restores `plan` beside the data folder `data` of a server that keeps running meanwhile
    /// (into `staged_dir(data)`, started over if a crash left one), to run from `data` once
    /// `swap_in` has put it there with the server stopped.
    pub async fn restore_staged(&self, data: &Path, plan: &RestorePlan) -> Result<()> {
        let staged = staged_dir(data);
        if staged.exists() {
            std::fs::remove_dir_all(&staged).with_context(|| format!("removing {}", staged.display()))?;
        }
        self.restore_into(&staged, data, plan, false).await
    }

    async fn restore_into(&self, dir: &Path, runs_from: &Path, plan: &RestorePlan, delta: bool) -> Result<()> {
        plan.target.validate().map_err(anyhow::Error::msg)?;
        if dir.exists() && !delta {
            let mut entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                bail!("restoring into {}: the folder is not empty", dir.display());
            }
        }
        ensure_dir(dir, 0o700, Some(&self.runas))?;
        let mut args = vec![
            format!("--pg1-path={}", dir.display()),
            "--target-action=promote".to_string(),
            format!("--recovery-option=restore_command={}", self.recovery_restore_command(runs_from)?),
        ];
        args.extend(target_args(&plan.target));
        if let Some(timeline) = plan.timeline {
            args.push(format!("--target-timeline={timeline}"));
        }
        if let Some(set) = &plan.set {
            args.push(format!("--set={set}"));
        }
        if delta {
            args.push("--delta".into());
        }
        args.push("restore".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args).await.map(drop)
    }

    /// The `restore_command` a restore writes into the restored `postgresql.auto.conf`: archive-get
    /// reads the server's `pg_control` in `--pg1-path`, so it names the folder the server runs
    /// from. pgBackRest writes the value between single quotes without escaping: the words are
    /// double-quoted, and paths that would need more are refused.
    fn recovery_restore_command(&self, runs_from: &Path) -> Result<String> {
        let word = |p: &Path| -> Result<String> {
            let text = p.display().to_string();
            if text.contains(['"', '\'', '\\', '$', '`', '\n']) {
                bail!("the path {text} cannot be written into restore_command");
            }
            Ok(format!("\"{text}\""))
        };
        Ok(format!(
            "{} --config={} --stanza={} --pg1-path={} archive-get %f \"%p\"",
            word(&self.program)?,
            word(&self.paths.config)?,
            self.name,
            word(runs_from)?
        ))
    }

    /// Makes sure every transaction committed so far can be a time target: a commit record is
    /// written (a time target stops at the first commit after it, and recovery that finds none
    /// fails), then `check` switches WAL and waits until the segment is archived.
    pub async fn seal(&self, server: &PgTarget) -> Result<()> {
        server
            .sql("postgres", "BEGIN; SELECT pg_current_xact_id(); COMMIT;")
            .await
            .context("writing a commit marker")?;
        self.check().await
    }
}

/// Where `restore_staged` puts a restore of the data folder `data` until `swap_in`.
pub fn staged_dir(data: &Path) -> PathBuf {
    sibling(data, "restoring")
}

/// Where `swap_in` keeps the replaced content until `drop_replaced`.
pub fn replaced_dir(data: &Path) -> PathBuf {
    sibling(data, "replaced")
}

fn sibling(data: &Path, suffix: &str) -> PathBuf {
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    data.with_file_name(format!("{name}.{suffix}"))
}

/// With the server stopped, puts a staged restore in place: `data` becomes `replaced_dir`,
/// `staged_dir` becomes `data` (two renames on one file system). Run again after a crash, it
/// finishes what was started; `resolve_swap` decides what a crash left.
pub fn swap_in(data: &Path) -> Result<()> {
    let (staged, replaced) = (staged_dir(data), replaced_dir(data));
    if !staged.exists() {
        if data.exists() && replaced.exists() {
            return Ok(()); // done before
        }
        bail!("no staged restore at {}", staged.display());
    }
    if data.exists() {
        if replaced.exists() {
            std::fs::remove_dir_all(&replaced).with_context(|| format!("removing {}", replaced.display()))?;
        }
        std::fs::rename(data, &replaced).with_context(|| format!("moving {} aside", data.display()))?;
    }
    std::fs::rename(&staged, data).with_context(|| format!("moving {} in", staged.display()))
}

/// Once the restored server has promoted, drops the content it replaced.
pub fn drop_replaced(data: &Path) -> Result<()> {
    let replaced = replaced_dir(data);
    if replaced.exists() {
        std::fs::remove_dir_all(&replaced).with_context(|| format!("removing {}", replaced.display()))?;
    }
    Ok(())
}

/// What an in-place restore interrupted by a crash left, made whole before the server starts:
/// with `data` in place, a staged folder is an unfinished restore and goes (the old content
/// stays); without `data`, the crash fell between the two renames of `swap_in`, which
/// completes (the new content, which was whole before the swap began).
pub fn resolve_swap(data: &Path) -> Result<SwapOutcome> {
    let staged = staged_dir(data);
    if !staged.exists() {
        return Ok(SwapOutcome::Nothing);
    }
    if data.exists() {
        std::fs::remove_dir_all(&staged).with_context(|| format!("removing {}", staged.display()))?;
        return Ok(SwapOutcome::KeptOld);
    }
    std::fs::rename(&staged, data).with_context(|| format!("moving {} in", staged.display()))?;
    Ok(SwapOutcome::CompletedNew)
}

/// What `resolve_swap` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutcome {
    Nothing,
    KeptOld,
    CompletedNew,
}

/// The kernel kills the child when the agent dies (kill -9 included; `kill_on_drop` only acts
/// when the future is dropped): a restore the agent no longer waits for must not go on writing
/// into a folder the retried step removes and restores again.
#[allow(unsafe_code)]
fn die_with_the_agent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died before prctl took effect.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the agent exited"));
            }
            Ok(())
        });
    }
}

/// `--type` and `--target` of a restore target.
fn target_args(target: &RestoreTarget) -> Vec<String> {
    match target {
        RestoreTarget::Time { time } => {
            vec!["--type=time".into(), format!("--target={}", time.format("%Y-%m-%d %H:%M:%S+00"))]
        }
        RestoreTarget::Lsn { lsn } => vec!["--type=lsn".into(), format!("--target={lsn}")],
        RestoreTarget::Name { name, .. } => vec!["--type=name".into(), format!("--target={name}")],
    }
}

/// The kind of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    Incremental,
}

/// What a restore is asked to reach: the target, the timeline to follow (`None`: PostgreSQL's
/// default, the newest), and the backup set to start from (`None`: pgBackRest chooses the
/// newest that ended before a time or LSN target; always give one for a name target, and when
/// other timelines exist, see `pitr::choose_backup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub target: RestoreTarget,
    pub timeline: Option<u32>,
    pub set: Option<String>,
}

/// What `info` says about a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaInfo {
    /// pgBackRest's status: 0 is ok; 2 is "missing stanza data", 3 "no valid backups".
    pub status_code: i64,
    pub status_message: String,
    /// The repository's archive id for the current PostgreSQL version (`15-1`).
    pub archive_id: Option<String>,
    /// The oldest and newest WAL segments the repository holds.
    pub archive_min: Option<String>,
    pub archive_max: Option<String>,
    pub backups: Vec<PitrBackup>,
}

#[derive(Deserialize)]
struct InfoJson {
    name: String,
    #[serde(default)]
    status: StatusJson,
    #[serde(default)]
    archive: Vec<ArchiveJson>,
    #[serde(default)]
    backup: Vec<BackupJson>,
}

#[derive(Deserialize, Default)]
struct StatusJson {
    code: i64,
    message: String,
}

#[derive(Deserialize)]
struct ArchiveJson {
    id: String,
    min: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
struct BackupJson {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: StartStop<i64>,
    lsn: StartStop<String>,
    archive: StartStop<String>,
    info: BackupInfoJson,
}

#[derive(Deserialize)]
struct StartStop<T> {
    start: T,
    stop: T,
}

#[derive(Deserialize)]
struct BackupInfoJson {
    size: u64,
    repository: RepositoryJson,
}

#[derive(Deserialize)]
struct RepositoryJson {
    size: u64,
}

fn epoch(seconds: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_opt(seconds, 0).single().with_context(|| format!("time {seconds} out of range"))
}

/// Parses `pgbackrest info --output=json` for `stanza`.
pub fn parse_info(json: &str, stanza: &str) -> Result<StanzaInfo> {
    let all: Vec<InfoJson> = serde_json::from_str(json).context("parsing pgbackrest info")?;
    let info = all.into_iter().find(|s| s.name == stanza).with_context(|| format!("no stanza {stanza} in info"))?;
    let current = info.archive.last();
    let mut backups = Vec::new();
    for b in info.backup {
        let lsn = |s: &str| s.parse::<Lsn>().map_err(anyhow::Error::msg);
        backups.push(PitrBackup {
            timeline: pitr::segment_timeline(&b.archive.start).context("the timeline of a backup's first segment")?,
            label: b.label,
            kind: b.kind,
            started_at: epoch(b.timestamp.start)?,
            stopped_at: epoch(b.timestamp.stop)?,
            start_lsn: lsn(&b.lsn.start)?,
            stop_lsn: lsn(&b.lsn.stop)?,
            size: b.info.size,
            repository_size: b.info.repository.size,
        });
    }
    Ok(StanzaInfo {
        status_code: info.status.code,
        status_message: info.status.message,
        archive_id: current.map(|a| a.id.clone()),
        archive_min: current.and_then(|a| a.min.clone()),
        archive_max: current.and_then(|a| a.max.clone()),
        backups,
    })
}

/// How archiving fares on `server` (the member that leads), from `pg_stat_archiver` and the
/// segments waiting in its `archive_status`.
pub async fn archive_health(server: &PgTarget) -> Result<ArchiveHealth> {
    let row = server
        .sql(
            "postgres",
            "SELECT coalesce(last_archived_wal, ''), coalesce(extract(epoch FROM last_archived_time)::bigint::text, ''), \
                    coalesce(last_failed_wal, ''), coalesce(extract(epoch FROM last_failed_time)::bigint::text, ''), \
                    (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), \
                    current_setting('wal_segment_size', false) \
             FROM pg_stat_archiver;",
        )
        .await?;
    let f: Vec<&str> = row.split('|').collect();
    let [archived, archived_at, failed, failed_at, pending, segment] = f[..] else {
        bail!("unexpected answer {row:?}")
    };
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let time = |s: &str| -> Result<Option<DateTime<Utc>>> {
        if s.is_empty() {
            return Ok(None);
        }
        Ok(Some(epoch(s.parse().context("an epoch")?)?))
    };
    let pending: u64 = pending.parse().context("the pending segments")?;
    let segment_bytes = parse_size(segment).context("wal_segment_size")?;
    Ok(ArchiveHealth {
        last_archived_wal: text(archived),
        last_archived_at: time(archived_at)?,
        last_failed_wal: text(failed),
        last_failed_at: time(failed_at)?,
        pending_segments: pending,
        pending_bytes: pending * segment_bytes,
    })
}

/// `16MB` → bytes (PostgreSQL's units for memory sizes).
fn parse_size(s: &str) -> Option<u64> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = match &s[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    Some(n * unit)
}

/// Makes a named restore point on `server` (the leader) and returns its LSN, which a restore to
/// it needs to choose its backup.
pub async fn create_restore_point(server: &PgTarget, name: &str) -> Result<Lsn> {
    pitr::restore_point_name(name).map_err(anyhow::Error::msg)?;
    let out = server.sql("postgres", &format!("SELECT pg_create_restore_point('{name}');")).await?;
    out.trim().parse().map_err(anyhow::Error::msg)
}

/// The timeline `server` writes on now.
pub async fn current_timeline(server: &PgTarget) -> Result<u32> {
    let out = server
        .sql("postgres", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8);")
        .await
        .context("reading the current timeline")?;
    u32::from_str_radix(out.trim(), 16).with_context(|| format!("a timeline, not {out:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> PgServer {
        PgServer { data: "/srv/m/data".into(), socket_dir: "/srv/m/socket".into(), port: 5433, user: "postgres".into() }
    }

    #[test]
    fn local_repositories_live_under_the_database_id() {
        let db = DatabaseId::new();
        let storage = StorageConfig::Local { root: "/var/backups".into() };
        let (repo, local) = repo_options(&storage, db).unwrap();
        let want = format!("/var/backups/pitr/{db}");
        assert_eq!(local.unwrap().display().to_string(), want);
        let text = render_config("db-x", &repo, &StanzaPaths::new("/srv/m/pgbackrest".into()), &server(), 7).unwrap();
        assert!(text.contains(&format!("repo1-path={want}\n")), "{text}");
        assert!(text.contains("repo1-retention-full-type=time\nrepo1-retention-full=7\n"), "{text}");
        assert!(
            text.contains("[db-x]\npg1-path=/srv/m/data\npg1-socket-path=/srv/m/socket\npg1-port=5433\n"),
            "{text}"
        );
    }

    #[test]
    fn s3_repositories_take_the_storage_endpoint_and_credentials() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pgbackrest-conf-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let creds = dir.join("c.json");
        std::fs::write(&creds, r#"{"access_key_id":"AK","secret_access_key":"SK"}"#).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let storage: StorageConfig = serde_json::from_value(serde_json::json!({
            "kind": "s3", "endpoint": "https://localhost:9443", "bucket": "b", "credentials_file": creds,
            "ca_file": "/etc/ca.pem",
        }))
        .unwrap();
        let db = DatabaseId::new();
        let (repo, local) = repo_options(&storage, db).unwrap();
        assert!(local.is_none());
        let get = |k: &str| repo.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("repo1-path"), Some(format!("/pitr/{db}").as_str()));
        assert_eq!((get("repo1-s3-endpoint"), get("repo1-storage-port")), (Some("localhost"), Some("9443")));
        assert_eq!((get("repo1-s3-uri-style"), get("repo1-s3-key-secret")), (Some("path"), Some("SK")));
        assert_eq!(get("repo1-storage-ca-file"), Some("/etc/ca.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets_become_pgbackrest_options() {
        let time = Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 5).unwrap();
        assert_eq!(target_args(&RestoreTarget::Time { time }), ["--type=time", "--target=2026-11-29 10:00:05+00"]);
        assert_eq!(target_args(&RestoreTarget::Lsn { lsn: Lsn(0x3000060) }), ["--type=lsn", "--target=0/3000060"]);
        let name = RestoreTarget::Name { name: "before".into(), lsn: Lsn(1) };
        assert_eq!(target_args(&name), ["--type=name", "--target=before"]);
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(max_postgres_major("2.45"), Some(15));
        assert_eq!(max_postgres_major("2.55.1"), Some(18));
        assert_eq!(max_postgres_major("two"), None);
        assert_eq!(shell_quote("/a b/c'd"), r"'/a b/c'\''d'");
    }

    #[test]
    fn a_swap_interrupted_anywhere_leaves_the_old_content_or_the_new() {
        let base = std::env::temp_dir().join(format!("pgbackrest-swap-{}", uuid::Uuid::new_v4().simple()));
        let data = base.join("data");
        let content = |p: &Path| std::fs::read_to_string(p.join("PG_VERSION")).unwrap_or_default();
        let make = |p: &Path, what: &str| {
            std::fs::create_dir_all(p).unwrap();
            std::fs::write(p.join("PG_VERSION"), what).unwrap();
        };
        // Crashed while restoring: the old content stays, the partial restore goes.
        make(&data, "old");
        make(&staged_dir(&data), "partial");
        assert_eq!(resolve_swap(&data).unwrap(), SwapOutcome::KeptOld);
        assert_eq!(content(&data), "old");
        assert!(!staged_dir(&data).exists());
        // Crashed between the two renames: the new content is completed.
        make(&staged_dir(&data), "new");
        std::fs::rename(&data, replaced_dir(&data)).unwrap();
        assert_eq!(resolve_swap(&data).unwrap(), SwapOutcome::CompletedNew);
        assert_eq!(content(&data), "new");
        assert_eq!(resolve_swap(&data).unwrap(), SwapOutcome::Nothing);
        // A whole swap, run twice.
        drop_replaced(&data).unwrap();
        make(&staged_dir(&data), "newer");
        swap_in(&data).unwrap();
        swap_in(&data).unwrap();
        assert_eq!((content(&data), content(&replaced_dir(&data))), ("newer".into(), "new".into()));
        drop_replaced(&data).unwrap();
        assert!(!replaced_dir(&data).exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn info_parses_into_backups_and_the_archive() {
        let json = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000020000000000000009","min":"000000010000000000000001"}],
          "backup":[{"archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},
            "backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,
            "info":{"delta":24000000,"repository":{"delta":3000000,"size":3000000},"size":24000000},
            "label":"20261129-104512F","lsn":{"start":"0/3000028","stop":"0/3000100"},"prior":null,"reference":null,
            "timestamp":{"start":1796035512,"stop":1796035515},"type":"full"}],
          "cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7,"version":"15"}],"name":"db-x",
          "repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],
          "status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;
        let info = parse_info(json, "db-x").unwrap();
        assert_eq!((info.status_code, info.archive_id.as_deref()), (0, Some("15-1")));
        assert_eq!(info.archive_max.as_deref(), Some("000000020000000000000009"));
        let b = &info.backups[0];
        assert_eq!((b.label.as_str(), b.kind.as_str(), b.timeline), ("20261129-104512F", "full", 1));
        assert_eq!((b.start_lsn, b.stop_lsn), (Lsn(0x3000028), Lsn(0x3000100)));
        assert_eq!((b.size, b.repository_size), (24_000_000, 3_000_000));
        assert_eq!(b.stopped_at.timestamp(), 1_796_035_515);
        assert!(parse_info(json, "db-y").is_err());
    }
}
