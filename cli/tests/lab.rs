//! The partition lab, each scenario once, one after another on one Business database with
//! synchronous replication, a three-member etcd cluster (one member per host) and writers through
//! the database's VIP: the leader's host partitioned, cut from the other hosts only (the
//! follower and two of etcd's three members), the follower's host partitioned, the leader's host
//! lost and brought back, the VIP's host lost and brought back, a slow link to the leader. After
//! each: no acknowledged write lost, no two members acknowledging writes at once, the cut-off
//! member a replica again, the API naming Patroni's leader; a lost VIP host's VIP moved. Needs root (network namespaces); skipped
//! otherwise.
//! `PGPLANE_LAB_PATRONI` picks the agents' Patroni; `PGPLANE_LAB_HOLD_SECONDS` each fault's length (15 s).

use pgplane_lab::{Options, Programs, Scenario};
use std::time::Duration;

#[test]
fn lab_partitions_lose_no_acknowledged_write() {
    if !pgplane_lab::is_root() {
        eprintln!("skipped: the partition lab needs root (network namespaces, nftables)");
        return;
    }
    let hold = std::env::var("PGPLANE_LAB_HOLD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let options = Options {
        programs: Programs::new(env!("CARGO_BIN_EXE_pgplane")),
        scenarios: Scenario::ALL.to_vec(),
        repeats: 1,
        hold: Duration::from_secs(hold),
        write_timeout: pgplane_lab::writer::WRITE_TIMEOUT,
        synchronous: true,
        keep_logs: std::env::var_os("PGPLANE_TEST_LOGS").is_some(),
    };
    let reports = pgplane_lab::run(options, |r| eprintln!("{r:?}")).expect("the lab's scenarios ran");
    for r in &reports {
        assert_eq!(r.lost_acked, 0, "{}: acknowledged writes lost: {r:?}", r.scenario.name());
        assert_eq!(r.acked_by_two_leaders, 0, "{}: two members acknowledged writes: {r:?}", r.scenario.name());
        assert!(r.old_leader_rejoined, "{}: the cut-off member is no replica again: {r:?}", r.scenario.name());
        assert!(r.api_agrees, "{}: the API's leader is not Patroni's: {r:?}", r.scenario.name());
        if r.scenario == Scenario::GatewayLost {
            assert_ne!(r.vip_before, r.vip_after, "the VIP stayed on the lost host: {r:?}");
        }
    }
}
