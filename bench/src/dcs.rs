//! What Patroni keeps in etcd under `/service/<scope>/`, read through etcd's v3 JSON gateway:
//! the leader key, the members' keys, the `/sync` key and the dynamic `/config`. Plain http, or
//! https with etcd's CA and a user when the platform's etcd has them.

use base64::Engine;
use pgplane_core::agent::EtcdAccess;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

pub struct Dcs {
    http: reqwest::Client,
    /// `http(s)://host:port` of the first endpoint.
    base: String,
    /// (user, password), when etcd has authentication on.
    user: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

/// A member as Patroni last wrote it into its key.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub role: String,
    pub state: String,
}

/// One reading of a cluster's keys.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub leader: Option<String>,
    pub members: Vec<Member>,
    /// `sync_standby` of the `/sync` key, when one is named.
    pub sync_standby: Option<String>,
    pub config: Option<Value>,
}

impl Cluster {
    /// Every member of `expected` runs; the leader is one of them and the others are replicas;
    /// with `sync`, a replica is the synchronous standby.
    pub fn healthy(&self, expected: usize, sync: bool) -> bool {
        let Some(leader) = &self.leader else { return false };
        self.members.len() == expected
            && self.members.iter().all(|m| m.state == "running")
            && self.members.iter().filter(|m| &m.name != leader).all(|m| m.role == "replica")
            && self.members.iter().any(|m| &m.name == leader && matches!(m.role.as_str(), "master" | "primary"))
            && (!sync || self.sync_standby.as_ref().is_some_and(|s| s != leader))
    }

    /// `ttl/loop_wait/retry_timeout` of the dynamic configuration (retry_timeout may be a
    /// fraction of a second).
    pub fn timings(&self) -> Option<(f64, f64, f64)> {
        let c = self.config.as_ref()?;
        Some((c["ttl"].as_f64()?, c["loop_wait"].as_f64()?, c["retry_timeout"].as_f64()?))
    }
}

impl Dcs {
    /// `access`: endpoints, protocol and CA; with a user (root), it authenticates and keeps
    /// the token (etcd's simple tokens last 5 minutes unused; a refused token is renewed).
    pub fn new(access: &EtcdAccess) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(3));
        if let Some(ca) = &access.ca_pem {
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let base = format!("{}://{}", access.protocol, access.endpoints.first().map(String::as_str).unwrap_or(""));
        let user = access.username.clone().zip(access.password.clone());
        Ok(Dcs { http: http.build()?, base, user, token: Mutex::new(None) })
    }

    async fn post(&self, path: &str, body: &Value) -> Option<Value> {
        for _ in 0..2 {
            let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
            if let Some((name, password)) = &self.user {
                let cached = self.token.lock().unwrap().clone();
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let auth = json!({ "name": name, "password": password });
                        let url = format!("{}/v3/auth/authenticate", self.base);
                        let answer: Value = self.http.post(url).json(&auth).send().await.ok()?.json().await.ok()?;
                        let t = answer["token"].as_str()?.to_string();
                        *self.token.lock().unwrap() = Some(t.clone());
                        t
                    }
                };
                req = req.header(reqwest::header::AUTHORIZATION, token);
            }
            let answer: Value = req.send().await.ok()?.json().await.ok()?;
            if answer["error"].as_str().is_some_and(|e| e.contains("token")) {
                *self.token.lock().unwrap() = None;
                continue;
            }
            return Some(answer);
        }
        None
    }

    /// (key, value) of every key under `prefix`.
    async fn range(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = json!({ "key": b64.encode(prefix), "range_end": b64.encode(&end) });
        let Some(body) = self.post("/v3/kv/range", &body).await else { return Vec::new() };
        body["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| {
                let key = String::from_utf8(b64.decode(kv["key"].as_str()?).ok()?).ok()?;
                let value = b64.decode(kv["value"].as_str().unwrap_or("")).ok()?;
                Some((key, value))
            })
            .collect()
    }

    pub async fn cluster(&self, scope: &str) -> Cluster {
        let base = format!("/service/{scope}/");
        let mut c = Cluster::default();
        for (key, value) in self.range(&base).await {
            let name = &key[base.len()..];
            let text = String::from_utf8_lossy(&value).to_string();
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            match name {
                "leader" => c.leader = Some(text.trim().to_string()),
                "sync" => c.sync_standby = parsed.and_then(|v| v["sync_standby"].as_str().map(str::to_string)),
                "config" => c.config = parsed,
                _ => {
                    if let (Some(member), Some(v)) = (name.strip_prefix("members/"), parsed) {
                        c.members.push(Member {
                            name: member.to_string(),
                            role: v["role"].as_str().unwrap_or("").to_string(),
                            state: v["state"].as_str().unwrap_or("").to_string(),
                        });
                    }
                }
            }
        }
        c.members.sort_by(|a, b| a.name.cmp(&b.name));
        c
    }
}
