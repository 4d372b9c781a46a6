//! pgplane on the lab's network, made of the real binaries as a user would run them: on each
//! database host a member of a three-member etcd cluster (files made once with `pgplane etcd
//! init`, each member's flags from `pgplane etcd member`, secured with `pgplane etcd
//! enable-auth`) and `ip netns exec <host> pgplane agent --host <its address>`; in the control
//! plane's namespace a private PostgreSQL, `pgplane api` and `pgplane scheduler` with every etcd
//! endpoint and a pool of virtual IPs on the lab's /24. Every process is a child killed by its pid
//! when the plane is dropped (the namespaces' own cleanup then catches their children).

use anyhow::{bail, Context, Result};
use pgplane_localpg::{find_bindir, LocalPg};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{Host, Net};

/// Where the lab finds its programs.
#[derive(Clone, Debug)]
pub struct Programs {
    /// The `pgplane` binary under test.
    pub pgplane: PathBuf,
    /// The Patroni the agents run (`PGPLANE_PATRONI`); `None`: whatever the agent finds.
    pub patroni: Option<PathBuf>,
}

impl Programs {
    /// `pgplane` as given; Patroni from `$PGPLANE_LAB_PATRONI` when set.
    pub fn new(pgplane: impl Into<PathBuf>) -> Programs {
        let patroni = std::env::var_os("PGPLANE_LAB_PATRONI").filter(|v| !v.is_empty()).map(PathBuf::from);
        Programs { pgplane: pgplane.into(), patroni }
    }
}

/// A child process whose stderr goes to a log file; SIGKILLed and reaped when dropped.
pub struct Proc {
    command: Vec<String>,
    envs: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(command: Vec<String>, envs: Vec<(String, String)>, log: PathBuf) -> Result<Proc> {
        let mut p = Proc { command, envs, log, child: None };
        p.restart()?;
        Ok(p)
    }

    /// Starts the process again (after `kill9`, or when it died).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.command.join(" ")))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Reaps the process if it died (its pid is gone after a host was lost).
    pub fn reap(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

const BOOTSTRAP_TOKEN: &str = "pgplane-lab-bootstrap-token";
const AGENT_API_PORT: u16 = 8081;
const API_PORT: u16 = 8080;

/// The running platform. Field order is drop order: agents, then the control plane, then etcd.
pub struct Plane {
    pub agents: Vec<Proc>,
    api_proc: Proc,
    scheduler: Proc,
    /// One etcd member per database host, in the hosts' order.
    etcds: Vec<Proc>,
    pub pool: sqlx::PgPool,
    _pg: LocalPg,
    pub api: Api,
    pub dir: PathBuf,
}

impl Plane {
    /// Starts everything. The calling thread must be in the control plane's namespace.
    pub async fn start(net: &Net, programs: &Programs, dir: &Path) -> Result<Plane> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let pgplane = programs.pgplane.display().to_string();
        let bindir = find_bindir(None).context("PostgreSQL binaries")?;
        let pg = LocalPg::temporary(&bindir).context("the control-plane PostgreSQL")?;
        let url = pg.url("postgres");
        let s = |v: &str| v.to_string();
        // One folder of etcd files for every member (on real hosts: copied to each).
        let etcd_dir = dir.join("etcd");
        let etcd_dir_s = etcd_dir.display().to_string();
        let addrs: Vec<&str> = net.hosts.iter().map(|h| h.addr.as_str()).collect();
        pgplane_cmd(&pgplane, &["etcd", "init", "--dir", &etcd_dir_s, "--san", &addrs.join(",")])?;
        let cluster: Vec<String> =
            net.hosts.iter().enumerate().map(|(i, h)| format!("h{}={}", i + 1, h.addr)).collect();
        let mut etcds = Vec::new();
        for (i, host) in net.hosts.iter().enumerate() {
            let data = dir.join(format!("etcd-h{}", i + 1)).display().to_string();
            let name = format!("h{}", i + 1);
            let flags = pgplane_cmd(
                &pgplane,
                &[
                    "etcd",
                    "member",
                    "--dir",
                    &etcd_dir_s,
                    "--name",
                    &name,
                    "--initial-cluster",
                    &cluster.join(","),
                    "--data-dir",
                    &data,
                ],
            )?;
            let command = [s("ip"), s("netns"), s("exec"), host.ns.clone(), s("etcd")]
                .into_iter()
                .chain(flags.lines().map(str::to_string))
                .collect();
            etcds.push(Proc::start(command, vec![], dir.join(format!("etcd-h{}.log", i + 1)))?);
        }
        let endpoints: Vec<String> = addrs.iter().map(|a| format!("{a}:2379")).collect();
        let etcd_flags = [
            s("--etcd-endpoints"),
            endpoints.join(","),
            s("--etcd-ca-file"),
            format!("{etcd_dir_s}/tls/ca.pem"),
            s("--etcd-root-password-file"),
            format!("{etcd_dir_s}/root-password"),
        ];
        let mut enable: Vec<String> = vec![s("etcd"), s("enable-auth")];
        enable.extend(etcd_flags.iter().cloned());
        pgplane_cmd(&pgplane, &enable.iter().map(String::as_str).collect::<Vec<_>>())?;
        let token = pgplane_cmd(&pgplane, &["bootstrap", "--database-url", &url])?.trim().to_string();
        let cp = &net.control.addr;
        let api_proc = Proc::start(
            vec![pgplane.clone(), s("api"), s("--database-url"), url.clone(), s("--listen")]
                .into_iter()
                .chain([format!("{cp}:{API_PORT}"), s("--jwt-secret"), "l".repeat(40)])
                .collect(),
            vec![],
            dir.join("api.log"),
        )?;
        let scheduler = Proc::start(
            vec![pgplane.clone(), s("scheduler"), s("--database-url"), url.clone(), s("--agent-listen")]
                .into_iter()
                .chain([format!("{cp}:{AGENT_API_PORT}"), s("--agent-bootstrap-token"), s(BOOTSTRAP_TOKEN)])
                .chain(etcd_flags.iter().cloned())
                .chain([s("--gateway-vips"), net.vip_pool()])
                .collect(),
            vec![],
            dir.join("scheduler.log"),
        )?;
        let mut agents = Vec::new();
        for (i, host) in net.hosts.iter().enumerate() {
            agents.push(start_agent(net, programs, dir, i, host)?);
        }
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await?;
        let api = Api::login(&format!("http://{cp}:{API_PORT}"), &token).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM agents").fetch_one(&pool).await?;
            if n == net.hosts.len() as i64 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{n} of {} agents registered within 60 s (logs in {})", net.hosts.len(), dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Plane { agents, api_proc, scheduler, etcds, pool, _pg: pg, api, dir: dir.to_path_buf() })
    }

    /// Host `i` is back after it was lost: its etcd member starts again (it rejoins the cluster
    /// from its data folder), then its agent (it re-adopts or restarts the databases it had).
    pub fn restart_host(&mut self, i: usize) -> Result<()> {
        self.etcds[i].reap();
        self.etcds[i].restart()?;
        self.restart_agent(i)
    }

    /// The agent of host `i` after its host was lost: started again (it re-adopts or restarts
    /// the databases it had).
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        self.agents[i].reap();
        self.agents[i].restart()
    }

    /// The log files, for a failed run's report.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut all = vec![self.api_proc.log.clone(), self.scheduler.log.clone()];
        all.extend(self.etcds.iter().map(|e| e.log.clone()));
        all.extend(self.agents.iter().map(|a| a.log.clone()));
        all
    }
}

fn start_agent(net: &Net, programs: &Programs, dir: &Path, i: usize, host: &Host) -> Result<Proc> {
    let root = dir.join(format!("h{}", i + 1));
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let s = |v: &str| v.to_string();
    let command = vec![
        s("ip"),
        s("netns"),
        s("exec"),
        host.ns.clone(),
        programs.pgplane.display().to_string(),
        s("agent"),
        s("--name"),
        format!("h{}", i + 1),
        s("--host"),
        host.addr.clone(),
        s("--scheduler-url"),
        format!("http://{}:{AGENT_API_PORT}", net.control.addr),
        s("--bootstrap-token"),
        s(BOOTSTRAP_TOKEN),
        s("--memory-mb"),
        s("65536"),
        s("--port-min"),
        s("25000"),
        s("--port-max"),
        s("25099"),
        s("--root"),
        root.display().to_string(),
    ];
    let envs = programs.patroni.iter().map(|p| (s("PGPLANE_PATRONI"), p.display().to_string())).collect();
    Proc::start(command, envs, dir.join(format!("agent-h{}.log", i + 1)))
}

/// Runs `pgplane <args>` to completion; its stdout.
fn pgplane_cmd(pgplane: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(pgplane).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("pgplane {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An operator's client of the API (token from `pgplane bootstrap`). Its access token lasts an
/// hour (`ACCESS_TOKEN_SECS`): a 401 makes it log in again with the API token and retry once
/// (a 20-round benchmark runs longer than an hour; with the expired token every check of the
/// API's members failed from the 102nd run on, read as "the API disagrees with Patroni").
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    api_token: String,
    bearer: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Api {
    async fn login(base: &str, api_token: &str) -> Result<Api> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            if Instant::now() > deadline {
                bail!("the API did not come up at {base}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let api = Api { http, base: base.to_string(), api_token: api_token.to_string(), bearer: Default::default() };
        api.refresh().await?;
        Ok(api)
    }

    /// A new access token from the API token.
    async fn refresh(&self) -> Result<()> {
        let res: Value = self
            .http
            .post(format!("{}/v1/auth/token", self.base))
            .json(&json!({ "api_token": self.api_token }))
            .send()
            .await?
            .json()
            .await?;
        let bearer = res["access_token"].as_str().context("an access token")?.to_string();
        *self.bearer.lock().unwrap() = bearer;
        Ok(())
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value)> {
        for attempt in 0..2 {
            let bearer = self.bearer.lock().unwrap().clone();
            let mut req = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(bearer);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let res = req.send().await.with_context(|| format!("{method} {path}"))?;
            let status = res.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.refresh().await.context("logging in again")?;
                continue;
            }
            return Ok((status, res.json().await.unwrap_or(Value::Null)));
        }
        unreachable!("the second attempt returns")
    }

    /// A request answered 2xx; its body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }

    /// Waits for an operation to end `done`.
    pub async fn wait_done(&self, op: &Value, within: Duration) -> Result<()> {
        let id = op["id"].as_str().context("an operation id")?;
        let deadline = Instant::now() + within;
        loop {
            let body = self.ok(Method::GET, &format!("/v1/operations/{id}"), None).await?;
            match body["status"].as_str() {
                Some("done") => return Ok(()),
                Some("error" | "canceled") => bail!("operation failed: {body}"),
                _ if Instant::now() > deadline => bail!("operation not done within {within:?}: {body}"),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
