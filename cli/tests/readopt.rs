//! kill -9 of `pgplane agent` (the real binary) while its database is healthy: the database keeps
//! answering, the restarted agent re-adopts Patroni and HAProxy without restarting PostgreSQL, and
//! it starts again what crashes afterwards (adopted processes are watched by polling).

mod support;

use pgplane_tests::data_plane::{eventually, psql};
use std::time::{Duration, Instant};
use support::checks::{assert_deleted, ports_of};
use support::{procs, Plane};

/// The pids of a Starter database's Patroni, postmaster and HAProxy.
fn data_plane(plane: &Plane, db: &str) -> (u32, u32, u32) {
    let member = plane.database_dir(db).join("member-m0");
    let patroni = procs::running_exactly(&member.join("patroni.yml"));
    let haproxy = procs::running_exactly(&plane.database_dir(db).join("gateway-g0/haproxy.cfg"));
    assert!(patroni.len() == 1 && haproxy.len() == 1, "one Patroni {patroni:?}, one HAProxy {haproxy:?}");
    let postmaster = procs::postmaster(&member.join("data")).expect("postmaster.pid");
    assert!(procs::alive(postmaster));
    (patroni[0], postmaster, haproxy[0])
}

/// Waits until the process running `config` is another one than `old`, and stays (a passing
/// `haproxy -c` names the configuration too); returns its pid.
async fn replaced(config: &std::path::Path, old: u32, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    let mut seen = None;
    loop {
        let now = match procs::running_exactly(config)[..] {
            [new] if new != old => Some(new),
            _ => None,
        };
        if let Some(new) = now.filter(|&new| seen == Some(new)) {
            return new;
        }
        seen = now;
        assert!(Instant::now() < deadline, "nothing replaced {old} running {}", config.display());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_healthy_re_adopts_without_restarting_postgres() {
    let mut plane = Plane::start(support::port_window(1)).await;
    let (db, op) = plane.create_database("steady").await;
    plane.wait_done(&op, Duration::from_secs(90)).await;
    let url = plane.url(&db).await;
    eventually(&url, "CREATE TABLE t AS SELECT 42 AS x; SELECT x FROM t", "42", Duration::from_secs(10)).await;
    let before = data_plane(&plane, &db);

    // The agent dies; the database keeps answering while no agent runs.
    plane.agent.kill9();
    for _ in 0..5 {
        assert_eq!(psql(&url, "SELECT x FROM t").await.as_deref(), Ok("42"), "the database answers without its agent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let passes = plane.agent_log_matching("first reconcile pass done").len();
    let t0 = Instant::now();
    plane.agent.start();
    let adopted = loop {
        if let Some(line) = plane.agent_log_matching("first reconcile pass done").get(passes) {
            break line.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the restarted agent did not reconcile");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let pass = adopted.split_once("pass=").map_or(adopted.as_str(), |(_, p)| p);
    eprintln!("agent start → running processes re-adopted: {:?} ({pass})", t0.elapsed());
    assert!(adopted.contains("adopted: 2") && adopted.contains("started: 0"), "{adopted}");
    assert_eq!(psql(&url, "SELECT x FROM t").await.as_deref(), Ok("42"));
    // A pass of the reconciler later, still the very same processes: nothing was restarted.
    tokio::time::sleep(pgplane_agent::lifecycle::RECONCILE_EVERY + Duration::from_millis(500)).await;
    assert_eq!(data_plane(&plane, &db), before, "(Patroni, postmaster, HAProxy) after the agent's restart");
    eventually(&url, "SELECT x FROM t", "42", Duration::from_secs(1)).await;

    // What crashes is started again by the restarted agent, which only adopted it (polling).
    let dir = plane.database_dir(&db);
    let t1 = Instant::now();
    procs::kill9(before.2);
    let haproxy = replaced(&dir.join("gateway-g0/haproxy.cfg"), before.2, Duration::from_secs(10)).await;
    eventually(&url, "SELECT x FROM t", "42", Duration::from_secs(10)).await;
    eprintln!("HAProxy killed → replaced and answering: {:?}", t1.elapsed());
    let t2 = Instant::now();
    procs::kill9(before.0);
    let patroni = replaced(&dir.join("member-m0/patroni.yml"), before.0, Duration::from_secs(10)).await;
    eventually(&url, "SELECT x FROM t", "42", Duration::from_secs(30)).await;
    eprintln!("Patroni killed → replaced and answering: {:?}", t2.elapsed());
    assert_eq!(data_plane(&plane, &db), (patroni, before.1, haproxy), "the new Patroni kept the same PostgreSQL");

    let ports = ports_of(&plane, &db).await;
    let op = plane.delete_database(&db).await;
    plane.wait_done(&op, Duration::from_secs(60)).await;
    assert_deleted(&plane, &db, &ports, &op).await;
}
