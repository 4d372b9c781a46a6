//! What the agent reports with each heartbeat: every member it runs, as that member's Patroni
//! sees the cluster (role, state, timeline, lag), or `unreachable` when Patroni does not answer;
//! for a leader, also the members its WAL senders stream to (the scheduler judges replication
//! from that, with etcd's keys: Patroni 3.0 shows a replica `running` whether it streams or not).

use pgplane_core::agent::{MemberSpec, Observation, ObservedMember};
use serde_json::Value;
use std::path::Path;

use crate::patroni::rest_client;
use crate::specs;

/// Observes every member persisted under `root` (databases being removed are skipped).
pub async fn observe(root: &Path) -> Observation {
    let mut members = Vec::new();
    for db in specs::databases(root) {
        if specs::removing(root, db).is_some() {
            continue;
        }
        for spec in specs::load(&root.join(db.to_string()), db).members {
            members.push(member(&spec).await);
        }
    }
    Observation { members }
}

async fn member(spec: &MemberSpec) -> ObservedMember {
    let mut seen = ObservedMember {
        database_id: spec.database_id,
        member: spec.member.clone(),
        role: "unknown".into(),
        state: "unreachable".into(),
        timeline: None,
        lag_bytes: None,
        synchronous: false,
        streaming_replicas: Vec::new(),
    };
    let Ok(client) = rest_client(&spec.tls.ca_pem) else { return seen };
    let url = format!("https://{}/cluster", crate::files::host_port(&spec.host, spec.patroni_port));
    let Ok(res) = client.get(&url).send().await else { return seen };
    let Ok(body) = res.json::<Value>().await else { return seen };
    let me = body["members"].as_array().and_then(|ms| ms.iter().find(|m| m["name"] == spec.member.as_str()).cloned());
    if let Some(me) = me {
        seen.role = match me["role"].as_str() {
            Some("leader" | "master" | "primary" | "standby_leader") => "leader",
            Some("replica" | "sync_standby") => "replica",
            _ => "unknown",
        }
        .into();
        seen.synchronous = me["role"] == "sync_standby";
        seen.state = me["state"].as_str().unwrap_or("unknown").to_string();
        seen.timeline = me["timeline"].as_i64();
        seen.lag_bytes = me["lag"].as_i64();
    }
    if seen.role == "leader" {
        let url = format!("https://{}/patroni", crate::files::host_port(&spec.host, spec.patroni_port));
        if let Ok(res) = client.get(&url).send().await {
            if let Ok(status) = res.json::<Value>().await {
                seen.streaming_replicas = streaming_replicas(&status);
            }
        }
    }
    seen
}

/// The members a leader's WAL senders are streaming to, from its `GET /patroni` (Patroni names
/// each replica's connection after the member).
fn streaming_replicas(status: &Value) -> Vec<String> {
    status["replication"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == "streaming")
        .filter_map(|r| r["application_name"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_streaming_wal_senders_count() {
        let status = json!({ "replication": [
            { "application_name": "m1", "state": "streaming", "sync_state": "sync" },
            { "application_name": "m2", "state": "catchup" },
        ]});
        assert_eq!(streaming_replicas(&status), vec!["m1".to_string()]);
        assert!(streaming_replicas(&json!({ "state": "running" })).is_empty());
    }
}
