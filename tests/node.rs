//! The node agent's drivers on real processes: a local etcd, a Patroni-run PostgreSQL member and
//! an HAProxy gateway, reached by the real `psql` over TLS checked against the database's CA;
//! idempotent ensures, fencing, and a removal that leaves no process, port or folder behind.

use anyhow::{Context, Result};
use pgplane_agent::{LocalEtcd, Node, NodeError};
use pgplane_core::agent::{DatabaseSecrets, EtcdAccess, GatewayBackend, GatewaySpec, MemberSpec, PgSizing, TlsBundle};
use pgplane_core::ids::DatabaseId;
use pgplane_localpg::free_port;
use pgplane_pki::DatabaseCa;
use pgplane_tests::data_plane::{eventually, postmaster, psql, TempDir};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Stops every process of the node when dropped (they outlive a `Node` by design), so a failed
/// assertion leaves nothing running.
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a Node);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

pub(crate) fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(crate) fn member_spec(
    database_id: DatabaseId,
    generation: i64,
    etcd: EtcdAccess,
    ca: &DatabaseCa,
) -> Result<MemberSpec> {
    let server = ca.issue_server(&["127.0.0.1", "localhost"])?;
    Ok(MemberSpec {
        database_id,
        generation,
        scope: database_id.to_string(),
        member: "m1".into(),
        version: "15".into(),
        host: "127.0.0.1".into(),
        pg_port: free_port()?,
        patroni_port: free_port()?,
        etcd,
        tls: TlsBundle { ca_pem: ca.cert_pem().into(), cert_pem: server.cert_pem, key_pem: server.key_pem },
        secrets: DatabaseSecrets {
            superuser_password: secret(),
            replication_password: secret(),
            restapi_password: secret(),
            app_user: "app_user".into(),
            app_password: secret(),
            app_database: "app_db".into(),
        },
        sizing: PgSizing {
            max_connections: 50,
            shared_buffers_mb: 32,
            effective_cache_size_mb: 128,
            work_mem_kb: 4096,
            maintenance_work_mem_mb: 16,
        },
        force_tls: true,
        synchronous_mode: false,
        pitr: None,
    })
}

fn gateway_spec(member: &MemberSpec, ca: &DatabaseCa) -> Result<GatewaySpec> {
    Ok(GatewaySpec {
        database_id: member.database_id,
        generation: member.generation,
        name: "g1".into(),
        listen_host: "127.0.0.1".into(),
        listen_port: free_port()?,
        public_host: None,
        allowed_cidrs: vec![],
        backends: vec![backend(member)],
        ca_pem: ca.cert_pem().into(),
        vip: None,
    })
}

fn backend(member: &MemberSpec) -> GatewayBackend {
    GatewayBackend {
        member: member.member.clone(),
        host: member.host.clone(),
        pg_port: member.pg_port,
        patroni_port: member.patroni_port,
    }
}

/// A second member of the same database: same secrets, its own ports and certificate.
pub(crate) fn another_member(first: &MemberSpec, name: &str, ca: &DatabaseCa) -> Result<MemberSpec> {
    let server = ca.issue_server(&["127.0.0.1"])?;
    let tls = TlsBundle { ca_pem: ca.cert_pem().into(), cert_pem: server.cert_pem, key_pem: server.key_pem };
    Ok(MemberSpec { member: name.into(), pg_port: free_port()?, patroni_port: free_port()?, tls, ..first.clone() })
}

fn is_running(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(true))
        .unwrap_or(false)
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

pub(crate) async fn start_etcd(dir: PathBuf) -> Result<LocalEtcd> {
    tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_gateway_serves_the_tenant_over_tls_and_is_removed_cleanly() -> Result<()> {
    let tmp = TempDir::new("n");
    let etcd = start_etcd(tmp.0.join("etcd")).await?;
    let node = Node::new(tmp.0.join("node"))?;
    let _stop = StopOnDrop(&node);
    let db = DatabaseId::new();
    let ca = DatabaseCa::generate(&db.to_string())?;
    // Patroni reaches etcd as the database's own user, as the scheduler would make it.
    let etcd_root = pgplane_etcd::Client::new(&etcd.admin())?;
    let access = etcd_root.ensure_database_user(&db.to_string(), &secret()).await?;
    let spec = member_spec(db, 1, access, &ca)?;
    let gateway = gateway_spec(&spec, &ca)?;
    let ca_file = tmp.0.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let pw = &spec.secrets.app_password;
    let url = |sslmode: &str, root: &Path| {
        format!(
            "postgres://app_user:{pw}@127.0.0.1:{}/app_db?sslmode={sslmode}&sslrootcert={}&connect_timeout=5",
            gateway.listen_port,
            root.display()
        )
    };

    let t0 = Instant::now();
    let status = node.ensure_member(&spec).await?;
    let member_ready = t0.elapsed();
    assert!(status.started);
    assert!(matches!(status.role.as_str(), "master" | "primary"), "{status:?}");
    let haproxy_pid = node.ensure_gateway(&gateway).await?;
    let tls_url = url("verify-ca", &ca_file);
    eventually(&tls_url, "SELECT 1", "1", Duration::from_secs(30)).await;
    let first_query = t0.elapsed();
    eprintln!(
        "node timing: ensure_member (Patroni bootstrap to running leader + tenant role/db) {:.2} s; \
         first successful query through the gateway {:.2} s after ensure_member started",
        member_ready.as_secs_f64(),
        first_query.as_secs_f64()
    );

    let out = psql(
        &tls_url,
        "CREATE TABLE t(x int); INSERT INTO t VALUES (1), (2), (39); \
         SELECT sum(x) || ' ' || current_user || ' ' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) FROM t",
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(out, "42 app_user true");

    // force_tls: a connection without TLS is refused by pg_hba (through the gateway too).
    let err = psql(&url("disable", &ca_file), "SELECT 1").await.expect_err("plain TCP must be refused");
    assert!(err.contains("no encryption"), "{err}");
    // Another database's CA does not vouch for this server.
    let other = tmp.0.join("other-ca.pem");
    std::fs::write(&other, DatabaseCa::generate("other")?.cert_pem())?;
    let err = psql(&url("verify-ca", &other), "SELECT 1").await.expect_err("a foreign CA must fail");
    assert!(err.contains("certificate verify failed"), "{err}");
    // The tenant is no superuser.
    let err = psql(&tls_url, "CREATE ROLE intruder SUPERUSER").await.expect_err("no superuser");
    assert!(err.contains("must be superuser"), "{err}");

    // Patroni's REST API changes nothing for the unauthenticated.
    let rest = pgplane_agent::patroni::rest_client(ca.cert_pem())?;
    let config_url = format!("https://127.0.0.1:{}/config", spec.patroni_port);
    let patch = |auth: bool| {
        let req = rest.patch(&config_url).body(r#"{"loop_wait": 2}"#);
        if auth {
            req.basic_auth("patroni", Some(&spec.secrets.restapi_password))
        } else {
            req
        }
    };
    assert_eq!(patch(false).send().await?.status(), 401);
    assert_eq!(patch(true).send().await?.status(), 200);

    // Ensuring again changes nothing: same processes, same answers.
    let again = node.ensure_member(&spec).await?;
    assert_eq!(again.patroni_pid, status.patroni_pid);
    assert!(!again.started);
    assert_eq!(node.ensure_gateway(&gateway).await?, haproxy_pid);
    assert_eq!(psql(&tls_url, "SELECT count(*) FROM t").await.map_err(anyhow::Error::msg)?, "3");

    // A second member joins as a streaming replica (replication is hostssl, verify-ca) and has
    // the rows; the gateway, now given both, still routes to the primary only.
    let replica = another_member(&spec, "m2", &ca)?;
    let t1 = Instant::now();
    let joined = node.ensure_member(&replica).await?;
    eprintln!("node timing: replica cloned and running in {:.2} s", t1.elapsed().as_secs_f64());
    assert_eq!(joined.role, "replica");
    let replica_url = tls_url.replace(&format!(":{}/", gateway.listen_port), &format!(":{}/", replica.pg_port));
    eventually(&replica_url, "SELECT count(*) || ' ' || pg_is_in_recovery() FROM t", "3 true", Duration::from_secs(20))
        .await;
    let mut both = gateway.clone();
    both.backends.push(backend(&replica));
    let haproxy_pid = node.ensure_gateway(&both).await?;
    eventually(&tls_url, "SELECT pg_is_in_recovery()", "f", Duration::from_secs(20)).await;

    // A switchover drains the leader: no new connection goes to it, they wait in the gateway
    // (on its no-primary backup, retried every 100 ms) until a primary takes them; here, until
    // the drain is lifted.
    let gw_paths = pgplane_agent::haproxy::GatewayPaths::new(node.gateway_dir(db, &gateway.name));
    let state_of = |member: String| {
        let gw_paths = gw_paths.clone();
        async move {
            let states = pgplane_agent::haproxy::server_states(&gw_paths).await.unwrap_or_default();
            states.into_iter().find(|(m, _)| *m == member).map(|(_, s)| s).unwrap_or_default()
        }
    };
    assert_eq!(node.drain_member(db, 1, &spec.member, true, 60).await?, vec![gateway.name.clone()]);
    assert_eq!(state_of(spec.member.clone()).await, "DRAIN");
    let waiting = {
        let url = tls_url.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            (psql(&url, "SELECT count(*) FROM t").await, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    node.drain_member(db, 1, &spec.member, false, 0).await?;
    let (answer, waited) = waiting.await?;
    assert_eq!(answer.as_deref(), Ok("3"), "a client arriving during the drain waits, then is served");
    assert!(waited >= Duration::from_millis(500), "it was held while drained: {waited:?}");
    assert_eq!(state_of(spec.member.clone()).await, "UP");
    // A drain nobody lifts lapses by itself (the reconciler lifts it past its deadline).
    node.drain_member(db, 1, &spec.member, true, 1).await?;
    assert_eq!(state_of(spec.member.clone()).await, "DRAIN");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    node.reconcile().await;
    assert_eq!(state_of(spec.member.clone()).await, "UP");
    eventually(&tls_url, "SELECT count(*) FROM t", "3", Duration::from_secs(5)).await;

    let mut pids = node.pids(db).await;
    pids.push(postmaster(&node.member_dir(db, &spec.member)).context("the primary's postmaster")?);
    pids.push(postmaster(&node.member_dir(db, &replica.member)).context("the replica's postmaster")?);
    assert!(pids.contains(&haproxy_pid) && pids.len() == 5, "{pids:?}");
    assert!(pids.iter().all(|&p| is_running(p)), "{pids:?}");

    node.remove_database(db, 1).await?;
    for pid in pids {
        assert!(!is_running(pid), "process {pid} survived remove_database");
    }
    for port in [spec.pg_port, spec.patroni_port, replica.pg_port, replica.patroni_port, gateway.listen_port] {
        assert!(port_is_free(port), "port {port} is still taken");
    }
    assert!(!node.database_dir(db).exists());
    node.remove_database(db, 1).await?;
    assert!(node.pids(db).await.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_node_refuses_jobs_older_than_the_generation_it_applied() -> Result<()> {
    let tmp = TempDir::new("n");
    let node = Node::new(tmp.0.join("node"))?;
    let db = DatabaseId::new();
    node.remove_database(db, 5).await?;
    // Nothing listens there: a refused job must not even try to start anything.
    let etcd = EtcdAccess {
        endpoints: vec!["127.0.0.1:1".into()],
        protocol: "http".into(),
        ca_pem: None,
        username: None,
        password: None,
    };
    let ca = DatabaseCa::generate("fence")?;
    let spec = member_spec(db, 4, etcd, &ca)?;
    let err = node.ensure_member(&spec).await.expect_err("generation 4 < 5");
    assert!(matches!(err, NodeError::StaleGeneration { requested: 4, applied: 5, .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("generation 4 is older than generation 5"), "{err}");
    let gateway = gateway_spec(&spec, &ca)?;
    assert!(matches!(node.ensure_gateway(&gateway).await, Err(NodeError::StaleGeneration { .. })));
    assert!(matches!(node.remove_database(db, 3).await, Err(NodeError::StaleGeneration { .. })));
    assert!(!node.database_dir(db).exists(), "a refused job writes nothing");
    node.remove_database(db, 5).await?;
    Ok(())
}
