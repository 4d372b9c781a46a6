//! kill -9 of `pgplane scheduler` or `pgplane agent` (the real binaries) at chosen moments of a
//! provision and of a delete: after a restart each operation completes exactly once (one Patroni
//! per member, one HAProxy per gateway, no duplicate job), and a delete leaves nothing behind.

mod support;

use std::time::{Duration, Instant};
use support::checks::{assert_deleted, assert_provisioned, ports_of};
use support::{procs, Plane};

#[derive(Debug, Clone, Copy)]
enum Victim {
    Scheduler,
    Agent,
}
use Victim::{Agent, Scheduler};

/// When to kill -9 whom, counted from the POST or DELETE.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// A run without a kill: it measures how long the operation takes.
    Never,
    /// At this fraction of the undisturbed run's duration.
    At(Victim, f64),
    /// As soon as the operation's agent job of this kind is running.
    WhenRunning(Victim, &'static str),
}
use Kill::{At, Never, WhenRunning};

/// Kills the victim when due and starts it again at once; returns when it did, after `t0`.
async fn kill_and_restart(plane: &mut Plane, kill: Kill, op: &str, undisturbed: Duration, t0: Instant) -> Duration {
    let victim = match kill {
        Never => return Duration::ZERO,
        At(victim, fraction) => {
            tokio::time::sleep_until((t0 + undisturbed.mul_f64(fraction)).into()).await;
            victim
        }
        WhenRunning(victim, kind) => {
            let sql = "SELECT count(*) FROM jobs WHERE operation_id = $1::uuid AND status = 'running' AND kind = $2";
            let deadline = t0 + Duration::from_secs(60);
            loop {
                let n: i64 = sqlx::query_scalar(sql).bind(op).bind(kind).fetch_one(&plane.pool).await.unwrap();
                if n > 0 {
                    break victim;
                }
                assert!(Instant::now() < deadline, "no {kind} job ran for {op}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let at = t0.elapsed();
    let proc = match victim {
        Scheduler => &mut plane.scheduler,
        Agent => &mut plane.agent,
    };
    proc.kill9();
    proc.start();
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_provision_and_delete_completes_exactly_once() {
    let mut plane = Plane::start(support::port_window(0)).await;
    let kills = [
        Never,
        At(Agent, 0.0),
        At(Scheduler, 0.1),
        At(Agent, 0.4),
        At(Scheduler, 0.7),
        WhenRunning(Agent, "ensure_gateway"),
    ];
    let mut undisturbed = Duration::ZERO;
    let mut databases = Vec::new();
    for (i, kill) in kills.into_iter().enumerate() {
        let t0 = Instant::now();
        let (db, op) = plane.create_database(&format!("db{i}")).await;
        let at = kill_and_restart(&mut plane, kill, &op, undisturbed, t0).await;
        plane.wait_done(&op, Duration::from_secs(90)).await;
        let took = t0.elapsed();
        let attempts = assert_provisioned(&plane, &db, &op).await;
        eprintln!("provision, kill {kill:?} at {at:?}: done after {took:?}, {attempts} job attempts");
        if matches!(kill, Never) {
            undisturbed = took;
        }
        databases.push(db);
    }
    let kills = [
        Never,
        At(Agent, 0.0),
        At(Scheduler, 0.05),
        WhenRunning(Agent, "remove_database"),
        At(Agent, 0.6),
        At(Scheduler, 0.9),
    ];
    for (db, kill) in databases.iter().zip(kills) {
        let ports = ports_of(&plane, db).await;
        let t0 = Instant::now();
        let op = plane.delete_database(db).await;
        let at = kill_and_restart(&mut plane, kill, &op, undisturbed, t0).await;
        plane.wait_done(&op, Duration::from_secs(90)).await;
        let took = t0.elapsed();
        let attempts = assert_deleted(&plane, db, &ports, &op).await;
        eprintln!("delete, kill {kill:?} at {at:?}: done after {took:?}, {attempts} job attempts");
        if matches!(kill, Never) {
            undisturbed = took;
        }
    }
    let agent = plane.agent.pid();
    let left: Vec<u32> = procs::naming(&plane.root).into_iter().filter(|&p| p != agent).collect();
    assert!(left.is_empty(), "nothing of the databases runs any more: {left:?}");
}
