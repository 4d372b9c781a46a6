//! Business databases with real parts: two members on two agents, two gateways sharing one
//! port; configuration through Patroni, synchronous replication, a planned switchover, and
//! an unplanned failover (kill -9 of the leader's Patroni and PostgreSQL) while a client
//! writes continuously: no acknowledged write is lost and the new leader takes writes. And a
//! replica whose replication breaks: shown `not_streaming` (never the synchronous standby),
//! re-cloned, streaming again. And a Business backup taken on the streaming follower, then
//! restored in place on the leader.

use pgplane_agent::runtime::AgentConfig;
use pgplane_agent::LocalEtcd;
use pgplane_scheduler::config::SchedulerConfig;
use pgplane_tests::data_plane::{eventually, find_file, pids_mentioning, postmaster, psql, TempDir};
use pgplane_tests::{spawn_app, Client, TestApp, AGENT_BOOTSTRAP_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A JSON value Patroni keeps in etcd under `/service/<scope>/<key>`.
async fn dcs_value(etcd: &LocalEtcd, scope: &str, key: &str) -> Option<Value> {
    let root = pgplane_etcd::Client::new(&etcd.admin()).ok()?;
    serde_json::from_slice(&root.get(&format!("/service/{scope}/{key}")).await.ok()??).ok()
}

/// One in-process agent that can be stopped and started again on its folder.
struct Agent {
    config: AgentConfig,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    fn start(config: AgentConfig) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(pgplane_agent::runtime::run_with(
            config.clone(),
            stopped,
            pgplane_agent::lifecycle::OnExit::StopDatabases,
        ));
        Agent { config, stop, task: Some(task) }
    }

    /// The host is lost: the agent goes away and leaves its processes (killed by the caller).
    async fn vanish(&mut self) {
        self.task.take().expect("running").abort();
    }
}

struct Platform {
    app: TestApp,
    owner: Client,
    app_id: String,
    roots: Vec<PathBuf>,
    agents: Vec<Agent>,
    _dirs: Vec<TempDir>,
    _etcd: LocalEtcd,
}

impl Drop for Platform {
    fn drop(&mut self) {
        for a in &self.agents {
            let _ = a.stop.send(true);
        }
    }
}

async fn platform(agents: usize) -> Platform {
    platform_with(agents, pgplane_scheduler::truth::NOT_STREAMING_GRACE).await
}

/// `platform` whose scheduler re-clones a replica that does not stream after `not_streaming_grace`.
async fn platform_with(agents: usize, not_streaming_grace: Duration) -> Platform {
    let etcd_dir = TempDir::new("e");
    let etcd = {
        let dir = etcd_dir.0.clone();
        tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await.unwrap().expect("etcd")
    };
    let mut app = spawn_app().await;
    // Backups go to one local folder every agent and the scheduler share.
    let backups = TempDir::new("b");
    let storage = pgplane_storage::StorageConfig::Local { root: backups.0.join("store") };
    let config = SchedulerConfig {
        not_streaming_grace,
        backup_storage: Some(pgplane_storage::BackupStore::open(&storage).expect("backup storage")),
        ..pgplane_tests::scheduler_config(etcd.admin())
    };
    let agent_api = app.start_scheduler_config(config).await;
    let mut dirs = vec![etcd_dir, backups];
    let mut started = Vec::new();
    let mut roots = Vec::new();
    let (port_min, port_max) = pgplane_tests::port_window(20);
    for i in 0..agents {
        let dir = TempDir::new("a");
        roots.push(dir.0.clone());
        let config = AgentConfig {
            scheduler_url: agent_api.clone(),
            bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
            name: format!("host-{i}"),
            host: "127.0.0.1".into(),
            public_host: "127.0.0.1".into(),
            memory_mb: 4096,
            disk_gb: 100,
            port_min,
            port_max,
            root: dir.0.clone(),
            backup_storage: Some(storage.clone()),
        };
        dirs.push(dir);
        started.push(Agent::start(config));
    }
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    Platform { app, owner, app_id, roots, agents: started, _dirs: dirs, _etcd: etcd }
}

impl Platform {
    async fn run(&self, op: &Value, within: Duration) -> Value {
        let done = self.app.wait_operation(&self.owner, op["id"].as_str().unwrap(), within).await;
        assert_eq!(done["status"], "done", "{done}");
        done
    }

    /// The database's URL (verify-full) with its CA as `sslrootcert`.
    async fn url(&self, db: &str) -> String {
        let (_, conn) = self.owner.get(&format!("/v1/databases/{db}/connection")).await;
        let ca = self.roots[0].join(format!("{db}-ca.pem"));
        std::fs::write(&ca, conn["ca_pem"].as_str().unwrap()).unwrap();
        conn["url"]
            .as_str()
            .unwrap()
            .replace("sslmode=verify-full", &format!("sslmode=verify-full&sslrootcert={}", ca.display()))
    }

    async fn stop_agents(&mut self) {
        for a in &mut self.agents {
            let _ = a.stop.send(true);
            if let Some(task) = a.task.take() {
                let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
            }
        }
    }

    /// Waits until the members' observed roles are `roles` (in any order), all running.
    async fn members_become(&self, db: &str, roles: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (_, members) = self.owner.get(&format!("/v1/databases/{db}/members")).await;
            let items = members["items"].as_array().cloned().unwrap_or_default();
            let mut seen: Vec<&str> = items.iter().map(|m| m["role"].as_str().unwrap_or("")).collect();
            seen.sort();
            let mut want = roles.to_vec();
            want.sort();
            if seen == want && items.iter().all(|m| matches!(m["state"].as_str(), Some("running" | "streaming"))) {
                return;
            }
            assert!(Instant::now() < deadline, "members are {members}, not {roles:?} and running");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn member_dir(&self, db: &str, member: &str) -> PathBuf {
        self.roots
            .iter()
            .map(|r| r.join(db).join(format!("member-{member}")))
            .find(|d| d.exists())
            .expect("member folder")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn business_configuration_switchover_and_failover_without_losing_writes() {
    let mut p = platform(2).await;
    let started = Instant::now();
    let (s, op) =
        p.owner.post(&format!("/v1/apps/{}/databases", p.app_id), &json!({ "name": "ha", "plan": "business-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    let db = op["database_id"].as_str().unwrap().to_string();
    let url = p.url(&db).await;
    eventually(&url, "SELECT 1", "1", Duration::from_secs(30)).await;
    eprintln!("Business: POST → first query through the gateway: {:?}", started.elapsed());
    eventually(&url, "CREATE TABLE IF NOT EXISTS w (id int PRIMARY KEY); SELECT 'ok'", "ok", Duration::from_secs(30))
        .await;

    // Both gateways hold the same address and port.
    let port = url.split(':').nth(3).unwrap().split('/').next().unwrap().to_string();
    let gateways = pids_mentioning(&format!("{db}/gateway-"));
    assert_eq!(gateways.len(), 2, "two HAProxy gateways run: {gateways:?} (port {port})");

    // Parameters and synchronous replication, through Patroni.
    let (s, op) = p
        .owner
        .patch(
            &format!("/v1/databases/{db}/configuration"),
            &json!({ "parameters": { "work_mem": 8192, "max_locks_per_transaction": 128 }, "synchronous_replication": true }),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["params"]["restart_required"], json!(["max_locks_per_transaction"]));
    p.run(&op, Duration::from_secs(60)).await;
    eventually(&url, "SHOW work_mem", "8MB", Duration::from_secs(30)).await;
    eventually(
        &url,
        "SELECT setting <> '' FROM pg_settings WHERE name = 'synchronous_standby_names'",
        "t",
        Duration::from_secs(30),
    )
    .await;

    // A planned switchover; the database keeps its URL.
    let (s, op) = p.owner.post(&format!("/v1/databases/{db}/switchover"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let t = Instant::now();
    p.run(&op, Duration::from_secs(90)).await;
    eventually(&url, "INSERT INTO w VALUES (0) RETURNING id", "0", Duration::from_secs(30)).await;
    eprintln!("switchover: operation and first write after it: {:?}", t.elapsed());
    let (_, events) = p.owner.get(&format!("/v1/databases/{db}/events")).await;
    let event = &events["items"][0];
    assert_eq!(event["kind"], "switchover", "{events}");
    let leader = event["detail"]["to"].as_str().unwrap().to_string();

    // The switchover task replayed, as after a lost report (its job claimed and run again): it
    // names the candidate, which leads already, so the leader stays where the first run put it.
    let sql = sqlx::PgPool::connect(&p.app.db_url).await.unwrap();
    let switchover: uuid::Uuid = op["id"].as_str().unwrap().parse().unwrap();
    let job: uuid::Uuid = sqlx::query_scalar(
        "UPDATE jobs SET status = 'queued', run_at = now(), finished_at = NULL, result = NULL \
         WHERE operation_id = $1 AND kind = 'switchover' RETURNING id",
    )
    .bind(switchover)
    .fetch_one(&sql)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let replayed: Value = loop {
        let (status, result): (String, Option<Value>) =
            sqlx::query_as("SELECT status, result FROM jobs WHERE id = $1").bind(job).fetch_one(&sql).await.unwrap();
        if status == "done" {
            break result.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "the replayed switchover did not finish: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(replayed, json!({ "from": leader, "to": leader }), "the replay moved nothing");
    p.members_become(&db, &["leader", "replica"], Duration::from_secs(30)).await;
    let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
    let leads = members["items"].as_array().unwrap().iter().find(|m| m["role"] == "leader").unwrap()["name"].clone();
    assert_eq!(leads, json!(leader), "{members}");
    eventually(&url, "INSERT INTO w VALUES (-1) RETURNING id", "-1", Duration::from_secs(30)).await;

    // Unplanned: the leader's host is lost. Its agent vanishes and every process it ran there
    // (Patroni, PostgreSQL, the HAProxy gateway) is killed with -9, while a client keeps
    // writing through the unchanged URL; the other host's gateway keeps the port.
    let leader_dir = p.member_dir(&db, &leader);
    let host_root = p.roots.iter().position(|r| leader_dir.starts_with(r)).unwrap();
    let mut victims = pids_mentioning(&p.roots[host_root].join(&db).display().to_string());
    victims.extend(postmaster(&leader_dir));
    victims.sort();
    victims.dedup();
    assert!(victims.len() >= 3, "the lost host's Patroni, postmaster and HAProxy: {victims:?}");
    // With synchronous replication Patroni promotes only the synchronous standby: wait until
    // the follower (the former leader, rejoining after the switchover) holds that role.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dcs_value(&p._etcd, &db, "sync").await.is_none_or(|v| v["sync_standby"].is_null()) {
        assert!(Instant::now() < deadline, "no synchronous standby after the switchover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut acknowledged = Vec::new();
    let mut gap_start = None;
    let mut gap = None;
    for id in 1..400 {
        if id == 20 {
            p.agents[host_root].vanish().await;
            for pid in &victims {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        let t = Instant::now();
        match psql(&url, &format!("INSERT INTO w VALUES ({id}) RETURNING id")).await {
            Ok(answer) if answer == id.to_string() => {
                acknowledged.push(id);
                if let Some(start) = gap_start.take() {
                    gap = Some(t.duration_since(start) + t.elapsed());
                }
                if id > 20 && gap.is_some() && acknowledged.len() > 40 {
                    break;
                }
            }
            _ => {
                gap_start.get_or_insert(t);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let Some(gap) = gap else {
        let logs: Vec<String> = p
            .roots
            .iter()
            .filter_map(|r| find_file(&r.join(&db), "patroni.log"))
            .map(|f| {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("{}:\n{}", f.display(), lines[lines.len().saturating_sub(25)..].join("\n"))
            })
            .collect();
        panic!("writes did not resume; last error {:?}\n{}", psql(&url, "SELECT 1").await, logs.join("\n\n"));
    };
    eprintln!("failover write gap: {gap:?}");
    let count = psql(
        &url,
        &format!(
            "SELECT count(*) FROM w WHERE id = ANY('{{{}}}')",
            acknowledged.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        ),
    )
    .await;
    assert_eq!(count, Ok(acknowledged.len().to_string()), "every acknowledged write survived the failover");

    // The failover is recorded from etcd's leader key (the scheduler reads it), and the old
    // leader comes back as a replica (its agent restarts Patroni, which rewinds it onto the new timeline).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, events) = p.owner.get(&format!("/v1/databases/{db}/events")).await;
        if events["items"][0]["kind"] == "failover" {
            assert_eq!(events["items"][0]["detail"]["from"], leader.as_str(), "{events}");
            break;
        }
        if Instant::now() > deadline {
            let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
            let agents: Vec<(String, serde_json::Value)> =
                sqlx::query_as("SELECT name, observed FROM agents").fetch_all(p.app.store.pool()).await.unwrap();
            panic!("no failover event: {events}\nmembers: {members}\nagents: {agents:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The lost host's member is not shown as a running replica: its agent is silent, so it is
    // `unknown` (within three heartbeats).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
        let lost = members["items"].as_array().unwrap().iter().find(|m| m["name"] == leader.as_str()).cloned();
        if lost.as_ref().is_some_and(|m| m["role"] == "unknown" && m["state"] == "unknown") {
            break;
        }
        assert!(Instant::now() < deadline, "the lost member is still shown as {lost:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The host comes back: its agent re-adopts nothing (all was killed), starts Patroni from
    // the persisted spec, and Patroni rewinds the old leader into a replica of the new one.
    let t = Instant::now();
    let config = p.agents[host_root].config.clone();
    p.agents[host_root] = Agent::start(config);
    p.members_become(&db, &["leader", "replica"], Duration::from_secs(90)).await;
    eprintln!("old leader back as a replica: {:?} after its host returned", t.elapsed());
    eventually(&url, "SELECT count(*) > 0 FROM w", "t", Duration::from_secs(10)).await;
    // One event per change of leader, nothing else: the switchover, then the failover.
    let (_, events) = p.owner.get(&format!("/v1/databases/{db}/events")).await;
    let changes: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| matches!(*k, "failover" | "switchover" | "reinitialize"))
        .collect();
    assert_eq!(changes, ["failover", "switchover"], "{events}");

    // A re-clone, as the scheduler asks of a diverged replica (`ReinitMember`): Patroni wipes the
    // replica and clones it from the leader; a new PostgreSQL runs there, and it is a replica again.
    let spec: pgplane_core::agent::MemberSpec =
        serde_json::from_str(&std::fs::read_to_string(leader_dir.join("spec.json")).unwrap()).unwrap();
    let before = postmaster(&leader_dir);
    let api = pgplane_core::agent::PatroniApi {
        host: spec.host.clone(),
        patroni_port: spec.patroni_port,
        ca_pem: spec.tls.ca_pem.clone(),
        restapi_password: spec.secrets.restapi_password.clone(),
    };
    pgplane_agent::restart::reinit_member(&api).await.expect("Patroni re-clones the replica");
    let deadline = Instant::now() + Duration::from_secs(60);
    while postmaster(&leader_dir).is_none_or(|pid| Some(pid) == before) {
        assert!(Instant::now() < deadline, "the replica's PostgreSQL was not re-cloned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.members_become(&db, &["leader", "replica"], Duration::from_secs(90)).await;
    let wrong = pgplane_core::agent::PatroniApi { restapi_password: "guess".into(), ..api };
    assert!(pgplane_agent::restart::reinit_member(&wrong).await.is_err(), "the REST API asks for its password");

    let (s, del) = p.owner.delete(&format!("/v1/databases/{db}")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    p.run(&del, Duration::from_secs(90)).await;
    assert!(pids_mentioning(&db).is_empty(), "nothing of the database runs any more");
    p.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_business_backup_is_taken_on_the_streaming_follower_and_restores_on_the_leader() {
    let p = platform(2).await;
    let (s, op) =
        p.owner.post(&format!("/v1/apps/{}/databases", p.app_id), &json!({ "name": "bk", "plan": "business-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    let db = op["database_id"].as_str().unwrap().to_string();
    let url = p.url(&db).await;
    eventually(
        &url,
        "CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS x; SELECT count(*) FROM t",
        "1",
        Duration::from_secs(30),
    )
    .await;
    p.members_become(&db, &["leader", "replica"], Duration::from_secs(60)).await;
    let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
    let replica = members["items"].as_array().unwrap().iter().find(|m| m["role"] == "replica").unwrap()["name"].clone();

    let (s, op) = p.owner.post(&format!("/v1/databases/{db}/backups"), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    let (_, page) = p.owner.get(&format!("/v1/databases/{db}/backups")).await;
    let backup = page["items"][0].clone();
    assert_eq!(backup["status"], "done", "{backup}");
    assert_eq!(backup["member"], replica, "the dump ran on the streaming follower: {backup}");

    // Written after the backup: a restore in place (on the leader) takes it away again.
    psql(&url, "INSERT INTO t VALUES (2)").await.unwrap();
    let path = format!("/v1/databases/{db}/backups/{}/restore", backup["id"].as_str().unwrap());
    let (s, op) = p.owner.post(&path, &json!({ "target": "in_place" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    eventually(&url, "SELECT count(*) FROM t", "1", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starter_to_business_and_back_keeps_data_and_url() {
    let mut p = platform(2).await;
    let (_, op) = p
        .owner
        .post(&format!("/v1/apps/{}/databases", p.app_id), &json!({ "name": "grow", "plan": "starter-1" }))
        .await;
    p.run(&op, Duration::from_secs(180)).await;
    let db = op["database_id"].as_str().unwrap().to_string();
    let url = p.url(&db).await;
    psql(&url, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)").await.unwrap();

    let started = Instant::now();
    let (s, op) = p.owner.post(&format!("/v1/databases/{db}/change-plan"), &json!({ "plan": "business-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    eprintln!("Starter → Business migration: {:?}", started.elapsed());
    assert_eq!(p.url(&db).await, url, "the connection URL did not change");
    eventually(&url, "SELECT count(*) FROM t", "1000", Duration::from_secs(30)).await;
    let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
    assert_eq!(members["items"].as_array().unwrap().len(), 2, "{members}");
    assert_eq!(pids_mentioning(&format!("{db}/gateway-")).len(), 2, "two gateways");
    // The tenant role sees the walsender's row, not its details.
    eventually(&url, "SELECT count(*) FROM pg_stat_replication", "1", Duration::from_secs(30)).await;
    psql(&url, "INSERT INTO t VALUES (1001)").await.unwrap();

    let started = Instant::now();
    let (s, op) = p.owner.post(&format!("/v1/databases/{db}/change-plan"), &json!({ "plan": "starter-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    eprintln!("Business → Starter migration: {:?}", started.elapsed());
    assert_eq!(p.url(&db).await, url);
    eventually(&url, "SELECT count(*) FROM t", "1001", Duration::from_secs(30)).await;
    let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
    assert_eq!(members["items"].as_array().unwrap().len(), 1, "{members}");
    assert_eq!(pids_mentioning(&format!("{db}/gateway-")).len(), 1, "one gateway");
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM port_allocations WHERE database_id = $1::uuid")
        .bind(&db)
        .fetch_one(p.app.store.pool())
        .await
        .unwrap();
    assert_eq!(held, 3, "postgres, patroni and gateway ports of one member");

    let (_, del) = p.owner.delete(&format!("/v1/databases/{db}")).await;
    p.run(&del, Duration::from_secs(90)).await;
    p.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_stops_streaming_is_shown_so_and_recloned() {
    let mut p = platform_with(2, Duration::from_secs(5)).await;
    let (s, op) =
        p.owner.post(&format!("/v1/apps/{}/databases", p.app_id), &json!({ "name": "rs", "plan": "business-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    p.run(&op, Duration::from_secs(180)).await;
    let db = op["database_id"].as_str().unwrap().to_string();
    let url = p.url(&db).await;
    eventually(&url, "CREATE TABLE IF NOT EXISTS w (id int PRIMARY KEY); SELECT 'ok'", "ok", Duration::from_secs(60))
        .await;
    // Business databases start with synchronous replication: the replica is the standby.
    let members = member_list_until(&p, &db, "a streaming synchronous replica", |items| {
        items.iter().any(|m| m["role"] == "replica" && m["state"] == "streaming" && m["synchronous"] == true)
    })
    .await;
    let name = |role: &str| members.iter().find(|m| m["role"] == role).unwrap()["name"].as_str().unwrap().to_string();
    let (leader, replica) = (name("leader"), name("replica"));

    // The leader refuses the replication user from now on (as a changed password or pg_hba
    // would) and its WAL senders are cut: the replica keeps running, streaming nothing.
    let spec: pgplane_core::agent::MemberSpec =
        serde_json::from_str(&std::fs::read_to_string(p.member_dir(&db, &leader).join("spec.json")).unwrap()).unwrap();
    let superuser = format!(
        "postgres://postgres:{}@{}:{}/postgres?sslmode=require",
        spec.secrets.superuser_password, spec.host, spec.pg_port
    );
    let replica_dir = p.member_dir(&db, &replica);
    let before = postmaster(&replica_dir).expect("the replica's postmaster");
    psql(&superuser, "ALTER ROLE replicator NOLOGIN").await.expect("the leader takes the superuser's SQL");
    psql(&superuser, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication").await.unwrap();

    // Shown `not_streaming` once the grace passed, and never as the synchronous standby then;
    // the scheduler asks its agent for a re-clone (an event says so).
    let shown = member_list_until(&p, &db, "the replica shown not streaming", |items| {
        let r = items.iter().find(|m| m["name"] == replica.as_str());
        assert!(
            r.is_none_or(|r| r["state"] != "not_streaming" || r["synchronous"] == false),
            "a replica that does not stream is shown synchronous: {items:?}"
        );
        r.is_some_and(|r| r["state"] == "not_streaming")
    })
    .await;
    assert!(shown.iter().any(|m| m["name"] == leader.as_str() && m["role"] == "leader"), "{shown:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, events) = p.owner.get(&format!("/v1/databases/{db}/events")).await;
        let reinit = events["items"].as_array().unwrap().iter().find(|e| e["kind"] == "reinitialize").cloned();
        if let Some(e) = reinit {
            assert_eq!(e["detail"]["member"], replica.as_str(), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no re-clone asked for: {events}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Writes go on meanwhile (non-strict synchronous mode: the leader writes alone).
    eventually(&url, "INSERT INTO w VALUES (1) RETURNING id", "1", Duration::from_secs(30)).await;

    // Replication works again: the replica is cloned afresh (a new PostgreSQL on a new data
    // folder), streams, and is the synchronous standby again, holding what the leader wrote.
    psql(&superuser, "ALTER ROLE replicator LOGIN").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while postmaster(&replica_dir).is_none_or(|pid| pid == before) {
        assert!(Instant::now() < deadline, "the replica was not re-cloned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    member_list_until(&p, &db, "the re-cloned replica streaming and synchronous", |items| {
        items.iter().any(|m| m["name"] == replica.as_str() && m["state"] == "streaming" && m["synchronous"] == true)
    })
    .await;
    let replica_spec: pgplane_core::agent::MemberSpec =
        serde_json::from_str(&std::fs::read_to_string(replica_dir.join("spec.json")).unwrap()).unwrap();
    let on_replica = format!(
        "postgres://postgres:{}@{}:{}/{}?sslmode=require",
        replica_spec.secrets.superuser_password,
        replica_spec.host,
        replica_spec.pg_port,
        replica_spec.secrets.app_database
    );
    eventually(&on_replica, "SELECT count(*) FROM w WHERE id = 1", "1", Duration::from_secs(30)).await;

    let (s, del) = p.owner.delete(&format!("/v1/databases/{db}")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    p.run(&del, Duration::from_secs(90)).await;
    p.stop_agents().await;
}

/// Polls the database's members until `check` holds of them (at most 120 s); returns them.
async fn member_list_until(p: &Platform, db: &str, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, members) = p.owner.get(&format!("/v1/databases/{db}/members")).await;
        let items = members["items"].as_array().cloned().unwrap_or_default();
        if check(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "{what}: members are {members}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
