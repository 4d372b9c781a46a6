//! HAProxy gateways: the configuration rendered from a `GatewaySpec` (TCP passthrough to the
//! member whose Patroni answers `OPTIONS /primary` with 200, checked over TLS against the
//! database CA; a private listener, and a public one admitting an IP allowlist while the
//! database is exposed), and running HAProxy in the foreground as the server's OS user.

use crate::files::{find_program, host_port, open_log, tail};
use crate::process::{self, Managed};
use anyhow::{bail, Context, Result};
use pgplane_core::agent::GatewaySpec;
use pgplane_localpg::RunAs;
use std::fmt::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where a gateway keeps its files.
#[derive(Debug, Clone)]
pub struct GatewayPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub ca: PathBuf,
    /// The networks the public listener admits, one a line: kept out of `haproxy.cfg` so that
    /// a new allowlist goes to the running HAProxy through its admin socket (`set_allowlist`)
    /// and a restarted one loads it from here.
    pub allowlist: PathBuf,
    pub log: PathBuf,
    /// HAProxy's pid, start time and applied configuration (see `process`).
    pub pidfile: PathBuf,
    /// The last applied `GatewaySpec`.
    pub spec: PathBuf,
}

impl GatewayPaths {
    pub fn new(dir: PathBuf) -> Self {
        GatewayPaths {
            config: dir.join("haproxy.cfg"),
            ca: dir.join("ca.pem"),
            allowlist: dir.join("allowlist.acl"),
            log: dir.join("haproxy.log"),
            pidfile: process::pidfile(&dir, "haproxy"),
            spec: dir.join("spec.json"),
            dir,
        }
    }
}

/// HAProxy's whole configuration for `spec`. Client and server timeouts are long because
/// database sessions idle for long; TCP keepalives notice dead peers meanwhile. Certificates
/// are verified against the CA without `verifyhost` (it needs a DNS SAN; members have IP SANs).
///
/// Leadership changes: a server is the primary while its Patroni holds the leader key AND its
/// PostgreSQL is writable (two `expect`s on one check). A leader that stops is noticed within
/// `inter` + `fastinter` (0.6 s), a new one within `downinter` (0.1 s). A new client connection
/// that finds no primary is not closed: it goes to the `no-primary` backup (or meets a stopped
/// server), is refused, and HAProxy tries again every 100 ms (its turn-around between retries
/// is `timeout connect`, capped at 1 s) on whichever server is usable then (`redispatch 1`),
/// 30 times: during a switchover or failover clients wait in the gateway for the new leader,
/// about 3 s at most, instead of getting errors. A switchover drains the old leader first
/// (`set_drain`), so no new connection reaches a PostgreSQL that is shutting down.
///
/// Clients come in through two frontends to the one `backend postgres`: `private` on the
/// host's private address, and `public` on its public address while the database is exposed,
/// which closes a connection from outside the allowlist as it is accepted, before any byte
/// reaches PostgreSQL. When both addresses are one, only `public` listens while exposed.
pub fn render(spec: &GatewaySpec, paths: &GatewayPaths) -> String {
    let mut cfg = String::new();
    let _ = write!(
        cfg,
        "# pgplane gateway {name} of database {db}, generation {generation}\n\
         global\n\
         \x20   maxconn 4000\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \x20   hard-stop-after 30s\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   option clitcpka\n\
         \x20   option srvtcpka\n\
         \x20   timeout connect 100ms\n\
         \x20   retries 30\n\
         \x20   option redispatch 1\n\
         \x20   timeout client 24h\n\
         \x20   timeout server 24h\n\
         \x20   timeout client-fin 30s\n\
         \x20   timeout server-fin 30s\n\
         \x20   timeout check 2s\n\
         \n\
         {frontends}\
         backend postgres\n\
         \x20   option httpchk\n\
         \x20   http-check send meth GET uri /primary\n\
         \x20   http-check expect status 200\n\
         \x20   http-check expect rstring {writable}\n\
         \x20   default-server inter 500ms fastinter 100ms downinter 100ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
        name = spec.name,
        db = spec.database_id,
        generation = spec.generation,
        frontends = frontends(spec, paths),
        socket = paths.dir.join(STATS_SOCKET).display(),
        writable = WRITABLE,
    );
    for b in &spec.backends {
        let _ = writeln!(
            cfg,
            "    server {name} {addr} check port {check} check-ssl verify required ca-file \"{ca}\" disabled",
            name = b.member,
            addr = host_port(&b.host, b.pg_port),
            check = b.patroni_port,
            ca = paths.ca.display(),
        );
    }
    let _ = writeln!(cfg, "    server {HOLD} {HOLD_ADDR} backup");
    cfg
}

/// The `private` and `public` frontends of `render`.
fn frontends(spec: &GatewaySpec, paths: &GatewayPaths) -> String {
    let mut out = String::new();
    let mut private = Vec::new();
    if spec.public_host.as_deref() != Some(spec.listen_host.as_str()) {
        private.push(host_port(&spec.listen_host, spec.listen_port));
    }
    // The database's VIP, on every gateway host at once: the kernel lets HAProxy bind it
    // while another host holds it (`net.ipv4.ip_nonlocal_bind`, set by the agent).
    if let Some(vip) = &spec.vip {
        private.push(host_port(&vip.address, vip.port));
    }
    if !private.is_empty() {
        out.push_str("frontend private\n");
        for bind in private {
            let _ = writeln!(out, "    bind {bind}");
        }
        out.push_str("    default_backend postgres\n\n");
    }
    if let Some(public) = &spec.public_host {
        let _ = write!(
            out,
            "frontend public\n    bind {}\n    tcp-request connection reject unless {{ src -f {} }}\n    \
             default_backend postgres\n\n",
            host_port(public, spec.listen_port),
            paths.allowlist.display()
        );
    }
    out
}

/// The allowlist file's patterns: the spec's networks, or every address when it has none.
pub fn allowlist(spec: &GatewaySpec) -> Vec<String> {
    if spec.allowed_cidrs.is_empty() {
        vec!["0.0.0.0/0".into(), "::/0".into()]
    } else {
        spec.allowed_cidrs.clone()
    }
}

/// The allowlist file's text.
pub fn render_allowlist(spec: &GatewaySpec) -> String {
    allowlist(spec).iter().map(|p| format!("{p}\n")).collect()
}

/// Replaces the public listener's allowlist in the running HAProxy at once, through its
/// admin socket (a new version of the ACL filled, then committed): connections it keeps are
/// untouched, new ones meet the new list. The same patterns are in `paths.allowlist`.
pub async fn set_allowlist(paths: &GatewayPaths, spec: &GatewaySpec) -> Result<()> {
    let file = paths.allowlist.display().to_string();
    let out = admin(paths, &format!("prepare acl {file}")).await?;
    let Some(version) = out.trim().strip_prefix("New version created:").map(str::trim) else {
        bail!("HAProxy refused to prepare a new allowlist: {}", out.trim());
    };
    let mut commands: Vec<String> = allowlist(spec).iter().map(|p| format!("add acl @{version} {file} {p}")).collect();
    commands.push(format!("commit acl @{version} {file}"));
    let out = admin(paths, &commands.join(";")).await?;
    if !out.trim().is_empty() {
        bail!("HAProxy refused the allowlist: {}", out.trim());
    }
    Ok(())
}

/// The patterns the running HAProxy's public listener admits, as HAProxy writes them.
pub async fn running_allowlist(paths: &GatewayPaths) -> Result<Vec<String>> {
    let out = admin(paths, &format!("show acl {}", paths.allowlist.display())).await?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_string).collect())
}

/// The backup server HAProxy falls back to when no member is the primary (all down or
/// drained): an address nothing listens on, so each attempt is refused at once and HAProxy
/// retries it on the next usable server (see `render`). It parks new client connections in the
/// gateway until a primary passes its check, instead of closing them.
pub const HOLD: &str = "no-primary";
/// tcpmux's port: refused on any host that does not run the 1980s tcpmux service.
const HOLD_ADDR: &str = "127.0.0.1:1";

/// What Patroni's `GET /primary` body says of a PostgreSQL that is out of recovery (Patroni asks
/// PostgreSQL on every request). Patroni answers 200 as soon as it holds the leader key, while
/// a promoted PostgreSQL may still be finishing recovery and refuse writes: both must hold.
/// Patroni 3.0 says `master`, later versions `primary`.
const WRITABLE: &str = r#""\"role\": \"(master|primary)\"""#;

fn haproxy() -> Result<PathBuf> {
    find_program("haproxy", "PGPLANE_HAPROXY")
}

/// `haproxy -c`: refuses a configuration HAProxy would not load, with its own message.
pub fn check_config(config: &Path, runas: &RunAs) -> Result<()> {
    let mut cmd = Command::new(haproxy()?);
    cmd.args(["-c", "-q", "-f"]).arg(config).stdin(Stdio::null());
    runas.apply(&mut cmd);
    let out = cmd.output().context("running haproxy -c")?;
    if !out.status.success() {
        bail!(
            "haproxy refuses {} ({}): {}{}",
            config.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts HAProxy in the foreground (`-db`) as `runas`, detached from the agent and recorded
/// in `paths.pidfile` with the digest of `applied`; SIGTERM stops it at once. `replacing`: the
/// HAProxy of this gateway that runs an older configuration; the new one binds the port beside
/// it, then tells it (`-sf`) to stop listening and finish its sessions (cut after
/// `hard-stop-after`), so a configuration change refuses no connection and ends no session early.
pub fn start(paths: &GatewayPaths, runas: &RunAs, applied: &str, replacing: Option<u32>) -> Result<Managed> {
    check_config(&paths.config, runas)?;
    let log = open_log(&paths.log, Some(runas))?;
    let mut cmd = Command::new(haproxy()?);
    cmd.args(["-db", "-f"]).arg(&paths.config);
    if let Some(old) = replacing {
        cmd.arg("-sf").arg(old.to_string());
    }
    cmd.current_dir(&paths.dir).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    runas.apply(&mut cmd);
    Managed::start(cmd, libc::SIGTERM, &paths.pidfile, applied).context("starting haproxy")
}

/// The HAProxy already running this gateway's configuration, if any (in the foreground, as
/// started here; not a passing `haproxy -c`).
pub fn adopt(paths: &GatewayPaths) -> Option<Managed> {
    Managed::adopt(&paths.pidfile, &paths.config, libc::SIGTERM, |args| args.iter().any(|a| a == "-db"))
}

/// HAProxy's admin socket, in the gateway's folder.
pub const STATS_SOCKET: &str = "admin.sock";

/// Sends `commands` (`;`-separated) to HAProxy's admin socket; returns what it answered.
async fn admin(paths: &GatewayPaths, commands: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = paths.dir.join(STATS_SOCKET);
    let mut sock = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    sock.write_all(format!("{commands}\n").as_bytes()).await?;
    let mut out = String::new();
    sock.read_to_string(&mut out).await?;
    Ok(out)
}

/// Drains `member` (new connections go elsewhere or wait for a primary; open sessions go on),
/// or makes it take new connections again.
pub async fn set_drain(paths: &GatewayPaths, member: &str, drain: bool) -> Result<()> {
    let state = if drain { "drain" } else { "ready" };
    let out = admin(paths, &format!("set server postgres/{member} state {state}")).await?;
    if !out.trim().is_empty() {
        bail!("HAProxy refused to set {member} to {state}: {}", out.trim());
    }
    Ok(())
}

/// Servers of the `postgres` proxy and their check status (`UP`, `DOWN`, …), from the admin socket.
pub async fn server_states(paths: &GatewayPaths) -> Result<Vec<(String, String)>> {
    let out = admin(paths, "show stat").await?;
    Ok(out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 17 && f[0] == "postgres" && !matches!(f[1], "FRONTEND" | "BACKEND" | HOLD))
                .then(|| (f[1].to_string(), f[17].to_string()))
        })
        .collect())
}

/// Puts the servers of a started HAProxy in service. They start in maintenance (`disabled` in
/// the configuration): HAProxy 2.6 would start them UP before their first check (the
/// `init-state` setting came later) and route some clients to a replica. The servers in
/// `primary` (what the HAProxy it replaces saw passing its check) are UP at once; the others
/// are marked down until their `/primary` check passes. Meanwhile clients wait on the
/// `no-primary` backup.
pub async fn put_in_service(
    spec: &GatewaySpec,
    paths: &GatewayPaths,
    proc: &Managed,
    primary: &[String],
) -> Result<()> {
    // Out of maintenance a server is UP at once, even marked down before; drained, it takes no
    // new connection while it is marked down, then it is made ready (and stays down until its
    // check passes).
    let commands: Vec<String> = spec
        .backends
        .iter()
        .map(|b| {
            let m = &b.member;
            if primary.contains(m) {
                format!("set server postgres/{m} state ready;set server postgres/{m} health up")
            } else {
                format!("set server postgres/{m} state drain;set server postgres/{m} health down;set server postgres/{m} state ready")
            }
        })
        .collect();
    let commands = commands.join(";");
    // HAProxy may listen on its port a moment before it creates the admin socket; while it
    // replaces another HAProxy, the socket's path still leads to that one for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = format!("Pid: {}", proc.pid());
    loop {
        match admin(paths, "show info").await {
            Ok(info) if info.lines().any(|l| l.trim() == expected) => break,
            Ok(_) | Err(_) if Instant::now() < deadline && proc.exited().is_none() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(_) => bail!("the admin socket of {} leads to another HAProxy", paths.dir.display()),
            Err(e) => return Err(e),
        }
    }
    let out = admin(paths, &commands).await?;
    if !out.trim().is_empty() {
        bail!("HAProxy refused to put the servers in service: {}", out.trim());
    }
    Ok(())
}

/// The backends that pass the gateway's check right now (`GET /primary` answers 200 and says
/// PostgreSQL is writable), asked directly: a fresh HAProxy runs its first checks only after
/// `inter`, and clients would wait for it meanwhile.
pub async fn probe_primary(spec: &GatewaySpec) -> Vec<String> {
    let Ok(client) = crate::patroni::rest_client(&spec.ca_pem) else { return Vec::new() };
    let mut found = Vec::new();
    for b in &spec.backends {
        let url = format!("https://{}/primary", host_port(&b.host, b.patroni_port));
        let Ok(res) = client.get(&url).timeout(Duration::from_secs(1)).send().await else { continue };
        if res.status() != reqwest::StatusCode::OK {
            continue;
        }
        if res.text().await.is_ok_and(|body| WRITABLE_ROLES.iter().any(|w| body.contains(w))) {
            found.push(b.member.clone());
        }
    }
    found
}

/// What `WRITABLE` matches, as plain strings.
const WRITABLE_ROLES: [&str; 2] = [r#""role": "master""#, r#""role": "primary""#];

/// Waits until the gateway listens and routes: one of its servers passes the `/primary`
/// check. Until then a client connection would be closed at once.
pub async fn wait_routing(spec: &GatewaySpec, paths: &GatewayPaths, proc: &Managed, timeout: Duration) -> Result<()> {
    wait_listening(spec, paths, proc, timeout).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let states = server_states(paths).await;
        if let Ok(s) = &states {
            if s.iter().any(|(_, status)| status.starts_with("UP")) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no server of the gateway passed the primary check within {timeout:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the gateway accepts TCP connections, failing early if HAProxy exits.
pub async fn wait_listening(spec: &GatewaySpec, paths: &GatewayPaths, proc: &Managed, timeout: Duration) -> Result<()> {
    let addr = host_port(&spec.listen_host, spec.listen_port)
        .to_socket_addrs()?
        .next()
        .context("the gateway's listen address")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc.exited() {
            bail!("haproxy exited ({status}); {}", tail(&paths.log, 20));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("haproxy did not listen on {addr} within {timeout:?}; {}", tail(&paths.log, 20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::agent::GatewayBackend;
    use pgplane_core::ids::DatabaseId;

    fn spec(public_host: Option<&str>, allowed_cidrs: &[&str]) -> GatewaySpec {
        let backend = |m: &str, port| GatewayBackend {
            member: m.into(),
            host: "10.0.0.5".into(),
            pg_port: port,
            patroni_port: port + 1,
        };
        GatewaySpec {
            database_id: DatabaseId::new(),
            generation: 3,
            name: "g1".into(),
            listen_host: "127.0.0.1".into(),
            listen_port: 6432,
            public_host: public_host.map(str::to_string),
            allowed_cidrs: allowed_cidrs.iter().map(|c| c.to_string()).collect(),
            backends: vec![backend("m1", 5432), backend("m2", 5442)],
            ca_pem: "CA".into(),
            vip: None,
        }
    }

    /// The configuration's sections, each as its trimmed lines.
    fn sections(cfg: &str) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for line in cfg.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            if !line.starts_with(' ') {
                out.push(Vec::new());
            }
            out.last_mut().expect("a section").push(line.trim().to_string());
        }
        out
    }

    fn section<'a>(cfg: &'a [Vec<String>], name: &str) -> Option<&'a Vec<String>> {
        cfg.iter().find(|s| s[0] == name)
    }

    #[test]
    fn private_only_until_exposed() {
        let paths = GatewayPaths::new(PathBuf::from("/srv/g"));
        let cfg = sections(&render(&spec(None, &[]), &paths));
        assert_eq!(
            section(&cfg, "frontend private").expect("a private frontend"),
            &["frontend private", "bind 127.0.0.1:6432", "default_backend postgres"]
        );
        assert!(section(&cfg, "frontend public").is_none(), "{cfg:?}");
    }

    #[test]
    fn exposed_on_its_own_address_behind_the_allowlist_file() {
        let paths = GatewayPaths::new(PathBuf::from("/srv/g"));
        let exposed = spec(Some("203.0.113.7"), &["198.51.100.0/24"]);
        let text = render(&exposed, &paths);
        let cfg = sections(&text);
        assert_eq!(section(&cfg, "frontend private").expect("a private frontend")[1], "bind 127.0.0.1:6432");
        assert_eq!(
            section(&cfg, "frontend public").expect("a public frontend"),
            &[
                "frontend public",
                "bind 203.0.113.7:6432",
                "tcp-request connection reject unless { src -f /srv/g/allowlist.acl }",
                "default_backend postgres",
            ]
        );
        // The allowlist lives in its own file: changing it leaves the configuration (and its
        // digest) as it is, so that a running HAProxy takes it through the admin socket.
        let other = GatewaySpec { allowed_cidrs: vec!["192.0.2.1/32".into()], ..exposed.clone() };
        assert_eq!(render(&other, &paths), text);
        assert!(!text.contains("198.51.100.0/24"), "{text}");
        assert_eq!(render_allowlist(&exposed), "198.51.100.0/24\n");
        assert_eq!(render_allowlist(&spec(Some("203.0.113.7"), &[])), "0.0.0.0/0\n::/0\n", "empty admits all");
    }

    #[test]
    fn one_public_listener_when_both_addresses_are_one() {
        let paths = GatewayPaths::new(PathBuf::from("/srv/g"));
        let cfg = sections(&render(&spec(Some("127.0.0.1"), &[]), &paths));
        assert!(section(&cfg, "frontend private").is_none(), "{cfg:?}");
        let public = section(&cfg, "frontend public").expect("a public frontend");
        assert_eq!(public[1], "bind 127.0.0.1:6432");
        assert!(public[2].starts_with("tcp-request connection reject unless { src -f "), "{public:?}");
    }

    #[test]
    fn binds_the_vip_beside_the_private_address() {
        let paths = GatewayPaths::new(PathBuf::from("/srv/g"));
        let vip = pgplane_core::agent::GatewayVip {
            address: "10.213.7.100".into(),
            port: 7000,
            router_id: 1,
            priority: 150,
            peers: vec!["10.0.0.6".into()],
        };
        let cfg = sections(&render(&GatewaySpec { vip: Some(vip), ..spec(None, &[]) }, &paths));
        assert_eq!(
            section(&cfg, "frontend private").expect("a private frontend"),
            &["frontend private", "bind 127.0.0.1:6432", "bind 10.213.7.100:7000", "default_backend postgres"]
        );
    }

    #[test]
    fn routes_to_the_primary_checked_over_tls() {
        let cfg = render(&spec(None, &[]), &GatewayPaths::new(PathBuf::from("/srv/g")));
        assert!(cfg.lines().any(|l| l.trim() == "mode tcp"), "{cfg}");
        let sections = sections(&cfg);
        let backend = section(&sections, "backend postgres").expect("backend postgres");
        for line in [
            "option httpchk",
            "http-check send meth GET uri /primary",
            "http-check expect status 200",
            r#"http-check expect rstring "\"role\": \"(master|primary)\"""#,
            "default-server inter 500ms fastinter 100ms downinter 100ms fall 2 rise 1 on-marked-down shutdown-sessions",
            "server m1 10.0.0.5:5432 check port 5433 check-ssl verify required ca-file \"/srv/g/ca.pem\" disabled",
            "server m2 10.0.0.5:5442 check port 5443 check-ssl verify required ca-file \"/srv/g/ca.pem\" disabled",
            "server no-primary 127.0.0.1:1 backup",
        ] {
            assert!(backend.iter().any(|l| l == line), "missing {line:?} in backend postgres of\n{cfg}");
        }
        for line in ["retries 30", "option redispatch 1", "timeout connect 100ms"] {
            assert!(cfg.lines().any(|l| l.trim() == line), "missing {line:?} in\n{cfg}");
        }
    }
}
