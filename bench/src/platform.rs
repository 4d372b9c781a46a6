//! A whole platform on this machine, as separate processes so each one's memory can be read:
//! a private durable control-plane PostgreSQL and etcd (children of this process), then
//! `pgplane api`, `pgplane scheduler` and one `pgplane agent` per simulated host, all on
//! 127.0.0.1. A tenant (user, API token, tenant, app) is made through the store and the API.
//! `stop` deletes what is left through the API, then stops every process by its pid; dropping
//! the platform without `stop` (an error) still stops every process.

use anyhow::{bail, Context, Result};
use pgplane_agent::LocalEtcd;
use pgplane_core::model::CreateUser;
use pgplane_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::controlpg::ControlPg;
use crate::dcs::Dcs;
use crate::procs::{self, Service};

/// The tenant's HTTP client of the API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
}

impl Api {
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value)> {
        let mut rb = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            rb = rb.bearer_auth(b);
        }
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let res = rb.send().await.with_context(|| format!("{method} {path}"))?;
        let status = res.status();
        let bytes = res.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    /// A request that starts an operation (202); returns the operation.
    pub async fn start_op(&self, method: Method, path: &str, body: &Value) -> Result<Value> {
        let (status, op) = self.call(method.clone(), path, Some(body)).await?;
        if status != StatusCode::ACCEPTED {
            bail!("{method} {path} answered {status}: {op}");
        }
        Ok(op)
    }
}

/// How to reach a database's Patroni REST APIs (from the control-plane tables).
pub struct PatroniAccess {
    /// (member, host, REST port)
    pub members: Vec<(String, String, u16)>,
    pub ca_pem: String,
    pub password: String,
}

pub struct Platform {
    pub api: Api,
    pub app_id: String,
    /// The control plane's database, read for secrets and job timings.
    pub store: Store,
    pub dcs: Dcs,
    /// Each agent's root folder, by agent index.
    pub roots: Vec<PathBuf>,
    pub services: Vec<Service>,
    etcd: Option<LocalEtcd>,
    pg: ControlPg,
    dir: PathBuf,
    torn_down: bool,
    /// Given to the api, the scheduler and the agents as `PGPLANE_BACKUP_STORAGE`.
    backup_storage: Option<PathBuf>,
}

const BOOTSTRAP_TOKEN: &str = "pgplane-bench-bootstrap-token";

impl Platform {
    pub async fn start(agents: usize) -> Result<Platform> {
        Self::start_with_backups(agents, None).await
    }

    /// `start`, with every service given the backup storage configuration `backup_storage`.
    pub async fn start_with_backups(agents: usize, backup_storage: Option<PathBuf>) -> Result<Platform> {
        let dir = std::env::temp_dir().join(format!("pgb-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let pg = ControlPg::start(true).await?;
        // The `pgplane api` process applies its own migrations (they may be newer or older
        // than this binary's, when the two were built at different times).
        let store = Store::connect(&pg.url, 4).await?;
        let etcd = {
            let d = dir.join("etcd");
            tokio::task::spawn_blocking(move || LocalEtcd::start(&d)).await?.context("starting etcd")?
        };
        // Whatever this build's LocalEtcd offers: plain http, or https with a CA and a root
        // password (then the scheduler gives each database an etcd user of its own).
        let mut admin = etcd.access();
        let root_password = std::fs::read_to_string(dir.join("etcd").join("root-password")).ok();
        if let Some(pw) = &root_password {
            admin.username = Some("root".into());
            admin.password = Some(pw.trim().to_string());
        }
        let dcs = Dcs::new(&admin)?;
        let mut p = Platform {
            api: Api { http: reqwest::Client::new(), base: String::new(), bearer: None },
            app_id: String::new(),
            store,
            dcs,
            roots: Vec::new(),
            services: Vec::new(),
            etcd: Some(etcd),
            pg,
            dir,
            torn_down: false,
            backup_storage,
        };
        p.start_services(agents).await?;
        Ok(p)
    }

    async fn start_services(&mut self, agents: usize) -> Result<()> {
        let api_port = pgplane_localpg::free_port()?;
        let agent_api_port = pgplane_localpg::free_port()?;
        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let db = ("PGPLANE_DATABASE_URL", self.pg.url.clone());
        let token = ("PGPLANE_AGENT_BOOTSTRAP_TOKEN", BOOTSTRAP_TOKEN.to_string());
        let storage: Vec<(&str, String)> =
            self.backup_storage.iter().map(|f| ("PGPLANE_BACKUP_STORAGE", f.display().to_string())).collect();
        let s = |v: &str| v.to_string();
        self.services.push(Service::start(
            "api",
            &[s("api"), s("--listen"), format!("127.0.0.1:{api_port}")]
                .into_iter()
                .chain(["--rate-limit-per-second", "1000000", "--rate-limit-burst", "1000000"].map(s))
                .collect::<Vec<_>>(),
            &[vec![db.clone(), ("PGPLANE_JWT_SECRET", secret)], storage.clone()].concat(),
            self.dir.join("api.log"),
        )?);
        let etcd = self.etcd.as_ref().expect("etcd runs");
        let mut args =
            vec![s("scheduler"), s("--agent-listen"), format!("127.0.0.1:{agent_api_port}"), s("--etcd-endpoints")];
        args.push(etcd.endpoint());
        if let Some(ca) = etcd.access().ca_pem {
            let file = self.dir.join("etcd-ca.pem");
            std::fs::write(&file, ca)?;
            args.extend([s("--etcd-ca-file"), file.display().to_string()]);
        }
        let password_file = self.dir.join("etcd").join("root-password");
        if password_file.exists() {
            args.extend([s("--etcd-root-password-file"), password_file.display().to_string()]);
        }
        let env = [vec![db, token.clone()], storage.clone()].concat();
        self.services.push(Service::start("scheduler", &args, &env, self.dir.join("scheduler.log"))?);
        let (port_min, port_max) = port_window(200)?;
        for i in 0..agents {
            let root = self.dir.join(format!("a{i}"));
            std::fs::create_dir_all(&root)?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
            let args = [
                s("agent"),
                s("--scheduler-url"),
                format!("http://127.0.0.1:{agent_api_port}"),
                s("--name"),
                format!("host-{i}"),
                s("--host"),
                s("127.0.0.1"),
                s("--memory-mb"),
                s("8192"),
                s("--disk-gb"),
                s("100"),
                s("--port-min"),
                port_min.to_string(),
                s("--port-max"),
                port_max.to_string(),
                s("--root"),
                root.display().to_string(),
                s("--stop-databases-on-exit"),
            ];
            self.services.push(Service::start(
                &format!("agent-{i}"),
                &args,
                &[vec![token.clone()], storage.clone()].concat(),
                self.dir.join(format!("agent-{i}.log")),
            )?);
            self.roots.push(root);
        }
        self.api.base = format!("http://127.0.0.1:{api_port}");
        self.wait_ready(agents).await?;
        self.tenant().await
    }

    /// The API answers and every agent has registered.
    async fn wait_ready(&self, agents: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(dead) = self.services.iter().find(|s| s.exited().is_some()) {
                bail!("pgplane {} exited at start: {}", dead.name, dead.tail(20));
            }
            let api_up = matches!(self.api.get("/healthz").await, Ok((StatusCode::OK, _)));
            let registered: i64 =
                sqlx::query_scalar("SELECT count(*) FROM agents").fetch_one(self.store.pool()).await.unwrap_or(0);
            if api_up && registered as usize >= agents {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the platform was not up within 60 s (API up: {api_up}, agents: {registered})\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A user with an API token (through the store), its access token, a tenant and an app.
    async fn tenant(&mut self) -> Result<()> {
        let user = self
            .store
            .user_create(&CreateUser { email: "bench@pgplane.test".into(), name: "bench".into(), platform_role: None })
            .await?;
        let (_, api_token) = self.store.token_create(user.id, "bench", None).await?;
        let (status, body) =
            self.api.call(Method::POST, "/v1/auth/token", Some(&json!({ "api_token": api_token }))).await?;
        if status != StatusCode::OK {
            bail!("token exchange answered {status}: {body}");
        }
        self.api.bearer = Some(body["access_token"].as_str().context("access_token")?.to_string());
        let (s, tenant) = self.api.call(Method::POST, "/v1/tenants", Some(&json!({ "name": "bench" }))).await?;
        if s != StatusCode::CREATED {
            bail!("creating the tenant answered {s}: {tenant}");
        }
        let tid = tenant["id"].as_str().context("tenant id")?;
        let path = format!("/v1/tenants/{tid}/apps");
        let (s, app) = self.api.call(Method::POST, &path, Some(&json!({ "name": "web" }))).await?;
        if s != StatusCode::CREATED {
            bail!("creating the app answered {s}: {app}");
        }
        self.app_id = app["id"].as_str().context("app id")?.to_string();
        Ok(())
    }

    /// The last lines of every service's log.
    /// The benchmark's scratch folder (removed at the end).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn logs(&self) -> String {
        self.services.iter().map(|s| format!("--- {} ({}):\n{}", s.name, s.log.display(), s.tail(15))).collect()
    }

    /// POST a new database; returns (database id, operation).
    pub async fn create_database(&self, name: &str, plan: &str) -> Result<(String, Value)> {
        let path = format!("/v1/apps/{}/databases", self.app_id);
        let op = self.api.start_op(Method::POST, &path, &json!({ "name": name, "plan": plan })).await?;
        Ok((op["database_id"].as_str().context("database_id")?.to_string(), op))
    }

    /// Polls an operation every 25 ms until it has finished; fails unless it is `done`.
    pub async fn wait_operation(&self, op: &Value, within: Duration) -> Result<Value> {
        let id = op["id"].as_str().context("operation id")?;
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = self.api.get(&format!("/v1/operations/{id}")).await?;
            match body["status"].as_str() {
                Some("done") => return Ok(body),
                Some("error" | "canceled") => bail!("operation {id} ended: {body}\n{}", self.logs()),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("operation {id} not done within {within:?}: {body}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts an operation and waits for it; returns how long it took.
    pub async fn run_op(&self, method: Method, path: &str, body: &Value, within: Duration) -> Result<Duration> {
        let t = Instant::now();
        let op = self.api.start_op(method, path, body).await?;
        self.wait_operation(&op, within).await?;
        Ok(t.elapsed())
    }

    pub async fn delete_database(&self, db: &str) -> Result<Duration> {
        self.run_op(Method::DELETE, &format!("/v1/databases/{db}"), &json!({}), Duration::from_secs(120)).await
    }

    /// The database's URL with `sslmode=verify-ca` and its CA written to a file.
    pub async fn url(&self, db: &str) -> Result<String> {
        let (s, conn) = self.api.get(&format!("/v1/databases/{db}/connection")).await?;
        if s != StatusCode::OK {
            bail!("GET connection answered {s}: {conn}");
        }
        // Written whole then renamed: a writer's psql may be reading the file meanwhile.
        let ca = self.dir.join(format!("{db}-ca.pem"));
        let tmp = self.dir.join(format!("{db}-ca.pem.tmp"));
        std::fs::write(&tmp, conn["ca_pem"].as_str().context("ca_pem")?)?;
        std::fs::rename(&tmp, &ca)?;
        let url = conn["url"].as_str().context("url")?;
        let verify = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
        Ok(url.replace("sslmode=verify-full", &verify))
    }

    /// Members' REST endpoints, the database CA and the REST password, from the control plane.
    pub async fn patroni(&self, db: &str) -> Result<PatroniAccess> {
        let id: uuid::Uuid = db.parse()?;
        let members: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT name, host, patroni_port FROM database_members WHERE database_id = $1 ORDER BY name",
        )
        .bind(id)
        .fetch_all(self.store.pool())
        .await?;
        let (password, ca_pem): (String, String) = sqlx::query_as(
            "SELECT secrets->>'restapi_password', ca_cert_pem FROM database_secrets WHERE database_id = $1",
        )
        .bind(id)
        .fetch_one(self.store.pool())
        .await?;
        let members = members.into_iter().map(|(n, h, p)| (n, h, p as u16)).collect();
        Ok(PatroniAccess { members, ca_pem, password })
    }

    /// A member's folder, on whichever agent runs it.
    pub fn member_dir(&self, db: &str, member: &str) -> Option<PathBuf> {
        self.roots.iter().map(|r| r.join(db).join(format!("member-{member}"))).find(|d| d.exists())
    }

    /// The pid of the agent whose root holds `dir`.
    pub fn agent_of(&self, dir: &std::path::Path) -> Option<u32> {
        let i = self.roots.iter().position(|r| dir.starts_with(r))?;
        self.services.iter().find(|s| s.name == format!("agent-{i}")).map(Service::pid)
    }

    /// Waits until Patroni's keys show `members` running members with a leader (and, with
    /// `sync`, a synchronous standby); returns how long that took.
    pub async fn wait_healthy(&self, db: &str, members: usize, sync: bool, within: Duration) -> Result<Duration> {
        let t = Instant::now();
        loop {
            let c = self.dcs.cluster(db).await;
            if c.healthy(members, sync) {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                bail!("cluster {db} not healthy within {within:?}: {c:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (service, pid, VmRSS kB, VmHWM kB) of the api, scheduler and agents.
    pub fn memory(&self) -> Vec<(String, u32, u64, u64)> {
        self.services
            .iter()
            .filter_map(|s| {
                let (rss, hwm) = procs::memory_kb(s.pid())?;
                Some((s.name.clone(), s.pid(), rss, hwm))
            })
            .collect()
    }

    /// Deletes the databases still there through the API, then stops everything.
    pub async fn stop(mut self) -> Result<()> {
        let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM databases WHERE status <> 'deleted'")
            .fetch_all(self.store.pool())
            .await
            .unwrap_or_default();
        for id in left {
            if let Err(e) = self.delete_database(&id.to_string()).await {
                eprintln!("deleting database {id} at the end failed (its processes are stopped anyway): {e:#}");
            }
        }
        self.store.pool().close().await;
        tokio::task::block_in_place(|| self.teardown());
        Ok(())
    }

    /// Agents first (they stop their databases), then anything left in their folders (by pid),
    /// the scheduler, the API, etcd and PostgreSQL; then the folder.
    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for s in self.services.iter().filter(|s| s.name.starts_with("agent")) {
            s.stop(Duration::from_secs(60));
        }
        for root in &self.roots {
            let left = pgplane_agent::process::processes_under(root);
            if !left.is_empty() {
                eprintln!("killing processes left under {}: {left:?}", root.display());
                procs::kill9(&left);
            }
        }
        for s in self.services.iter().filter(|s| !s.name.starts_with("agent")) {
            s.stop(Duration::from_secs(10));
        }
        if let Some(etcd) = self.etcd.take() {
            etcd.stop();
        }
        self.pg.stop();
        if std::env::var_os("PGPLANE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `size` consecutive loopback ports that are free now, between 15000 and 19999 (under the
/// kernel's ephemeral range and away from the tests' windows, 20000 and up).
fn port_window(size: u16) -> Result<(i32, i32)> {
    let offset = (uuid::Uuid::new_v4().as_u128() % 20) as u16;
    for i in 0..20u16 {
        let min = 15000 + ((offset + i) % 20) * 250;
        if (min..min + size).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()) {
            return Ok((i32::from(min), i32::from(min + size - 1)));
        }
    }
    bail!("no free window of {size} loopback ports between 15000 and 19999")
}
