//! Patroni, which runs one PostgreSQL member: the member folder's layout, the configuration
//! rendered from a `MemberSpec` (JSON, which Patroni reads as YAML), starting Patroni as the
//! server's OS user, and waiting on its REST API (https, checked against the database CA).

use crate::files::{find_program, host_port, open_log, tail};
use crate::process::{self, Managed};
use anyhow::{bail, Context, Result};
use pgplane_core::agent::MemberSpec;
use pgplane_localpg::RunAs;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where a member keeps its files, all inside its own folder.
#[derive(Debug, Clone)]
pub struct MemberPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub tls_dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub etcd_ca: PathBuf,
    pub pgpass: PathBuf,
    /// Patroni's pid, start time and applied configuration (see `process`).
    pub pidfile: PathBuf,
    /// The last applied `MemberSpec` (secrets: 0600, readable by the agent only).
    pub spec: PathBuf,
    /// The pgBackRest stanza's configuration, log, lock and spool folders (PITR plans).
    pub pgbackrest: PathBuf,
}

/// The member's unix socket folder: inside its folder when the socket path fits PostgreSQL's
/// 107-byte limit, else a short folder under /tmp named by a stable hash of the member folder
/// (deep node folders, such as a non-root `pgplane up` under ~/.local/state, would not fit).
fn socket_dir(member_dir: &std::path::Path) -> PathBuf {
    let inside = member_dir.join("socket");
    // ".s.PGSQL.65535" plus its separator.
    if inside.as_os_str().len() + 16 <= 107 {
        return inside;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    member_dir.hash(&mut h);
    PathBuf::from(format!("/tmp/pgplane-socket-{:016x}", h.finish()))
}

impl MemberPaths {
    pub fn new(dir: PathBuf) -> Self {
        let tls = dir.join("tls");
        MemberPaths {
            config: dir.join("patroni.yml"),
            log: dir.join("patroni.log"),
            data: dir.join("data"),
            socket_dir: socket_dir(&dir),
            ca: tls.join("ca.pem"),
            cert: tls.join("server.crt"),
            key: tls.join("server.key"),
            etcd_ca: tls.join("etcd-ca.pem"),
            pgpass: dir.join("pgpass"),
            pidfile: process::pidfile(&dir, "patroni"),
            spec: dir.join("spec.json"),
            pgbackrest: dir.join("pgbackrest"),
            tls_dir: tls,
            dir,
        }
    }
}

/// The PostgreSQL superuser, the replication user and the REST API user Patroni is given.
/// (Named in core, where the names a tenant's database may not take are listed.)
pub const SUPERUSER: &str = pgplane_core::validate::SUPERUSER_ROLE;
pub const REPLICATION_USER: &str = pgplane_core::validate::REPLICATION_ROLE;
pub const RESTAPI_USER: &str = pgplane_core::validate::RESTAPI_USER;

/// `pg_hba.conf`, whole: peer for the OS superuser on the socket, SCRAM everywhere else,
/// replication and the superuser over TLS only, tenants over TLS only when `force_tls`.
pub fn pg_hba(force_tls: bool) -> Vec<String> {
    let client = if force_tls { "hostssl" } else { "host" };
    let mut lines = vec![
        format!("local all {SUPERUSER} peer"),
        format!("local replication {SUPERUSER} peer"),
        "local all all scram-sha-256".to_string(),
    ];
    for net in ["0.0.0.0/0", "::/0"] {
        lines.push(format!("hostssl replication {REPLICATION_USER} {net} scram-sha-256"));
        lines.push(format!("hostssl all {SUPERUSER} {net} scram-sha-256"));
        lines.push(format!("host all {SUPERUSER} {net} reject"));
    }
    for net in ["0.0.0.0/0", "::/0"] {
        lines.push(format!("{client} all all {net} scram-sha-256"));
    }
    lines
}

/// After Patroni was told to reload (SIGHUP): waits until it has written `spec`'s pg_hba
/// (it re-reads its configuration in its next loop), then has PostgreSQL load it at once, so
/// that the next connection meets it (a `force_tls` change holds when the job is done).
pub async fn apply_hba(spec: &MemberSpec, paths: &MemberPaths, bin_dir: &Path, runas: &RunAs) -> Result<()> {
    let want = pg_hba(spec.force_tls);
    let file = paths.data.join("pg_hba.conf");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        if lines == want {
            break;
        }
        if Instant::now() > deadline {
            bail!("patroni did not write the new pg_hba of member {} within 30 s", spec.member);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::tenant::superuser_sql(spec, paths, bin_dir, runas, "SELECT pg_reload_conf();").await?;
    Ok(())
}

/// Patroni's whole configuration for `spec`.
pub fn render(spec: &MemberSpec, paths: &MemberPaths, bin_dir: &Path) -> String {
    let secrets = &spec.secrets;
    let size = &spec.sizing;
    let mut etcd3 = json!({ "hosts": spec.etcd.endpoints, "protocol": spec.etcd.protocol });
    if spec.etcd.ca_pem.is_some() {
        etcd3["cacert"] = json!(paths.etcd_ca);
    }
    if let (Some(user), Some(password)) = (&spec.etcd.username, &spec.etcd.password) {
        etcd3["username"] = json!(user);
        etcd3["password"] = json!(password);
    }
    let rest = host_port(&spec.host, spec.patroni_port);
    let pg = host_port(&spec.host, spec.pg_port);
    let mut config = json!({
        "scope": spec.scope,
        "name": spec.member,
        "restapi": {
            "listen": rest,
            "connect_address": rest,
            "certfile": paths.cert,
            "keyfile": paths.key,
            "authentication": { "username": RESTAPI_USER, "password": secrets.restapi_password },
        },
        "ctl": { "cacert": paths.ca, "insecure": false },
        "etcd3": etcd3,
        "bootstrap": {
            "dcs": {
                // A lost leader's key expires 3.4–4.2 s after its host is lost, and writes
                // resume ~0.4 s later (write gap p50 4.56 s, `bench failover`; 5.3 s with ttl
                // 5 / retry_timeout 2); a leader cut from etcd or PostgreSQL for
                // `retry_timeout` steps down, unless failsafe mode finds every member still
                // answering it. The fraction of retry_timeout needs the launcher (below).
                "ttl": 4,
                "loop_wait": 1,
                "retry_timeout": 1.5,
                // A leader cut off from its synchronous standby waits for its WAL sender while
                // it stops: Patroni 4.x hung 20–45 s demoting until this bound was set.
                "primary_stop_timeout": 2,
                "failsafe_mode": true,
                // Non-strict: a leader whose synchronous standby is gone keeps accepting writes.
                "synchronous_mode": spec.synchronous_mode,
                "maximum_lag_on_failover": 1_048_576,
                "postgresql": {
                    "use_pg_rewind": true,
                    "use_slots": true,
                    "parameters": {
                        "max_connections": size.max_connections,
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_keep_size": "256MB",
                        "wal_retrieve_retry_interval": "200ms",
                        // Parameters tenants may change live in the DCS: Patroni's local
                        // parameters would override every later PATCH /config.
                        "work_mem": format!("{}kB", size.work_mem_kb),
                        "maintenance_work_mem": format!("{}MB", size.maintenance_work_mem_mb),
                    },
                },
            },
            "initdb": [{ "encoding": "UTF8" }, { "locale": "C.UTF-8" }, "data-checksums"],
        },
        "postgresql": {
            "listen": pg,
            "connect_address": pg,
            "data_dir": paths.data,
            "bin_dir": bin_dir,
            "pgpass": paths.pgpass,
            "use_unix_socket": true,
            "authentication": {
                "superuser": {
                    "username": SUPERUSER, "password": secrets.superuser_password,
                    "sslmode": "verify-ca", "sslrootcert": paths.ca,
                },
                "replication": {
                    "username": REPLICATION_USER, "password": secrets.replication_password,
                    "sslmode": "verify-ca", "sslrootcert": paths.ca,
                },
            },
            "parameters": {
                "unix_socket_directories": paths.socket_dir,
                "ssl": "on",
                "ssl_cert_file": paths.cert,
                "ssl_key_file": paths.key,
                "ssl_min_protocol_version": "TLSv1.2",
                "password_encryption": "scram-sha-256",
                "shared_buffers": format!("{}MB", size.shared_buffers_mb),
                "effective_cache_size": format!("{}MB", size.effective_cache_size_mb),
                "logging_collector": "on",
                // A follower's long dump (a backup) is not cancelled by recovery conflicts: the
                // leader keeps the rows it still sees, and replay waits for its snapshot.
                "hot_standby_feedback": "on",
                "max_standby_streaming_delay": "-1",
            },
            "pg_hba": pg_hba(spec.force_tls),
            "basebackup": { "checkpoint": "fast" },
        },
        "watchdog": { "mode": "off" },
    });
    if let Some(pitr) = &spec.pitr {
        add_archiving(&mut config, pitr, paths);
    }
    serde_json::to_string_pretty(&config).expect("JSON values serialize")
}

/// A member of a PITR plan: every member has the archiving parameters of the database's stanza
/// in its local configuration (`archive_mode` needs a restart, and no tenant may change them),
/// so whichever member leads archives (see `pgbackrest::archive_parameters`); replicas fetch
/// from the repository what streaming no longer has (`restore_command`).
fn add_archiving(config: &mut Value, pitr: &pgplane_core::pitr::PitrSpec, paths: &MemberPaths) {
    use crate::pgbackrest;
    let program = pgbackrest::program().unwrap_or_else(|_| PathBuf::from("pgbackrest"));
    let stanza_config = pgbackrest::StanzaPaths::new(paths.pgbackrest.clone()).config;
    let postgresql = &mut config["postgresql"];
    for (name, value) in pgbackrest::archive_parameters(&program, &stanza_config, &pitr.stanza) {
        postgresql["parameters"][name] = json!(value);
    }
    postgresql["recovery_conf"] =
        json!({ "restore_command": pgbackrest::restore_command(&program, &stanza_config, &pitr.stanza) });
}

/// Starts Patroni on `paths.config` as `runas`, logging to `paths.log`, detached from the agent
/// and recorded in `paths.pidfile` with the digest of `applied`. SIGTERM stops it (and its
/// PostgreSQL); a Patroni started again finds its PostgreSQL running and keeps it.
pub fn start(paths: &MemberPaths, runas: &RunAs, applied: &str) -> Result<Managed> {
    let log = open_log(&paths.log, Some(runas))?;
    let program = program()?;
    let mut cmd = match python_of(&program) {
        Some(python) => {
            let launcher = paths.dir.join("patroni");
            crate::files::write_atomic(&launcher, &launcher_script(&program), Some(runas))?;
            let mut cmd = Command::new(python);
            cmd.arg(&launcher);
            cmd
        }
        None => Command::new(&program),
    };
    cmd.arg(&paths.config)
        .current_dir(&paths.dir)
        .env("HOME", &paths.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    runas.apply(&mut cmd);
    Managed::start(cmd, libc::SIGTERM, &paths.pidfile, applied).context("starting patroni")
}

/// How often Patroni polls a stopping PostgreSQL, in seconds. Patroni 3.0 sleeps a fixed second
/// (`STOP_POLLING_INTERVAL`) between polls while it demotes a leader, though PostgreSQL is
/// usually down within 0.1 s: a planned switchover kept the database without a leader for one
/// more second. The launcher runs the same Patroni with that interval shortened.
const STOP_POLLING_SECS: f64 = 0.05;

/// The shortest ttl the launcher lets Patroni take (whole seconds: etcd leases are).
const MIN_TTL: u32 = 4;

/// The shortest retry_timeout the launcher lets Patroni take, in seconds. Patroni's etcd3 driver
/// refreshes its lease and then needs 1 s of the retry budget left to write the leader key
/// (`ensure_deadline(1)` whenever it takes or retakes the key), so at 1 s no member ever takes
/// it: the failover never came (120 s), and a leader whose lease changed kept leading without
/// a key, on failsafe mode alone. 1.5 s leaves the lease refresh 0.5 s.
const MIN_RETRY_TIMEOUT: f64 = 1.5;

/// Where `scripts/install-deps` puts the pinned Patroni (a virtual environment of its own).
pub const VENV_PATRONI: &str = "/opt/pgplane/patroni/bin/patroni";

/// The Patroni the agent runs: `PGPLANE_PATRONI` if set, else the pinned one of
/// `scripts/install-deps`, else the first `patroni` on PATH.
pub fn program() -> Result<PathBuf> {
    if std::env::var_os("PGPLANE_PATRONI").is_none() && Path::new(VENV_PATRONI).is_file() {
        return Ok(PathBuf::from(VENV_PATRONI));
    }
    find_program("patroni", "PGPLANE_PATRONI").map_err(|_| {
        anyhow::anyhow!(
            "patroni was not found in {VENV_PATRONI} nor on PATH (set PGPLANE_PATRONI): run scripts/install-deps"
        )
    })
}

/// The interpreter of a Python entry-point script (its `#!` line), if `program` is one.
pub(crate) fn python_of(program: &Path) -> Option<PathBuf> {
    let text = std::fs::read(program).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let interpreter = line.split_whitespace().next()?;
    interpreter.rsplit('/').next()?.starts_with("python").then(|| PathBuf::from(interpreter))
}

/// The launcher's Python (`PROGRAM`, `STOP_SECS`, `MIN_TTL` and `MIN_RETRY` are filled in).
/// Three changes to Patroni, each made only where the attribute it replaces exists (a Patroni
/// without it runs unchanged):
/// - the stop polling interval (above);
/// - Patroni 4.x's timing floors: `Config._validate_and_adjust_timeouts` raises ttl to ≥ 20 and
///   retry_timeout to ≥ 3 at start and on every `/config` change, which made a lost host's
///   failover 20.5 s instead of 5.5 s. The replacement keeps Patroni's rule (loop_wait +
///   2 × retry_timeout ≤ ttl, loop_wait ≥ 1) with the floors measured here instead (`MIN_TTL`,
///   `MIN_RETRY_TIMEOUT`);
/// - whole seconds: `Config._build_effective_configuration` casts the DCS's timings to `int`,
///   so a retry_timeout of 1.5 ran as 1 (see `MIN_RETRY_TIMEOUT`); the wrapper puts the
///   fraction back. ttl and loop_wait stay whole (etcd leases and Patroni's loop are).
const LAUNCHER: &str = r#"# Written by pgplane: runs PROGRAM with a shorter stop polling interval and pgplane's timings.
import runpy, sys
try:
    import patroni.postgresql as _pg
    if isinstance(getattr(_pg, 'STOP_POLLING_INTERVAL', None), (int, float)):
        _pg.STOP_POLLING_INTERVAL = STOP_SECS
except ImportError:
    pass
try:
    import patroni.config as _cf
    if callable(getattr(getattr(_cf, 'Config', None), '_validate_and_adjust_timeouts', None)):
        def _adjust_timeouts(self, config):
            defaults = getattr(self, '_Config__DEFAULT_CONFIG', None) or {}
            def value(param, floor, fallback, kind=int):
                v = kind(config.get(param, defaults.get(param, fallback)))
                if v < floor:
                    v = config[param] = floor
                return v
            loop_wait = value('loop_wait', 1, 10)
            retry_timeout = value('retry_timeout', MIN_RETRY, 10, float)
            ttl = value('ttl', MIN_TTL, 30)
            if 1 + 2 * retry_timeout > ttl:
                config['loop_wait'] = 1
                config['retry_timeout'] = (ttl - 1) / 2
            elif loop_wait + 2 * retry_timeout > ttl:
                config['loop_wait'] = int(ttl - 2 * retry_timeout)
        _cf.Config._validate_and_adjust_timeouts = _adjust_timeouts
    build = getattr(getattr(_cf, 'Config', None), '_build_effective_configuration', None)
    if callable(build):
        def _build_effective_configuration(self, dynamic_configuration, local_configuration):
            config = build(self, dynamic_configuration, local_configuration)
            retry_timeout = (dynamic_configuration or {}).get('retry_timeout')
            if isinstance(retry_timeout, float) and 'retry_timeout' in config:
                config['retry_timeout'] = retry_timeout
                if isinstance(config.get('postgresql'), dict) and 'retry_timeout' in config['postgresql']:
                    config['postgresql']['retry_timeout'] = retry_timeout
            return config
        _cf.Config._build_effective_configuration = _build_effective_configuration
except ImportError:
    pass
sys.argv[0] = PROGRAM
runpy.run_path(PROGRAM, run_name='__main__')
"#;

/// A Python script that runs the Patroni entry point `program` through `LAUNCHER`. Named
/// `patroni`, in the member's folder, so the process still reads as Patroni (see `adopt`).
fn launcher_script(program: &Path) -> String {
    let program = serde_json::to_string(&program.to_string_lossy()).expect("a string serializes");
    LAUNCHER
        .replace("PROGRAM", &program)
        .replace("STOP_SECS", &STOP_POLLING_SECS.to_string())
        .replace("MIN_TTL", &MIN_TTL.to_string())
        .replace("MIN_RETRY", &MIN_RETRY_TIMEOUT.to_string())
}

/// The Patroni already running this member's configuration, if any (not `patronictl`).
pub fn adopt(paths: &MemberPaths) -> Option<Managed> {
    let is_patroni = |args: &[String]| args.iter().take(2).any(|a| a.rsplit('/').next() == Some("patroni"));
    Managed::adopt(&paths.pidfile, &paths.config, libc::SIGTERM, is_patroni)
}

/// What Patroni's `GET /patroni` says about its member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniState {
    pub state: String,
    pub role: String,
}

impl PatroniState {
    /// Patroni 3.0 calls the leader `master`; later versions `primary`.
    pub fn is_primary(&self) -> bool {
        matches!(self.role.as_str(), "master" | "primary")
    }
}

/// An https client for one member's REST API that trusts only the database's CA.
pub fn rest_client(ca_pem: &str) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("the database CA")?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(3))
        .build()?)
}

/// `GET https://host:patroni_port/patroni`.
pub async fn state(client: &reqwest::Client, host: &str, port: u16) -> Result<PatroniState> {
    let url = format!("https://{}/patroni", host_port(host, port));
    let body: Value = client.get(&url).send().await?.json().await?;
    let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(PatroniState { state: field("state"), role: field("role") })
}

/// True when Patroni holds the leader key: `OPTIONS /primary` answers 200, as the gateways see it.
pub async fn holds_leader_key(client: &reqwest::Client, host: &str, port: u16) -> Result<bool> {
    let url = format!("https://{}/primary", host_port(host, port));
    Ok(client.request(reqwest::Method::OPTIONS, &url).send().await?.status() == reqwest::StatusCode::OK)
}

/// Waits until Patroni reports its PostgreSQL `running` and, when that PostgreSQL is a primary,
/// until Patroni also holds the leader key (during bootstrap PostgreSQL is a primary before
/// Patroni takes the key, and gateways checking `/primary` would mark it down meanwhile).
/// Fails early if Patroni exits.
pub async fn wait_running(
    spec: &MemberSpec,
    paths: &MemberPaths,
    patroni: &Managed,
    timeout: Duration,
) -> Result<PatroniState> {
    let client = rest_client(&spec.tls.ca_pem)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = patroni.exited() {
            bail!("patroni exited ({status}); {}", tail(&paths.log, 20));
        }
        let last = match state(&client, &spec.host, spec.patroni_port).await {
            Ok(s) if s.state == "running" && s.is_primary() => {
                match holds_leader_key(&client, &spec.host, spec.patroni_port).await {
                    Ok(true) => return Ok(s),
                    Ok(false) => "a primary, not yet holding the leader key".to_string(),
                    Err(e) => format!("{e:#}"),
                }
            }
            // Patroni 4.x reports a replica `streaming`.
            Ok(s) if matches!(s.state.as_str(), "running" | "streaming") && !s.role.is_empty() => return Ok(s),
            Ok(s) => format!("state {:?}, role {:?}", s.state, s.role),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("patroni member {} not running within {timeout:?} ({last}); {}", spec.member, tail(&paths.log, 20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the cluster, as Patroni publishes it (`GET /cluster`, from the DCS), lists the
/// member as a running replica.
pub async fn wait_listed(spec: &MemberSpec, timeout: Duration) -> Result<()> {
    let client = rest_client(&spec.tls.ca_pem)?;
    let base = format!("https://{}", host_port(&spec.host, spec.patroni_port));
    let deadline = Instant::now() + timeout;
    loop {
        let last = match crate::control::cluster(&client, &base).await {
            Ok((_, replicas)) if replicas.contains(&spec.member) => return Ok(()),
            Ok((leader, replicas)) => format!("leader {leader:?}, running replicas {replicas:?}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("member {} is not a running replica of the cluster within {timeout:?} ({last})", spec.member);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::agent::{DatabaseSecrets, EtcdAccess, PgSizing, TlsBundle};
    use pgplane_core::ids::DatabaseId;

    fn spec(force_tls: bool, etcd: EtcdAccess) -> MemberSpec {
        let s = |v: &str| v.to_string();
        MemberSpec {
            database_id: DatabaseId::new(),
            generation: 1,
            scope: s("db"),
            member: s("m1"),
            version: s("15"),
            host: s("10.0.0.5"),
            pg_port: 5432,
            patroni_port: 8008,
            etcd,
            tls: TlsBundle { ca_pem: s("CA"), cert_pem: s("CERT"), key_pem: s("KEY") },
            secrets: DatabaseSecrets {
                superuser_password: s("su"),
                replication_password: s("rep"),
                restapi_password: s("rest"),
                app_user: s("app"),
                app_password: s("pw"),
                app_database: s("appdb"),
            },
            sizing: PgSizing {
                max_connections: 77,
                shared_buffers_mb: 256,
                effective_cache_size_mb: 768,
                work_mem_kb: 4096,
                maintenance_work_mem_mb: 64,
            },
            force_tls,
            synchronous_mode: true,
            pitr: None,
        }
    }

    #[test]
    fn pitr_members_archive_into_their_stanza() {
        let paths = MemberPaths::new(PathBuf::from("/srv/db/member-m1"));
        let plain = render(&spec(false, https_etcd()), &paths, Path::new("/usr/lib/postgresql/15/bin"));
        let c: Value = serde_json::from_str(&plain).unwrap();
        assert!(c["postgresql"]["parameters"].get("archive_mode").is_none());
        let mut with = spec(false, https_etcd());
        with.pitr = Some(pgplane_core::pitr::PitrSpec { stanza: "db-x".into(), window_days: 7 });
        let c: Value = serde_json::from_str(&render(&with, &paths, Path::new("/usr/lib/postgresql/15/bin"))).unwrap();
        let p = &c["postgresql"]["parameters"];
        assert_eq!((&p["archive_mode"], &p["archive_timeout"]), (&json!("on"), &json!("60s")));
        let push = p["archive_command"].as_str().unwrap();
        assert!(
            push.ends_with("--config='/srv/db/member-m1/pgbackrest/pgbackrest.conf' --stanza=db-x archive-push %p"),
            "{push}"
        );
        let get = c["postgresql"]["recovery_conf"]["restore_command"].as_str().unwrap();
        assert!(get.ends_with("--stanza=db-x archive-get %f \"%p\""), "{get}");
    }

    fn https_etcd() -> EtcdAccess {
        EtcdAccess {
            endpoints: vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
            protocol: "https".into(),
            ca_pem: Some("ETCD CA".into()),
            username: Some("db-user".into()),
            password: Some("db-pass".into()),
        }
    }

    #[test]
    fn config_carries_tls_auth_timing_and_sizing() {
        let paths = MemberPaths::new(PathBuf::from("/srv/db/member-m1"));
        let text = render(&spec(true, https_etcd()), &paths, Path::new("/usr/lib/postgresql/15/bin"));
        let c: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(c["restapi"]["listen"], "10.0.0.5:8008");
        assert_eq!(c["restapi"]["authentication"]["username"], "patroni");
        assert_eq!(c["restapi"]["certfile"], "/srv/db/member-m1/tls/server.crt");
        assert_eq!(c["etcd3"]["protocol"], "https");
        assert_eq!(c["etcd3"]["cacert"], "/srv/db/member-m1/tls/etcd-ca.pem");
        assert_eq!(c["etcd3"]["username"], "db-user");
        assert_eq!(c["etcd3"]["hosts"][1], "10.0.0.2:2379");
        let dcs = &c["bootstrap"]["dcs"];
        assert_eq!(
            (dcs["ttl"].as_i64(), dcs["loop_wait"].as_i64(), dcs["retry_timeout"].as_f64()),
            (Some(4), Some(1), Some(1.5))
        );
        assert_eq!((&dcs["primary_stop_timeout"], &dcs["synchronous_mode"]), (&json!(2), &json!(true)));
        assert_eq!(dcs["postgresql"]["use_pg_rewind"], true);
        assert_eq!(dcs["postgresql"]["parameters"]["wal_retrieve_retry_interval"], "200ms");
        assert_eq!(dcs["postgresql"]["parameters"]["max_connections"], 77);
        let pg = &c["postgresql"];
        assert_eq!(pg["listen"], "10.0.0.5:5432");
        assert_eq!(pg["parameters"]["ssl"], "on");
        assert_eq!(pg["parameters"]["shared_buffers"], "256MB");
        assert_eq!(pg["parameters"]["unix_socket_directories"], "/srv/db/member-m1/socket");
        assert_eq!(pg["authentication"]["replication"]["sslmode"], "verify-ca");
    }

    #[test]
    fn pg_hba_never_trusts_and_forces_tls_when_asked() {
        for force in [false, true] {
            let lines = pg_hba(force);
            assert!(lines.iter().all(|l| !l.contains("trust")), "{lines:?}");
            assert!(lines.iter().filter(|l| l.contains("replication")).all(|l| !l.starts_with("host ")));
            let plain: Vec<_> = lines.iter().filter(|l| l.starts_with("host ") && !l.ends_with("reject")).collect();
            assert_eq!(plain.is_empty(), force, "{lines:?}");
        }
        let c: Value = serde_json::from_str(&render(
            &spec(
                false,
                EtcdAccess { protocol: "http".into(), ca_pem: None, username: None, password: None, ..https_etcd() },
            ),
            &MemberPaths::new(PathBuf::from("/x")),
            Path::new("/bin"),
        ))
        .unwrap();
        assert!(c["etcd3"].get("cacert").is_none() && c["etcd3"].get("username").is_none());
    }

    /// The launcher with the pinned Patroni (skipped where it is not installed): Patroni's own
    /// `Config` takes pgplane's timings as they are, a fraction of a second of retry_timeout
    /// included (Patroni alone truncates it to whole seconds, and raises ttl to 20).
    #[test]
    fn the_launcher_keeps_pgplanes_timings() {
        let python = Path::new(VENV_PATRONI).with_file_name("python");
        if !python.exists() {
            eprintln!("skipped: no {}", python.display());
            return;
        }
        let dir = std::env::temp_dir().join(format!("pgplane-launcher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("patroni.yml");
        let local = json!({
            "scope": "s", "name": "m0",
            "restapi": { "listen": "127.0.0.1:1", "connect_address": "127.0.0.1:1" },
            "postgresql": { "data_dir": dir.join("data"), "listen": "127.0.0.1:2", "connect_address": "127.0.0.1:2" },
        });
        std::fs::write(&config, local.to_string()).unwrap();
        let probe = dir.join("probe.py");
        let script = format!(
            "import json\nfrom patroni.config import Config\nc = Config({config:?}, validator=None)\nout = []\n\
             for dcs in ({{'ttl': 4, 'loop_wait': 1, 'retry_timeout': 1.5}}, {{'ttl': 5, 'loop_wait': 1, 'retry_timeout': 2}},\n\
             \x20           {{'ttl': 3, 'loop_wait': 1, 'retry_timeout': 1}}):\n\
             \x20   c.set_dynamic_configuration(dcs)\n\
             \x20   out.append([c['ttl'], c['loop_wait'], c['retry_timeout']])\n\
             print(json.dumps(out))\n",
            config = config.display().to_string()
        );
        std::fs::write(&probe, script).unwrap();
        let launcher = dir.join("patroni");
        std::fs::write(&launcher, launcher_script(&probe)).unwrap();
        let out = std::process::Command::new(&python).arg(&launcher).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let seen: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
        assert_eq!(seen, json!([[4, 1, 1.5], [5, 1, 2], [4, 1, 1.5]]), "ttl, loop_wait, retry_timeout");
    }
}
