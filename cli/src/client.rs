//! The tenant's side of the `pgplane` binary: a small client of the public API. It exchanges an
//! API token (`--api-token` / `PGPLANE_API_TOKEN`; on a machine running `pgplane up`, its
//! operator token by default) for an access token, sends requests, and turns problem+json
//! answers into errors that say what the API said.

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the API is and who is calling.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// The pgplane API.
    #[arg(long, global = true, env = "PGPLANE_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// An API token (made with `POST /v1/me/tokens`). Without it, the operator token of a local
    /// `pgplane up` (STATE/admin-token) is used when there is one.
    #[arg(long, global = true, env = "PGPLANE_API_TOKEN", value_parser = crate::secret, hide_env_values = true)]
    pub api_token: Option<SecretString>,
    /// Print the API's JSON answers instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An authenticated client of the API.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    bearer: String,
    pub json: bool,
}

fn api_token(args: &ClientArgs) -> Result<String> {
    if let Some(token) = &args.api_token {
        return Ok(token.expose_secret().trim().to_string());
    }
    let file: PathBuf = crate::up::default_state_dir().join("admin-token");
    match std::fs::read_to_string(&file) {
        Ok(token) => Ok(token.trim().to_string()),
        Err(_) => bail!("give an API token with --api-token or PGPLANE_API_TOKEN"),
    }
}

impl Client {
    /// Exchanges the API token for an access token.
    pub async fn connect(args: &ClientArgs) -> Result<Client> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        let base = args.api_url.trim_end_matches('/').to_string();
        let res = http
            .post(format!("{base}/v1/auth/token"))
            .json(&json!({ "api_token": api_token(args)? }))
            .send()
            .await
            .with_context(|| format!("reaching the pgplane API at {base} (--api-url)"))?;
        let body = answer(res).await.context("exchanging the API token")?;
        let bearer = body["access_token"].as_str().context("the token exchange gave no access_token")?.to_string();
        Ok(Client { http, base, bearer, json: args.json })
    }

    /// A request with the access token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.bearer)
    }

    /// Sends a request (with a JSON body when given); answers the JSON of a success.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut rb = self.request(method.clone(), path);
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let res = rb.send().await.with_context(|| format!("{method} {path}"))?;
        answer(res).await
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Polls an operation until it has finished; fails unless it ended `done`.
    pub async fn wait_operation(&self, id: &str, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let op = self.get(&format!("/v1/operations/{id}")).await?;
            match op["status"].as_str() {
                Some("done") => return Ok(op),
                Some(status @ ("error" | "canceled")) => {
                    bail!("operation {id} ended {status}: {}", op["error"].as_str().unwrap_or("no reason given"))
                }
                _ if Instant::now() > deadline => bail!("operation {id} still runs after {within:?}"),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// The JSON of a successful answer, or an error made of its problem+json.
pub async fn answer(res: reqwest::Response) -> Result<Value> {
    let status = res.status();
    let bytes = res.bytes().await.context("reading the answer")?;
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    if status.is_success() {
        return Ok(body);
    }
    bail!("{}", problem_text(status, &body))
}

/// What a problem+json answer says, on one line (field errors and `next_allowed_at` included).
pub fn problem_text(status: StatusCode, body: &Value) -> String {
    let mut text = match (body["title"].as_str(), body["detail"].as_str()) {
        (Some(title), Some(detail)) => format!("{title} ({}): {detail}", status.as_u16()),
        _ => format!("the API answered {status}: {body}"),
    };
    if let Some(at) = body["next_allowed_at"].as_str() {
        text.push_str(&format!(" (next allowed at {at})"));
    }
    text
}

/// A byte count for people: `512 B`, `3.4 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints rows as columns padded to their widest cell, under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
    }

    #[test]
    fn problems_say_what_the_api_said() {
        let body = json!({ "title": "Quota exceeded", "detail": "2 manual backups a day", "next_allowed_at": "2026-11-30T00:00:00Z" });
        assert_eq!(
            problem_text(StatusCode::TOO_MANY_REQUESTS, &body),
            "Quota exceeded (429): 2 manual backups a day (next allowed at 2026-11-30T00:00:00Z)"
        );
    }
}
