//! Patroni's keys of one database in etcd (`/service/<scope>/`), through etcd's v3 JSON gateway
//! over HTTP: which members are still up, and deleting them all once the last member is gone (a
//! leftover `/config` would silently win over the bootstrap settings of a later cluster).

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pgplane_core::agent::EtcdAccess;
use serde_json::{json, Value};
use std::time::Duration;

/// A client of the etcd a database's Patroni uses, with that database's credentials.
pub struct Dcs {
    http: reqwest::Client,
    access: EtcdAccess,
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn range(prefix: &str) -> Value {
    json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) })
}

/// Patroni's key prefix of a scope.
pub fn scope_prefix(scope: &str) -> String {
    format!("/service/{scope}/")
}

impl Dcs {
    pub fn new(access: &EtcdAccess) -> Result<Self> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(ca) = &access.ca_pem {
            let ca = reqwest::Certificate::from_pem(ca.as_bytes()).context("etcd's CA")?;
            http = http.tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        Ok(Dcs { http: http.build()?, access: access.clone() })
    }

    /// POSTs `body` to `path` on the first endpoint that answers, authenticated when the access
    /// names a user.
    async fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let mut last = None;
        for endpoint in &self.access.endpoints {
            let base = format!("{}://{endpoint}", self.access.protocol);
            match self.call_one(&base, path, body).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e.context(format!("etcd at {base}"))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint given")))
    }

    async fn call_one(&self, base: &str, path: &str, body: &Value) -> Result<Value> {
        let mut req = self.http.post(format!("{base}{path}")).json(body);
        if let (Some(name), Some(password)) = (&self.access.username, &self.access.password) {
            let auth: Value = self
                .http
                .post(format!("{base}/v3/auth/authenticate"))
                .json(&json!({ "name": name, "password": password }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let token = auth["token"].as_str().context("etcd gave no token")?;
            req = req.header(reqwest::header::AUTHORIZATION, token);
        }
        let res = req.send().await?;
        let status = res.status();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path} answered {status}: {answer}");
        }
        Ok(answer)
    }

    /// The members Patroni registered under the scope, with the state each last wrote.
    pub async fn members(&self, scope: &str) -> Result<Vec<(String, String)>> {
        let prefix = format!("{}members/", scope_prefix(scope));
        let answer = self.call("/v3/kv/range", &range(&prefix)).await?;
        let mut out = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let decode = |k: &str| B64.decode(kv[k].as_str().unwrap_or_default()).unwrap_or_default();
            let key = String::from_utf8_lossy(&decode("key")).into_owned();
            let value: Value = serde_json::from_slice(&decode("value")).unwrap_or(Value::Null);
            let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
            out.push((name, value["state"].as_str().unwrap_or_default().to_string()));
        }
        Ok(out)
    }

    /// Deletes every key of the scope; returns how many there were.
    pub async fn delete_scope(&self, scope: &str) -> Result<u64> {
        let answer = self.call("/v3/kv/deleterange", &range(&scope_prefix(scope))).await?;
        // int64 fields come as strings in etcd's JSON, and are left out when zero.
        Ok(answer["deleted"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0))
    }
}

/// Deletes the scope's keys unless a member other than `ours` (stopped here) is up: Patroni
/// marks a member `stopped` as it stops, and a killed one's key expires with its lease (ttl).
/// Returns false, deleting nothing, when another member is up: that member may be staying (a
/// plan change removes one member), and if the whole database goes, the removal that stops the
/// last member sees every other one stopped (each checks after its own stop), and deletes them.
pub async fn remove_scope_if_last(access: &EtcdAccess, scope: &str, ours: &[String]) -> Result<bool> {
    let dcs = Dcs::new(access)?;
    let others: Vec<String> = dcs
        .members(scope)
        .await?
        .into_iter()
        .filter(|(name, state)| !ours.contains(name) && state != "stopped")
        .map(|(name, _)| name)
        .collect();
    if !others.is_empty() {
        tracing::info!(%scope, ?others, "other members are up; the etcd keys stay");
        return Ok(false);
    }
    let deleted = dcs.delete_scope(scope).await?;
    tracing::info!(%scope, deleted, "deleted the database's keys in etcd");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end("/service/db/"), b"/service/db0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        let r = range("/service/x/");
        assert_eq!(B64.decode(r["key"].as_str().unwrap()).unwrap(), b"/service/x/");
    }
}
