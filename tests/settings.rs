//! Settings that take effect, on real PostgreSQL, Patroni, etcd and HAProxy: on a running
//! Business database, force TLS on then off (pg_hba reloaded, no PostgreSQL restart); internet
//! exposure on agents whose public address (127.0.0.3) differs from their private one
//! (127.0.0.1); an allowlist that admits 127.0.0.1 and then one that admits only 127.0.0.2 (a
//! relay whose outgoing socket is bound to 127.0.0.2 stands in for an outside client), with a
//! session kept open across the change, and gateways killed and started again from it.

use pgplane_agent::runtime::AgentConfig;
use pgplane_agent::LocalEtcd;
use pgplane_tests::data_plane::{eventually, pids_mentioning, postmaster, psql, TempDir};
use pgplane_tests::{spawn_app, Client, TestApp, AGENT_BOOTSTRAP_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

const PRIVATE: &str = "127.0.0.1";
const PUBLIC: &str = "127.0.0.3";
const OUTSIDE: &str = "127.0.0.2";

struct Platform {
    app: TestApp,
    owner: Client,
    app_id: String,
    roots: Vec<PathBuf>,
    stops: Vec<tokio::sync::watch::Sender<bool>>,
    _dirs: Vec<TempDir>,
    _etcd: LocalEtcd,
}

impl Drop for Platform {
    fn drop(&mut self) {
        for stop in &self.stops {
            let _ = stop.send(true);
        }
    }
}

/// Two agents (a Business database's two hosts) with a private and a public address.
async fn platform() -> Platform {
    let etcd_dir = TempDir::new("e");
    let etcd = {
        let dir = etcd_dir.0.clone();
        tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await.unwrap().expect("etcd")
    };
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(etcd.admin()).await;
    let mut dirs = vec![etcd_dir];
    let (mut roots, mut stops) = (Vec::new(), Vec::new());
    let (port_min, port_max) = pgplane_tests::port_window(20);
    for i in 0..2 {
        let dir = TempDir::new("a");
        roots.push(dir.0.clone());
        let config = AgentConfig {
            scheduler_url: agent_api.clone(),
            bootstrap_token: AGENT_BOOTSTRAP_TOKEN.into(),
            name: format!("host-{i}"),
            host: PRIVATE.into(),
            public_host: PUBLIC.into(),
            memory_mb: 4096,
            disk_gb: 100,
            port_min,
            port_max,
            root: dir.0.clone(),
            backup_storage: None,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(pgplane_agent::runtime::run_with(
            config,
            stopped,
            pgplane_agent::lifecycle::OnExit::StopDatabases,
        ));
        stops.push(stop);
        dirs.push(dir);
    }
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    Platform { app, owner, app_id, roots, stops, _dirs: dirs, _etcd: etcd }
}

impl Platform {
    /// Sends a settings change and waits for its operation to be done.
    async fn settings(&self, db: &str, patch: Value) -> Value {
        let (s, op) = self.owner.patch(&format!("/v1/databases/{db}/settings"), &patch).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        assert_eq!(op["kind"], "update_settings", "{op}");
        let done = self.app.wait_operation(&self.owner, op["id"].as_str().unwrap(), Duration::from_secs(120)).await;
        assert_eq!(done["status"], "done", "{done}");
        done
    }

    async fn connection(&self, db: &str) -> Value {
        let (s, conn) = self.owner.get(&format!("/v1/databases/{db}/connection")).await;
        assert_eq!(s, StatusCode::OK, "{conn}");
        conn
    }

    /// The postmaster pids of the database's members.
    fn postmasters(&self, db: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = ["m0", "m1"]
            .iter()
            .filter_map(|m| self.roots.iter().map(|r| r.join(db).join(format!("member-{m}"))).find(|d| d.exists()))
            .filter_map(|dir| postmaster(&dir))
            .collect();
        pids.sort();
        pids
    }
}

/// `url` with another host and port and extra parameters.
fn retarget(url: &str, host: &str, port: u16, extra: &str) -> String {
    let (head, rest) = url.split_once('@').unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    format!("{head}@{host}:{port}/{path}{extra}")
}

/// A TCP relay on 127.0.0.1 whose connections go on to `to` from `source`: a client of the
/// relay reaches `to` as if it came from `source` (another host, for the gateway).
async fn relay_from(source: &str, to: SocketAddr) -> u16 {
    let listener = tokio::net::TcpListener::bind((PRIVATE, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let source: IpAddr = source.parse().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(source, 0)).unwrap();
                if let Ok(mut upstream) = socket.connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    port
}

/// Waits until nothing listens on `addr` any more (a replaced HAProxy lets go of its listeners
/// as the new one starts).
async fn stops_listening(addr: SocketAddr, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "{what}: {addr} still listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[track_caller]
fn refused(answer: &Result<String, String>, what: &str) {
    assert!(answer.is_err(), "{what} was admitted: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_exposure_and_allowlist_take_effect_on_a_running_business_database() {
    let p = platform().await;
    let (s, op) = p
        .owner
        .post(&format!("/v1/apps/{}/databases", p.app_id), &json!({ "name": "shop", "plan": "business-1" }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = p.app.wait_operation(&p.owner, op["id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(done["status"], "done", "{done}");
    let db = op["database_id"].as_str().unwrap().to_string();

    let conn = p.connection(&db).await;
    assert_eq!((conn["sslmode"].as_str(), conn["host"].as_str()), (Some("verify-full"), Some(PRIVATE)), "{conn}");
    assert!(conn.get("public_url").is_none() && conn.get("public_host").is_none(), "not exposed: {conn}");
    let port = conn["port"].as_u64().unwrap() as u16;
    let ca = p.roots[0].join("ca.pem");
    std::fs::write(&ca, conn["ca_pem"].as_str().unwrap()).unwrap();
    let url = conn["url"].as_str().unwrap();
    assert!(url.ends_with("?sslmode=verify-full"), "{url}");
    let tls = format!("{url}&sslrootcert={}", ca.display());
    let plain = url.replace("sslmode=verify-full", "sslmode=disable");
    eventually(&tls, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "t", Duration::from_secs(30)).await;
    eventually(&plain, "SELECT 'plain'", "plain", Duration::from_secs(10)).await;
    let postmasters = p.postmasters(&db);
    assert_eq!(postmasters.len(), 2, "both members run");
    let public = SocketAddr::new(PUBLIC.parse().unwrap(), port);
    assert!(std::net::TcpStream::connect(public).is_err(), "the public address listens before exposure");

    // Force TLS: plain text refused, TLS accepted, PostgreSQL reloaded rather than restarted.
    p.settings(&db, json!({ "force_tls": true })).await;
    let answer = psql(&plain, "SELECT 1").await;
    refused(&answer, "a plain-text connection under force TLS");
    assert!(answer.unwrap_err().contains("no encryption"), "refused by pg_hba");
    assert_eq!(psql(&tls, "SELECT 1").await, Ok("1".into()));
    assert_eq!(p.postmasters(&db), postmasters, "PostgreSQL was restarted");

    // Exposed, admitting 127.0.0.1 only: the public address answers (verify-full names it).
    p.settings(&db, json!({ "internet_exposure": true, "allowed_cidrs": ["127.0.0.1"] })).await;
    let conn = p.connection(&db).await;
    assert_eq!(conn["public_host"], PUBLIC, "{conn}");
    let public_url = conn["public_url"].as_str().expect("public_url while exposed");
    assert_eq!(public_url, retarget(url, PUBLIC, port, ""));
    let public_tls = format!("{public_url}&sslrootcert={}", ca.display());
    assert_eq!(psql(&public_tls, "SELECT 'public'").await, Ok("public".into()));
    assert_eq!(psql(&tls, "SELECT 'private'").await, Ok("private".into()), "the private address still serves");
    let outside_port = relay_from(OUTSIDE, public).await;
    let outside = retarget(&public_tls, PRIVATE, outside_port, "");
    refused(&psql(&outside, "SELECT 1").await, "a client from 127.0.0.2 outside the allowlist");

    // A session kept open across an allowlist change that no longer admits its address: it
    // goes on (same backend) while new connections from its address are refused.
    psql(&tls, "CREATE TABLE go_on (x int)").await.unwrap();
    let kept = tokio::spawn({
        let public_tls = public_tls.clone();
        async move {
            let wait = "DO $$ BEGIN WHILE NOT EXISTS (SELECT FROM go_on) LOOP PERFORM pg_sleep(0.05); END LOOP; END $$";
            tokio::process::Command::new("psql")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", &public_tls])
                .args(["-c", "SELECT pg_backend_pid()", "-c", wait, "-c", "SELECT pg_backend_pid()"])
                .output()
                .await
                .unwrap()
        }
    });
    // The session is open once its backend waits.
    eventually(
        &tls,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO $$%go_on%'",
        "1",
        Duration::from_secs(10),
    )
    .await;
    let gateways = pids_mentioning(&format!("{db}/gateway-"));
    p.settings(&db, json!({ "allowed_cidrs": ["127.0.0.2/32"] })).await;
    assert_eq!(pids_mentioning(&format!("{db}/gateway-")), gateways, "the gateways were replaced");
    refused(&psql(&public_tls, "SELECT 1").await, "a new client from 127.0.0.1 after the change");
    assert_eq!(psql(&outside, "INSERT INTO go_on VALUES (1) RETURNING x").await, Ok("1".into()));
    let out = tokio::time::timeout(Duration::from_secs(30), kept).await.expect("the kept session ends").unwrap();
    assert!(out.status.success(), "the kept session was cut: {}", String::from_utf8_lossy(&out.stderr));
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_eq!(pids[0], pids[1], "the same backend answered before and after the change");

    // A gateway that dies is started again by its agent with the allowlist it had last.
    for pid in &gateways {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = pids_mentioning(&format!("{db}/gateway-"));
        if now.len() == 2 && now.iter().all(|pid| !gateways.contains(pid)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the gateways were not started again: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(&outside, "SELECT 'outside again'", "outside again", Duration::from_secs(10)).await;
    for _ in 0..4 {
        refused(&psql(&public_tls, "SELECT 1").await, "a client from 127.0.0.1 after the gateways restarted");
    }

    // Back to private and plain text allowed; still no restart.
    p.settings(&db, json!({ "force_tls": false, "internet_exposure": false })).await;
    assert!(p.connection(&db).await.get("public_url").is_none());
    eventually(&plain, "SELECT 'plain again'", "plain again", Duration::from_secs(10)).await;
    stops_listening(public, "exposure ended").await;
    assert_eq!(psql(&tls, "SELECT 1").await, Ok("1".into()));
    assert_eq!(p.postmasters(&db), postmasters, "PostgreSQL was restarted");

    // The backup hour needs nothing running to change: its operation is done at once.
    let gateways = pids_mentioning(&format!("{db}/gateway-"));
    let done = p.settings(&db, json!({ "backup_hour": 4 })).await;
    assert_eq!(done["params"]["changed"], json!(["backup_hour"]));
    assert_eq!(pids_mentioning(&format!("{db}/gateway-")), gateways);
}
