//! Cluster-wide actions through a member's Patroni REST API (authenticated, TLS checked
//! against the database's CA): configuration changes and planned switchovers.

use anyhow::{anyhow, bail, Context, Result};
use pgplane_core::agent::PatroniApi;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::files::host_port;

/// An https client that trusts only the database's CA.
pub(crate) fn client(ca_pem: &str, timeout: Duration) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("the database CA")?)
        .timeout(timeout)
        .build()?)
}

/// `PATCH /config`: Patroni applies it on every member (parameters needing a restart wait
/// for one). Returns the configuration Patroni now holds.
pub async fn patch_config(api: &PatroniApi, patch: &Value) -> Result<Value> {
    let url = format!("https://{}/config", host_port(&api.host, api.patroni_port));
    let res = client(&api.ca_pem, Duration::from_secs(30))?
        .patch(&url)
        .basic_auth("patroni", Some(&api.restapi_password))
        .json(patch)
        .send()
        .await
        .with_context(|| format!("PATCH {url}"))?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Patroni refused the configuration ({status}): {body}");
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// The cluster as Patroni sees it: (leader, healthy replicas), by member name.
pub(crate) async fn cluster(c: &reqwest::Client, base: &str) -> Result<(Option<String>, Vec<String>)> {
    let (leader, replicas, _) = cluster_with_leader_api(c, base).await?;
    Ok((leader, replicas))
}

/// `cluster`, plus the base URL of the leader's REST API (from its `api_url`).
async fn cluster_with_leader_api(
    c: &reqwest::Client,
    base: &str,
) -> Result<(Option<String>, Vec<String>, Option<String>)> {
    let body: Value = c.get(format!("{base}/cluster")).send().await?.json().await?;
    let members = body["members"].as_array().cloned().unwrap_or_default();
    let name = |m: &Value| m["name"].as_str().unwrap_or_default().to_string();
    let leader = members.iter().find(|m| m["role"] == "leader" && m["state"] == "running");
    let api = leader
        .and_then(|m| m["api_url"].as_str())
        .and_then(|u| u.strip_suffix("/patroni"))
        .filter(|u| u.starts_with("https://"))
        .map(str::to_string);
    let replicas = members
        .iter()
        .filter(|m| m["role"] != "leader" && matches!(m["state"].as_str(), Some("running" | "streaming")))
        .map(name)
        .collect();
    Ok((leader.map(name), replicas, api))
}

/// A planned switchover to `candidate` (or the first healthy replica); waits until the new
/// leader runs. Returns `{from, to}`; asking again once `to` leads changes nothing.
pub async fn switchover(api: &PatroniApi, candidate: Option<&str>) -> Result<Value> {
    let base = format!("https://{}", host_port(&api.host, api.patroni_port));
    let c = client(&api.ca_pem, Duration::from_secs(60))?;
    let (leader, replicas, leader_api) = cluster_with_leader_api(&c, &base).await?;
    let leader = leader.ok_or_else(|| anyhow!("the cluster has no running leader; retry when it has one"))?;
    if candidate == Some(leader.as_str()) {
        return Ok(json!({ "from": leader, "to": leader }));
    }
    let to = match candidate {
        Some(c) if replicas.iter().any(|r| r == c) => c.to_string(),
        Some(c) => bail!("member {c} is not a healthy replica"),
        None => replicas.first().cloned().ok_or_else(|| anyhow!("no healthy replica to switch over to"))?,
    };
    // Asked on the leader's own REST API, Patroni wakes its loop at once; asked elsewhere, the
    // leader notices the request on its next loop (up to `loop_wait` later).
    let res = c
        .post(format!("{}/switchover", leader_api.as_deref().unwrap_or(&base)))
        .basic_auth("patroni", Some(&api.restapi_password))
        .json(&json!({ "leader": leader, "candidate": to }))
        .send()
        .await?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Patroni refused the switchover ({status}): {body}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((Some(now), _)) = cluster(&c, &base).await {
            if now == to {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("{to} did not become the leader within 60 s");
        }
        // Polled often: the gateways' drain is lifted once this returns.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Then the former leader follows. Until it runs again Patroni is busy with it (stopping,
    // rewinding, starting it as a replica) and, asked to stop meanwhile, would only stop once
    // that is over: what comes next (a restart of it, a removal) waits for it here instead.
    let settled = Instant::now() + Duration::from_secs(30);
    while Instant::now() < settled {
        if let Ok((_, replicas)) = cluster(&c, &base).await {
            if replicas.contains(&leader) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(json!({ "from": leader, "to": to }))
}
