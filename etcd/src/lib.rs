//! A client of etcd's v3 JSON gateway (the grpc-gateway etcd serves on its client port): https
//! checked against the platform's etcd CA, a user's token renewed when etcd drops it, key
//! prefixes; `admin` holds what the root user does (auth on, one user per database), `setup` the
//! files etcd runs with (its CA, server certificate and root's password).

pub mod admin;
pub mod setup;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pgplane_core::agent::EtcdAccess;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::Mutex;

/// etcd answered and refused; `message` is its error, e.g. `etcdserver: permission denied`. A
/// member that cannot serve (5xx: no leader, a request timed out; a member cut off from the
/// others of its cluster) is no refusal: the client tries the next endpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("etcd answered {status} to {path}: {message}")]
pub struct Refused {
    pub path: String,
    pub status: u16,
    pub message: String,
}

/// True when `e` is etcd refusing with a message that contains `text`.
pub fn refused_with(e: &anyhow::Error, text: &str) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| r.message.contains(text))
}

/// True when the refusal is about the token or this member's state rather than the request: the
/// token expired or this member does not know it (a restarted member, one that caught up from a
/// snapshot), its auth store is at another revision than the token's, or it is overloaded. The
/// client authenticates again and, if that member still refuses so, asks the next endpoint: a
/// member stuck in such a state (etcd 3.4 has had auth-revision mismatches after member
/// restarts) must not hold the client, which would otherwise start with it on every call.
pub fn member_refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| {
        r.status == 401
            || r.status == 429
            || ["invalid auth token", "revision of auth store is old", "user name is empty", "too many requests"]
                .iter()
                .any(|m| r.message.contains(m))
    })
}

/// True when etcd refused for want of permission (a key outside the user's prefix).
pub fn is_permission_denied(e: &anyhow::Error) -> bool {
    refused_with(e, "permission denied")
}

/// A client of one etcd cluster with the credentials of `EtcdAccess` (none when it names no user).
pub struct Client {
    http: reqwest::Client,
    access: EtcdAccess,
    /// The endpoint that issued the token, and the token: etcd's simple tokens live in one member.
    token: Mutex<Option<(String, String)>>,
    /// The endpoint that answered last: the next call starts there, so a lost or cut-off member
    /// first in the list costs one timeout, not one per call.
    preferred: std::sync::atomic::AtomicUsize,
}

impl Client {
    pub fn new(access: &EtcdAccess) -> Result<Self> {
        Self::with_timeout(access, Duration::from_secs(5))
    }

    /// A client whose every request gives up after `timeout` (per endpoint).
    pub fn with_timeout(access: &EtcdAccess, timeout: Duration) -> Result<Self> {
        let mut http = reqwest::Client::builder().timeout(timeout);
        if let Some(ca) = &access.ca_pem {
            let ca = reqwest::Certificate::from_pem(ca.as_bytes()).context("etcd's CA")?;
            http = http.tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        Ok(Client {
            http: http.build()?,
            access: access.clone(),
            token: Mutex::new(None),
            preferred: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn access(&self) -> &EtcdAccess {
        &self.access
    }

    /// POSTs `body` to `path` (e.g. `/v3/kv/range`) on the first endpoint that answers, starting
    /// with the one that answered last. A refusal (`Refused`) of the request is final; an
    /// unreachable endpoint, one that cannot serve, answers what is no JSON, or refuses for its own
    /// state (`member_refused`, after authenticating again) makes it try the next one.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value> {
        use std::sync::atomic::Ordering;
        let mut last = None;
        let n = self.access.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        for i in (0..n).map(|k| (first + k) % n) {
            let base = format!("{}://{}", self.access.protocol, self.access.endpoints[i]);
            match self.call_one(&base, path, body).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.downcast_ref::<Refused>().is_some() && !member_refused(&e) => return Err(e),
                Err(e) => last = Some(e.context(format!("etcd at {base}"))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint given")))
    }

    async fn call_one(&self, base: &str, path: &str, body: &Value) -> Result<Value> {
        if self.access.username.is_none() {
            return self.post(base, path, body, None).await;
        }
        let cached = self.token.lock().await.clone().filter(|(b, _)| b == base).map(|(_, t)| t);
        if let Some(token) = cached {
            match self.post(base, path, body, Some(&token)).await {
                // Expired (5 minutes unused by default), the user's password changed, the member
                // restarted or its auth store moved on: authenticate again.
                Err(e) if member_refused(&e) => *self.token.lock().await = None,
                other => return other,
            }
        }
        let token = self.authenticate(base).await?;
        let answer = self.post(base, path, body, Some(&token)).await;
        if answer.as_ref().is_err_and(member_refused) {
            // A fresh token refused: this member is in no state to serve; the next one gets a
            // token of its own.
            *self.token.lock().await = None;
        }
        answer
    }

    async fn authenticate(&self, base: &str) -> Result<String> {
        let (Some(name), Some(password)) = (&self.access.username, &self.access.password) else {
            anyhow::bail!("an etcd user without a password");
        };
        let body = json!({ "name": name, "password": password });
        let answer = self.post(base, "/v3/auth/authenticate", &body, None).await?;
        let token = answer["token"].as_str().context("etcd gave no token")?.to_string();
        *self.token.lock().await = Some((base.to_string(), token.clone()));
        Ok(token)
    }

    async fn post(&self, base: &str, path: &str, body: &Value, token: Option<&str>) -> Result<Value> {
        let mut req = self.http.post(format!("{base}{path}")).json(body);
        if let Some(token) = token {
            req = req.header(reqwest::header::AUTHORIZATION, token);
        }
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await.with_context(|| format!("reading etcd's answer to {path} ({status})"))?;
        let answer: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            // A success must be JSON: an answer cut short is no "no keys" (the scheduler read
            // such an answer as "no member holds the leader key").
            Err(e) if status.is_success() => anyhow::bail!("etcd answered {path} with no JSON ({e}): {text:.200}"),
            Err(_) => Value::Null,
        };
        if !status.is_success() {
            let message = answer["error"].as_str().map(str::to_string).unwrap_or_else(|| answer.to_string());
            if status.is_server_error() {
                anyhow::bail!("etcd cannot serve {path} ({status}): {message}");
            }
            return Err(Refused { path: path.to_string(), status: status.as_u16(), message }.into());
        }
        Ok(answer)
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.call("/v3/kv/put", &json!({ "key": B64.encode(key), "value": B64.encode(value) })).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let answer = self.call("/v3/kv/range", &json!({ "key": B64.encode(key) })).await?;
        Ok(answer["kvs"][0]["value"].as_str().map(|v| B64.decode(v).unwrap_or_default()))
    }

    /// Every key under `prefix` with its value.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let answer = self.call("/v3/kv/range", &range(prefix)).await?;
        let decode = |v: &Value| B64.decode(v.as_str().unwrap_or_default()).unwrap_or_default();
        Ok(answer["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| (String::from_utf8_lossy(&decode(&kv["key"])).into_owned(), decode(&kv["value"])))
            .collect())
    }

    /// How many keys there are under `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<u64> {
        let mut body = range(prefix);
        body["count_only"] = json!(true);
        Ok(int(&self.call("/v3/kv/range", &body).await?["count"]))
    }

    /// Deletes every key under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        Ok(int(&self.call("/v3/kv/deleterange", &range(prefix)).await?["deleted"]))
    }
}

/// int64 fields come as strings in etcd's JSON, and are left out when zero.
fn int(v: &Value) -> u64 {
    v.as_str().and_then(|d| d.parse().ok()).unwrap_or(0)
}

/// Patroni's key prefix of a scope (a database's id).
pub fn scope_prefix(scope: &str) -> String {
    format!("/service/{scope}/")
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key range covering `prefix`, as the gateway takes it.
pub fn range(prefix: &str) -> Value {
    json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) })
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
        assert_eq!(int(&json!("12")), 12);
        assert_eq!(int(&Value::Null), 0);
    }

    #[test]
    fn refusals_are_recognised_through_context() {
        let e = anyhow::Error::from(Refused {
            path: "/v3/kv/put".into(),
            status: 403,
            message: "etcdserver: permission denied".into(),
        })
        .context("writing");
        assert!(is_permission_denied(&e));
        assert!(!refused_with(&anyhow::anyhow!("permission denied"), "permission denied"));
    }

    /// A fake etcd member on 127.0.0.1 (plain HTTP, one request per connection): `answer`
    /// gives (status, body) for a path; every path asked is recorded.
    struct Fake {
        endpoint: String,
        asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    async fn fake(answer: fn(&str) -> (u16, &'static str)) -> Fake {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let (head_end, length) = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break (0, 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                log.lock().unwrap().push(path.clone());
                let (status, body) = answer(&path);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        Fake { endpoint, asked }
    }

    fn access(fakes: &[&Fake], user: bool) -> EtcdAccess {
        EtcdAccess {
            endpoints: fakes.iter().map(|f| f.endpoint.clone()).collect(),
            protocol: "http".into(),
            ca_pem: None,
            username: user.then(|| "root".into()),
            password: user.then(|| "pw".into()),
        }
    }

    /// One key, `/service/db/leader` = `m1`.
    const LEADER_M1: &str = r#"{"kvs":[{"key":"L3NlcnZpY2UvZGIvbGVhZGVy","value":"bTE="}],"count":"1"}"#;

    #[tokio::test]
    async fn a_member_that_cannot_serve_is_skipped_and_the_next_call_starts_where_the_last_answered() {
        let down = fake(|_| (503, r#"{"error":"etcdserver: request timed out"}"#)).await;
        let up = fake(|_| (200, LEADER_M1)).await;
        let client = Client::new(&access(&[&down, &up], false)).unwrap();
        for _ in 0..3 {
            let kvs = client.list("/service/db/").await.unwrap();
            assert_eq!(kvs, vec![("/service/db/leader".to_string(), b"m1".to_vec())]);
        }
        assert_eq!(down.asked.lock().unwrap().len(), 1, "asked once, then the member that answered comes first");
        assert_eq!(up.asked.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_no_answer_without_keys() {
        let cut = fake(|_| (200, r#"{"kvs":[{"key":"L3Nlc"#)).await;
        let up = fake(|_| (200, LEADER_M1)).await;
        let client = Client::new(&access(&[&cut, &up], false)).unwrap();
        assert_eq!(client.list("/service/db/").await.unwrap().len(), 1, "the next member's keys, not none");
        let alone = Client::new(&access(&[&cut], false)).unwrap();
        assert!(alone.list("/service/db/").await.is_err(), "an answer that is no JSON is an error");
    }

    #[tokio::test]
    async fn a_member_that_refuses_fresh_tokens_does_not_hold_the_client() {
        // The member authenticates but refuses every token (as a member whose auth store is at
        // another revision does); the other serves.
        let stuck = fake(|path| match path {
            "/v3/auth/authenticate" => (200, r#"{"token":"t.1"}"#),
            _ => (400, r#"{"error":"etcdserver: revision of auth store is old","code":3}"#),
        })
        .await;
        let up = fake(|path| match path {
            "/v3/auth/authenticate" => (200, r#"{"token":"u.1"}"#),
            _ => (200, LEADER_M1),
        })
        .await;
        let client = Client::new(&access(&[&stuck, &up], true)).unwrap();
        for _ in 0..3 {
            assert_eq!(client.list("/service/db/").await.unwrap().len(), 1);
        }
        assert_eq!(
            *stuck.asked.lock().unwrap(),
            ["/v3/auth/authenticate", "/v3/kv/range"],
            "the stuck member is asked once, then the one that answered comes first"
        );
        assert_eq!(
            *up.asked.lock().unwrap(),
            ["/v3/auth/authenticate", "/v3/kv/range", "/v3/kv/range", "/v3/kv/range"]
        );

        // A refusal of the request itself is final: no other member is asked.
        let denies = fake(|path| match path {
            "/v3/auth/authenticate" => (200, r#"{"token":"d.1"}"#),
            _ => (403, r#"{"error":"etcdserver: permission denied","code":7}"#),
        })
        .await;
        let other = fake(|_| (200, LEADER_M1)).await;
        let client = Client::new(&access(&[&denies, &other], true)).unwrap();
        assert!(is_permission_denied(&client.list("/service/other/").await.unwrap_err()));
        assert!(other.asked.lock().unwrap().is_empty());
    }
}
