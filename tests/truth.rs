//! The control plane's view from the source of truth, with the real scheduler and a real etcd
//! (`LocalEtcd`), fake agents that speak the real protocol and claim whatever a stale Patroni
//! would, and leader keys written straight into etcd as Patroni would: roles follow the key, one
//! event per change of holder (a fail-back included) however the agents flap, a silent agent's
//! member turns `unknown`, and a replica whose history forked is shown diverged, never
//! synchronous, and re-cloned once.

use pgplane_agent::LocalEtcd;
use pgplane_core::agent::{AgentJob, AgentTask};
use pgplane_etcd::Client as Etcd;
use pgplane_tests::{register_fake_agent, spawn_app, Client};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake agent: long-polls and records every task (answering success), and heartbeats every
/// 300 ms with what `claims` holds, until `silent` is set.
struct FakeAgent {
    tasks: Arc<Mutex<Vec<AgentTask>>>,
    claims: Arc<Mutex<Vec<Value>>>,
    silent: Arc<Mutex<bool>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

async fn fake_agent(agent_api: &str, name: &str) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = register_fake_agent(&http, agent_api, name, "127.0.0.1").await;
    let tasks: Arc<Mutex<Vec<AgentTask>>> = Arc::default();
    let (claims, silent) = (Arc::<Mutex<Vec<Value>>>::default(), Arc::new(Mutex::new(false)));
    let (seen, base, cred, h) = (Arc::clone(&tasks), agent_api.to_string(), credential.clone(), http.clone());
    let jobs = tokio::spawn(async move {
        loop {
            let res = h.get(format!("{base}/agent/v1/jobs?wait_secs=5")).bearer_auth(&cred).send().await.unwrap();
            if res.status() == StatusCode::NO_CONTENT {
                continue;
            }
            let job: AgentJob = res.json().await.unwrap();
            seen.lock().unwrap().push(job.task.clone());
            let report = json!({ "lease_id": job.lease_id, "outcome": "succeeded", "result": {} });
            h.post(format!("{base}/agent/v1/jobs/{}/report", job.job_id))
                .bearer_auth(&cred)
                .json(&report)
                .send()
                .await
                .unwrap();
        }
    });
    let (said, quiet, base) = (Arc::clone(&claims), Arc::clone(&silent), agent_api.to_string());
    let beats = tokio::spawn(async move {
        loop {
            let members = said.lock().unwrap().clone();
            if !*quiet.lock().unwrap() && !members.is_empty() {
                let body = json!({ "observed": { "members": members } });
                http.post(format!("{base}/agent/v1/heartbeat"))
                    .bearer_auth(&credential)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    FakeAgent { tasks, claims, silent, handles: vec![jobs, beats] }
}

impl FakeAgent {
    fn member(&self) -> String {
        self.tasks
            .lock()
            .unwrap()
            .iter()
            .find_map(|t| match t {
                AgentTask::EnsureMember { spec } => Some(spec.member.clone()),
                _ => None,
            })
            .expect("a member")
    }

    /// What this agent claims of its member from now on, as a stale Patroni would.
    fn claim(&self, db: &str, role: &str, state: &str, streaming: &[&str]) {
        *self.claims.lock().unwrap() = vec![json!({
            "database_id": db, "member": self.member(), "role": role, "state": state, "timeline": 1,
            "lag_bytes": 0, "synchronous": role == "replica", "streaming_replicas": streaming
        })];
    }
}

/// Waits until `check` holds of the members, or fails with what they are.
async fn members_until(owner: &Client, db: &str, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, members) = owner.get(&format!("/v1/databases/{db}/members")).await;
        let items = members["items"].as_array().cloned().unwrap_or_default();
        if check(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "{what}: members are {members}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn field<'a>(items: &'a [Value], name: &str, key: &str) -> &'a str {
    items.iter().find(|m| m["name"] == name).and_then(|m| m[key].as_str()).unwrap_or("")
}

/// The leadership events, oldest first, as (kind, from, to).
async fn leadership(owner: &Client, db: &str) -> Vec<(String, String, String)> {
    let (_, events) = owner.get(&format!("/v1/databases/{db}/events")).await;
    let mut out: Vec<(String, String, String)> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| matches!(e["kind"].as_str(), Some("failover" | "switchover")))
        .map(|e| {
            let s = |k: &str| e["detail"][k].as_str().unwrap_or_default().to_string();
            (e["kind"].as_str().unwrap_or_default().to_string(), s("from"), s("to"))
        })
        .collect();
    out.reverse();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_leadership_events_come_from_the_leader_key() {
    let tmp = TempDir(std::env::temp_dir().join(format!("pgtruth-{}", uuid::Uuid::new_v4().simple())));
    let dir = tmp.0.clone();
    let etcd = tokio::task::spawn_blocking(move || LocalEtcd::start(&dir)).await.unwrap().unwrap();
    let root = Etcd::new(&etcd.admin()).unwrap();
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(etcd.admin()).await;
    let (a, b) = (fake_agent(&agent_api, "host-a").await, fake_agent(&agent_api, "host-b").await);
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "ha", "plan": "business-2" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(&owner, op["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "done", "{done}");
    let db = op["database_id"].as_str().unwrap().to_string();
    let (a, b) = if a.member() == "m0" { (a, b) } else { (b, a) };
    let key = |k: &str| format!("/service/{db}/{k}");

    // Both agents claim to lead, from their own stale views; etcd says m0 does.
    a.claim(&db, "leader", "running", &["m1"]);
    b.claim(&db, "leader", "running", &[]);
    root.put(&key("leader"), b"m0").await.unwrap();
    let items = members_until(&owner, &db, "m0 leads", |m| {
        field(m, "m0", "role") == "leader" && field(m, "m1", "role") == "replica"
    })
    .await;
    assert_eq!(field(&items, "m1", "state"), "running", "{items:?}");
    assert!(leadership(&owner, &db).await.is_empty(), "the first holder seen is no change");

    // The key moves to m1 while both agents keep flapping their claims: one failover.
    root.put(&key("leader"), b"m1").await.unwrap();
    for round in 0..6 {
        let (x, y) = if round % 2 == 0 { ("leader", "replica") } else { ("replica", "leader") };
        a.claim(&db, x, "running", &["m1"]);
        b.claim(&db, y, "running", &[]);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    members_until(&owner, &db, "m1 leads", |m| {
        field(m, "m1", "role") == "leader" && field(m, "m0", "role") == "replica"
    })
    .await;
    assert_eq!(leadership(&owner, &db).await, vec![("failover".into(), "m0".into(), "m1".into())]);

    // The key lapses and m1 takes it again: no change. Then the fail-back to m0: one more.
    root.delete_prefix(&key("leader")).await.unwrap();
    members_until(&owner, &db, "no leader", |m| m.iter().all(|m| m["role"] != "leader")).await;
    root.put(&key("leader"), b"m1").await.unwrap();
    members_until(&owner, &db, "m1 leads again", |m| field(m, "m1", "role") == "leader").await;
    root.put(&key("leader"), b"m0").await.unwrap();
    members_until(&owner, &db, "m0 leads after the fail-back", |m| field(m, "m0", "role") == "leader").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        leadership(&owner, &db).await,
        vec![("failover".into(), "m0".into(), "m1".into()), ("failover".into(), "m1".into(), "m0".into())]
    );

    // m1's agent falls silent: m1 turns unknown (and no longer synchronous), m0 stays the leader.
    *b.silent.lock().unwrap() = true;
    let items = members_until(&owner, &db, "m1 unknown", |m| field(m, "m1", "role") == "unknown").await;
    assert_eq!(field(&items, "m1", "state"), "unknown", "{items:?}");
    assert_eq!(items.iter().find(|m| m["name"] == "m1").unwrap()["synchronous"], false);
    assert_eq!(field(&items, "m0", "role"), "leader");
    *b.silent.lock().unwrap() = false;

    // m1 forked: it sits on timeline 2 past the point where m0's history left timeline 2, while
    // etcd still names it the synchronous standby and m0's WAL senders stream to it.
    a.claim(&db, "leader", "running", &["m1"]);
    b.claim(&db, "replica", "running", &[]);
    root.put(&key("sync"), br#"{"leader":"m0","sync_standby":"m1"}"#).await.unwrap();
    root.put(
        &key("history"),
        br#"[[1,16777216,"no recovery target specified"],[2,50331648,"no recovery target specified"]]"#,
    )
    .await
    .unwrap();
    root.put(&key("members/m0"), br#"{"role":"master","state":"running","timeline":3,"xlog_location":67108864}"#)
        .await
        .unwrap();
    root.put(&key("members/m1"), br#"{"role":"replica","state":"running","timeline":2,"xlog_location":50400000}"#)
        .await
        .unwrap();
    let items = members_until(&owner, &db, "m1 diverged", |m| field(m, "m1", "state") == "diverged").await;
    assert_eq!(items.iter().find(|m| m["name"] == "m1").unwrap()["synchronous"], false, "{items:?}");
    let reinits = |agent: &FakeAgent| {
        agent.tasks.lock().unwrap().iter().filter(|t| matches!(t, AgentTask::ReinitMember { .. })).count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reinits(&b) == 0 {
        assert!(Instant::now() < deadline, "no re-clone asked of m1's agent");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once per detection: still diverged a few readings later, no second request.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((reinits(&a), reinits(&b)), (0, 1));
    let task = b.tasks.lock().unwrap().iter().find(|t| matches!(t, AgentTask::ReinitMember { .. })).cloned().unwrap();
    let AgentTask::ReinitMember { member, generation, .. } = task else { unreachable!() };
    assert_eq!(member, "m1");
    assert!(generation >= 1);
    let (_, events) = owner.get(&format!("/v1/databases/{db}/events")).await;
    let reinit: Vec<&Value> =
        events["items"].as_array().unwrap().iter().filter(|e| e["kind"] == "reinitialize").collect();
    assert_eq!(reinit.len(), 1, "{events}");
    assert_eq!(reinit[0]["detail"]["member"], "m1");
    assert_eq!(leadership(&owner, &db).await.len(), 2, "no leadership change on the way");
}
