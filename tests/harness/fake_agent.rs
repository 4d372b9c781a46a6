//! Fake agents for the engine's tests: they register, long-poll and report over the real
//! agent protocol, and can replay (restart on each job, report twice), lose their host on a
//! task kind (no report, no poll, no heartbeat again) or stall on one while staying alive.
//! `Lab` is a scheduler with an owner and an app to order databases in.

use crate::{register_fake_agent, spawn_app, unused_etcd, Client, TestApp, AGENT_BOOTSTRAP_TOKEN};
use pgplane_core::agent::AgentTask;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a fake agent treats its jobs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Runs each job and reports it once.
    Succeed,
    /// Restarts on the first delivery of each job (registers again: the job goes back to the
    /// queue and comes again), then reports the second delivery twice (the second report must
    /// be refused and change nothing).
    Replay,
}

/// A fake agent; `lose_on` names a task kind on which its host is lost: it takes that job and
/// is never heard from again (no report, no poll, no heartbeat).
pub struct FakeAgent {
    /// (job id, attempt, task) of every delivery.
    pub seen: Arc<Mutex<Vec<(String, i32, AgentTask)>>>,
    pub lose_on: Arc<Mutex<Option<&'static str>>>,
    /// A task kind this agent takes and never finishes, while it stays alive (polls go on).
    pub stall_on: Arc<Mutex<Option<&'static str>>>,
    pub credential: Arc<Mutex<String>>,
    /// Problems met on the agent's side (a report answered otherwise than expected).
    pub problems: Arc<Mutex<Vec<String>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

pub fn kind_of(task: &AgentTask) -> String {
    serde_json::to_value(task).unwrap()["kind"].as_str().unwrap().to_string()
}

pub async fn fake_agent(agent_api: &str, name: &str, mode: Mode) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = register_fake_agent(&http, agent_api, name, "127.0.0.1").await;
    fake_agent_registered(agent_api, name, mode, credential)
}

/// A fake agent whose host has `memory_mb` of memory.
pub async fn fake_agent_sized(agent_api: &str, name: &str, memory_mb: i64) -> FakeAgent {
    let registered: pgplane_core::agent::Registered = reqwest::Client::new()
        .post(format!("{agent_api}/agent/v1/register"))
        .json(&json!({
            "bootstrap_token": AGENT_BOOTSTRAP_TOKEN, "name": name, "host": "127.0.0.1",
            "memory_mb": memory_mb, "disk_gb": 500, "port_min": 20000, "port_max": 20100
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fake_agent_registered(agent_api, name, Mode::Succeed, registered.credential)
}

pub fn fake_agent_registered(agent_api: &str, name: &str, mode: Mode, credential: String) -> FakeAgent {
    let http = reqwest::Client::new();
    let credential = Arc::new(Mutex::new(credential));
    let (seen, lose_on, problems) = (Arc::default(), Arc::new(Mutex::new(None)), Arc::default());
    let stall_on = Arc::new(Mutex::new(None));
    let agent = FakeAgent {
        seen: Arc::clone(&seen),
        lose_on: Arc::clone(&lose_on),
        stall_on: Arc::clone(&stall_on),
        credential: Arc::clone(&credential),
        problems: Arc::clone(&problems),
        handle: tokio::spawn({
            let (base, name) = (agent_api.to_string(), name.to_string());
            async move {
                loop {
                    let bearer = credential.lock().unwrap().clone();
                    let Ok(res) =
                        http.get(format!("{base}/agent/v1/jobs?wait_secs=2")).bearer_auth(&bearer).send().await
                    else {
                        continue;
                    };
                    if res.status() != StatusCode::OK {
                        continue;
                    }
                    let job: pgplane_core::agent::AgentJob = res.json().await.unwrap();
                    let kind = kind_of(&job.task);
                    seen.lock().unwrap().push((job.job_id.to_string(), job.attempt, job.task.clone()));
                    if lose_on.lock().unwrap().as_deref() == Some(kind.as_str()) {
                        return;
                    }
                    if stall_on.lock().unwrap().as_deref() == Some(kind.as_str()) {
                        continue;
                    }
                    if mode == Mode::Replay && job.attempt == 1 {
                        let again = register_fake_agent(&http, &base, &name, "127.0.0.1").await;
                        *credential.lock().unwrap() = again;
                        continue;
                    }
                    let report =
                        json!({ "lease_id": job.lease_id, "outcome": "succeeded", "result": result_of(&job.task) });
                    let url = format!("{base}/agent/v1/jobs/{}/report", job.job_id);
                    let times = if mode == Mode::Replay { 2 } else { 1 };
                    for i in 0..times {
                        let bearer = credential.lock().unwrap().clone();
                        let status = http.post(&url).bearer_auth(&bearer).json(&report).send().await.unwrap().status();
                        let expected = if i == 0 { StatusCode::NO_CONTENT } else { StatusCode::CONFLICT };
                        if status != expected {
                            problems.lock().unwrap().push(format!("report {i} of {kind} answered {status}"));
                        }
                    }
                }
            }
        }),
    };
    agent
}

/// What a real agent would answer: a switchover says who leads now.
pub fn result_of(task: &AgentTask) -> Value {
    match task {
        AgentTask::Switchover { candidate, drain_leader, .. } => {
            json!({ "from": drain_leader.clone().or(candidate.clone()), "to": candidate })
        }
        _ => json!({}),
    }
}

/// Tells the scheduler what `agent` sees of `member`: its role and whether it is synchronous.
pub async fn observe(agent_api: &str, agent: &FakeAgent, db: &str, member: &str, role: &str, synchronous: bool) {
    let bearer = agent.credential.lock().unwrap().clone();
    let seen = json!({ "observed": { "members": [{ "database_id": db, "member": member, "role": role,
        "state": "running", "timeline": 1, "lag_bytes": 0, "synchronous": synchronous }] } });
    let res = reqwest::Client::new()
        .post(format!("{agent_api}/agent/v1/heartbeat"))
        .bearer_auth(bearer)
        .json(&seen)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

/// The member `agent` was asked to run for database `db`.
pub fn member_of(agent: &FakeAgent, db: &str) -> Option<String> {
    agent.seen.lock().unwrap().iter().find_map(|(_, _, t)| match t {
        AgentTask::EnsureMember { spec } if spec.database_id.to_string() == db => Some(spec.member.clone()),
        _ => None,
    })
}

pub async fn run_op(app: &TestApp, owner: &Client, (status, op): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let done = app.wait_operation(owner, op["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(done["status"], "done", "{done}");
    done
}

/// A platform of fake agents on one app database; `lost_after` as the harness sets it.
pub struct Lab {
    pub app: TestApp,
    pub agent_api: String,
    pub owner: Client,
    pub app_id: String,
}

pub async fn lab() -> Lab {
    let mut app = spawn_app().await;
    let agent_api = app.start_scheduler(unused_etcd()).await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    Lab { app, agent_api, owner, app_id }
}

impl Lab {
    /// A Business database on agents `a` and `b`, `a` leading; returns its id.
    pub async fn business(&self, a: &FakeAgent, b: &FakeAgent) -> String {
        let op = self
            .owner
            .post(&format!("/v1/apps/{}/databases", self.app_id), &json!({ "name": "lost", "plan": "business-2" }))
            .await;
        let db = run_op(&self.app, &self.owner, op).await["database_id"].as_str().unwrap().to_string();
        let (ma, mb) = (member_of(a, &db).unwrap(), member_of(b, &db).unwrap());
        observe(&self.agent_api, a, &db, &ma, "leader", false).await;
        observe(&self.agent_api, b, &db, &mb, "replica", true).await;
        db
    }

    /// Waits for an operation to end in `error` within `within`; returns its error.
    pub async fn fails(&self, (status, op): (StatusCode, Value), within: Duration) -> String {
        assert_eq!(status, StatusCode::ACCEPTED, "{op}");
        let t = Instant::now();
        let done = self.app.wait_operation(&self.owner, op["id"].as_str().unwrap(), within).await;
        assert_eq!(done["status"], "error", "{done}");
        let error = done["error"].as_str().unwrap().to_string();
        eprintln!("{} ended in error after {:?}: {error}", op["kind"], t.elapsed());
        assert!(error.contains("stopped responding") && error.contains("(job "), "{error}");
        assert!(
            !error.contains("agent:") && !error.contains("host-") && !error.contains("127.0.0.1"),
            "host detail: {error}"
        );
        error
    }
}
