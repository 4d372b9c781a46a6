//! The scenarios: a fault on the Business database's leader, follower or VIP host under writes
//! through the database's connection URL (its virtual IP, which keepalived moves between the
//! gateway hosts), then healing, then the checks: every acknowledged id is on the leader, no two
//! members acknowledged writes at once, the old leader is a replica again. Each run yields a
//! `RunReport` (write gap, failed writes, lost acknowledged writes, time until whole again, where
//! the VIP was before and after).

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::net::Net;
use crate::plane::Plane;
use crate::writer::{longest_gap, psql, Writers};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The leader's host cut off entirely (nftables drop of everything but loopback).
    LeaderPartitioned,
    /// The leader's host cut off from the other hosts (the follower and the other two etcd
    /// members), still reachable by clients and the control plane.
    LeaderCutFromEtcdAndFollower,
    /// The follower's host cut off entirely.
    FollowerPartitioned,
    /// The leader's host lost (every process killed -9, its etcd member too; link down, addresses
    /// gone), then back: its etcd member and agent started again.
    LeaderLost,
    /// The host that carries the database's VIP lost, then back, as `LeaderLost`: keepalived on
    /// the other gateway host takes the VIP over.
    GatewayLost,
    /// 200 ms delay and 5% loss on the leader's link.
    SlowLink,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::LeaderPartitioned,
        Scenario::LeaderCutFromEtcdAndFollower,
        Scenario::FollowerPartitioned,
        Scenario::LeaderLost,
        Scenario::GatewayLost,
        Scenario::SlowLink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderPartitioned => "leader-partitioned",
            Scenario::LeaderCutFromEtcdAndFollower => "leader-cut-from-etcd-and-follower",
            Scenario::FollowerPartitioned => "follower-partitioned",
            Scenario::LeaderLost => "leader-lost",
            Scenario::GatewayLost => "gateway-lost",
            Scenario::SlowLink => "slow-link",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What one run of a scenario measured.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub scenario: Scenario,
    /// Synchronous replication was on.
    pub synchronous: bool,
    /// The longest time without an acknowledged write through the VIP, from the fault until
    /// whole again.
    pub write_gap: Duration,
    pub attempts: usize,
    pub failed_writes: usize,
    /// Acknowledged ids missing from the leader once whole again.
    pub lost_acked: usize,
    /// Writes acknowledged by another member after the final leader had started acknowledging.
    pub acked_by_two_leaders: usize,
    /// From healing (or the lost host's agent starting again) until one leader, one streaming
    /// replica and a write through every gateway.
    pub until_whole: Duration,
    /// The old leader (or the partitioned follower) is a replica of the leader again.
    pub old_leader_rejoined: bool,
    pub leader_changed: bool,
    /// The API's members name the same leader as Patroni once whole.
    pub api_agrees: bool,
    /// Who acknowledged the writes, in order: (member address, consecutive acks).
    pub ack_runs: Vec<(String, usize)>,
    /// For the slow link: what was applied.
    pub link: String,
    /// The host that carried the VIP before the fault and once whole again.
    pub vip_before: String,
    pub vip_after: String,
}

/// The Business database the scenarios act on.
pub struct Database {
    pub id: String,
    pub synchronous: bool,
    /// Its virtual IP (the connection URL's host).
    pub vip: String,
    /// The connection URL as the API gives it (the VIP, `verify-full`), with the CA's file.
    pub url: String,
    /// A psql URL through each gateway's own address (TLS checked against the database's CA).
    pub gateway_urls: Vec<String>,
    next_id: i64,
}

impl Database {
    /// Creates a Business database with synchronous replication on or off (as a tenant sets it)
    /// and the writers' table. Its gateways must carry a VIP.
    pub async fn create(plane: &Plane, dir: &Path, synchronous: bool) -> Result<Database> {
        let api = &plane.api;
        let tenant = api.ok(Method::POST, "/v1/tenants", Some(json!({ "name": "Lab" }))).await?;
        let tenant = tenant["id"].as_str().context("tenant id")?;
        let app = api.ok(Method::POST, &format!("/v1/tenants/{tenant}/apps"), Some(json!({ "name": "lab" }))).await?;
        let app = app["id"].as_str().context("app id")?;
        let body = json!({ "name": "lab", "plan": "business-1" });
        let op = api.ok(Method::POST, &format!("/v1/apps/{app}/databases"), Some(body)).await?;
        let id = op["database_id"].as_str().context("database id")?.to_string();
        api.wait_done(&op, Duration::from_secs(180)).await?;
        let patch = json!({ "synchronous_replication": synchronous });
        let op = api.ok(Method::PATCH, &format!("/v1/databases/{id}/configuration"), Some(patch)).await?;
        if op.get("id").is_some() && op.get("status").is_some() {
            api.wait_done(&op, Duration::from_secs(120)).await?;
        }
        let conn = api.ok(Method::GET, &format!("/v1/databases/{id}/connection"), None).await?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, conn["ca_pem"].as_str().context("ca_pem")?)?;
        let url = conn["url"].as_str().context("url")?.to_string();
        let (host, port) = (conn["host"].as_str().context("host")?, conn["port"].as_i64().context("port")?);
        let gateways: Vec<(String, i32)> =
            sqlx::query_as("SELECT host, port FROM database_gateways WHERE database_id = $1::uuid ORDER BY name")
                .bind(&id)
                .fetch_all(&plane.pool)
                .await?;
        if gateways.iter().any(|(h, _)| h == host) {
            bail!("the connection URL names a gateway host ({host}), not a VIP: gateways {gateways:?}");
        }
        let gateway_urls = gateways
            .iter()
            .map(|(h, p)| {
                url.replace(&format!("@{host}:{port}/"), &format!("@{h}:{p}/"))
                    .replace("sslmode=verify-full", &format!("sslmode=verify-ca&sslrootcert={}", ca.display()))
            })
            .collect::<Vec<_>>();
        if gateway_urls.is_empty() {
            bail!("the database has no gateways");
        }
        if !url.contains("sslmode=verify-full") {
            bail!("the connection URL does not ask for verify-full: {url}");
        }
        // verify-full: the database's certificate must name the VIP.
        let vip_url = url.replace("sslmode=verify-full", &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match psql(&vip_url, "CREATE TABLE lab (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => bail!("creating the writers' table through the VIP {host}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        Ok(Database { id, synchronous, vip: host.to_string(), url: vip_url, gateway_urls, next_id: 1 })
    }

    /// Patroni's own view: `GET /cluster` on the first member that answers.
    async fn cluster(&self, plane: &Plane) -> Result<Vec<ClusterMember>> {
        let rest: Vec<(String, i32)> = sqlx::query_as(
            "SELECT host, patroni_port FROM database_members WHERE database_id = $1::uuid ORDER BY name",
        )
        .bind(&self.id)
        .fetch_all(&plane.pool)
        .await?;
        let http =
            reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(2)).build()?;
        for (host, port) in rest {
            let Ok(res) = http.get(format!("https://{host}:{port}/cluster")).send().await else { continue };
            let Ok(body) = res.json::<Value>().await else { continue };
            let members = body["members"].as_array().cloned().unwrap_or_default();
            return Ok(members
                .iter()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                    ClusterMember {
                        host: s("host"),
                        role: s("role"),
                        state: s("state"),
                        lag: m["lag"].as_i64(),
                        timeline: m["timeline"].as_i64(),
                    }
                })
                .collect());
        }
        bail!("no member's Patroni answered")
    }

    /// (leader host, other member hosts) by Patroni, once the database is whole.
    async fn roles(&self, plane: &Plane) -> Result<(String, String)> {
        let members = self.cluster(plane).await?;
        let leader = members.iter().find(|m| m.role == "leader").context("a leader")?.host.clone();
        let follower = members.iter().find(|m| m.role != "leader").context("a replica")?.host.clone();
        Ok((leader, follower))
    }

    /// Waits until Patroni shows one running leader and replicas without lag on its timeline
    /// (`streaming`; Patroni 3.0 says `running`), one host carries the VIP, and the VIP and every
    /// gateway take a write on that leader; returns the leader's host address.
    async fn wait_whole(&self, plane: &Plane, net: &Net, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        let mut last_served = String::new();
        loop {
            let members = self.cluster(plane).await.unwrap_or_default();
            let leaders: Vec<_> = members.iter().filter(|m| m.role == "leader" && m.state == "running").collect();
            let replicas = members
                .iter()
                .filter(|m| {
                    m.role != "leader"
                        && matches!(m.state.as_str(), "streaming" | "running")
                        && m.lag == Some(0)
                        && m.timeline == leaders.first().and_then(|l| l.timeline)
                })
                .count();
            let vip_placed = self.vip_host(net).is_some();
            if leaders.len() == 1 && members.len() > 1 && replicas == members.len() - 1 && vip_placed {
                let mut served = Vec::new();
                for url in std::iter::once(&self.url).chain(&self.gateway_urls) {
                    served.push(psql(url, "SELECT host(inet_server_addr()) || ' ' || pg_is_in_recovery()").await);
                }
                last_served = format!("{served:?}");
                if served.iter().all(|s| s.as_deref() == Ok(format!("{} false", leaders[0].host).as_str())) {
                    return Ok(leaders[0].host.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not whole again within {within:?}: Patroni shows {members:?}, the VIP on one host {vip_placed}, \
                     the VIP and the gateways {last_served}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The host whose interface carries the VIP now (exactly one, or none).
    pub fn vip_host(&self, net: &Net) -> Option<String> {
        let holders: Vec<&str> =
            net.hosts.iter().filter(|h| h.has_address(&self.vip)).map(|h| h.addr.as_str()).collect();
        match holders[..] {
            [one] => Some(one.to_string()),
            _ => None,
        }
    }

    /// Whether the API's members agree with Patroni on who leads, within a few of the
    /// scheduler's etcd readings (one a second) of the database being whole.
    async fn api_agrees(&self, plane: &Plane, leader: &str) -> bool {
        let mut last = Ok(false);
        for _ in 0..10 {
            last = self.api_agrees_now(plane, leader).await;
            if matches!(last, Ok(true)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Err(e) = last {
            // Not a disagreement, but no answer: say so rather than read it as one.
            eprintln!("the API's members could not be read: {e:#}");
        }
        false
    }

    async fn api_agrees_now(&self, plane: &Plane, leader: &str) -> Result<bool> {
        let list = plane.api.ok(Method::GET, &format!("/v1/databases/{}/members", self.id), None).await?;
        let hosts: Vec<(String, String)> =
            sqlx::query_as("SELECT name, host FROM database_members WHERE database_id = $1::uuid")
                .bind(&self.id)
                .fetch_all(&plane.pool)
                .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let leaders: Vec<String> = items
            .iter()
            .filter(|m| m["role"] == "leader")
            .filter_map(|m| hosts.iter().find(|(n, _)| m["name"] == n.as_str()).map(|(_, h)| h.clone()))
            .collect();
        Ok(leaders == [leader.to_string()])
    }
}

/// One member as Patroni's `/cluster` lists it.
#[derive(Debug)]
struct ClusterMember {
    host: String,
    /// `leader`, `replica` or `sync_standby`.
    role: String,
    state: String,
    /// Bytes behind the leader (absent for the leader, or when unknown).
    lag: Option<i64>,
    timeline: Option<i64>,
}

/// Runs one scenario on a whole database: fault for `hold`, heal, wait until whole, check.
pub async fn run(
    scenario: Scenario,
    net: &Net,
    plane: &mut Plane,
    db: &mut Database,
    hold: Duration,
    write_timeout: Duration,
) -> Result<RunReport> {
    db.wait_whole(plane, net, Duration::from_secs(120)).await.context("whole before the fault")?;
    let (leader_addr, follower_addr) = db.roles(plane).await?;
    let leader = net.host(&leader_addr).context("the leader's host")?.clone();
    let follower = net.host(&follower_addr).context("the follower's host")?.clone();
    let vip_before = db.vip_host(net).context("no host carries the VIP before the fault")?;
    // Two clients, both through the connection URL (the VIP).
    let writers = Writers::start(&[db.url.clone(), db.url.clone()], db.next_id, write_timeout);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault_at = Instant::now();
    let mut link = String::new();
    let others: Vec<&str> = net.hosts.iter().filter(|h| h.addr != leader.addr).map(|h| h.addr.as_str()).collect();
    // The host the fault hits (the one that must rejoin).
    let cut = match scenario {
        Scenario::FollowerPartitioned => follower.clone(),
        Scenario::GatewayLost => net.host(&vip_before).context("the VIP's host")?.clone(),
        _ => leader.clone(),
    };
    let cut_index = net.hosts.iter().position(|h| h.addr == cut.addr).unwrap();
    match scenario {
        Scenario::LeaderPartitioned | Scenario::FollowerPartitioned => cut.partition_all()?,
        Scenario::LeaderCutFromEtcdAndFollower => cut.partition_from(&others)?,
        Scenario::LeaderLost | Scenario::GatewayLost => {
            cut.lose()?;
        }
        Scenario::SlowLink => {
            link = cut.slow_link(200, 5)?;
        }
    }
    tokio::time::sleep(hold).await;
    match scenario {
        Scenario::LeaderLost | Scenario::GatewayLost => {
            cut.come_back()?;
            plane.restart_host(cut_index)?;
        }
        Scenario::SlowLink => cut.fast_link(),
        _ => cut.heal(),
    }
    let healed_at = Instant::now();
    let whole = db.wait_whole(plane, net, Duration::from_secs(180)).await;
    let until_whole = healed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = writers.stop().await;
    db.next_id = attempts.iter().map(|a| a.id).max().unwrap_or(0) + 100;
    let new_leader = whole?;
    let acked: Vec<_> = attempts.iter().filter(|a| a.acked_by.is_some()).collect();
    let present: HashSet<i64> = psql(&db.url, "SELECT id FROM lab")
        .await
        .map_err(|e| anyhow::anyhow!("reading back: {e}"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost_acked = acked.iter().filter(|a| !present.contains(&a.id)).count();
    // Who acknowledged, in order: runs of (member, acks).
    let mut ack_runs: Vec<(String, usize)> = Vec::new();
    for a in &acked {
        let by = a.acked_by.clone().unwrap_or_default();
        match ack_runs.last_mut() {
            Some((m, n)) if *m == by => *n += 1,
            _ => ack_runs.push((by, 1)),
        }
    }
    // Two members accepting writes: a write acknowledged by X that started after another member
    // Y had acknowledged one that started after X's first acknowledgement (X, then Y, then X
    // again, each strictly after the other; in-flight overlaps at a handover do not count).
    let first_end = |m: &Option<String>| acked.iter().filter(|c| c.acked_by == *m).map(|c| c.end).min();
    let acked_by_two_leaders = acked
        .iter()
        .filter(|a| {
            let Some(x_first) = first_end(&a.acked_by) else { return false };
            acked.iter().any(|b| b.acked_by != a.acked_by && b.start > x_first && b.end < a.start)
        })
        .count();
    // The member that was cut off (or lost) is a streaming replica of the leader again, or leads
    // (a host without a member of the database has nothing to rejoin).
    let members = db.cluster(plane).await?;
    let cut = &cut.addr;
    let old_leader_rejoined = new_leader == *cut
        || !members.iter().any(|m| m.host == *cut)
        || members
            .iter()
            .any(|m| m.host == *cut && m.role != "leader" && matches!(m.state.as_str(), "streaming" | "running"));
    let vip_after = db.vip_host(net).unwrap_or_default();
    let api_agrees = db.api_agrees(plane, &new_leader).await;
    Ok(RunReport {
        scenario,
        synchronous: db.synchronous,
        write_gap: longest_gap(&attempts, fault_at),
        attempts: attempts.len(),
        failed_writes: attempts.len() - acked.len(),
        lost_acked,
        acked_by_two_leaders,
        until_whole,
        old_leader_rejoined,
        leader_changed: new_leader != leader.addr,
        api_agrees,
        ack_runs,
        link,
        vip_before,
        vip_after,
    })
}
