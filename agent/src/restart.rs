//! Restarting a member's PostgreSQL through its Patroni REST API (authenticated, over TLS
//! checked against the database's CA), then waiting until Patroni reports it running again.

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

use crate::patroni::{rest_client, state};

/// `POST /restart` on the member's Patroni, then wait for `running`.
pub async fn restart_member(host: &str, port: u16, ca_pem: &str, password: &str, timeout: Duration) -> Result<()> {
    let client = rest_client(ca_pem)?;
    let url = format!("https://{}/restart", crate::files::host_port(host, port));
    // Patroni's own timeout on the call is short; the restart itself can take longer.
    let client_long = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .timeout(timeout)
        .build()?;
    let res = client_long
        .post(&url)
        .basic_auth("patroni", Some(password))
        .json(&serde_json::json!({}))
        .send()
        .await
        .with_context(|| format!("asking {url} to restart"))?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Patroni refused the restart ({status}): {body}");
    }
    let deadline = Instant::now() + timeout;
    loop {
        match state(&client, host, port).await {
            Ok(s) if s.state == "running" => return Ok(()),
            Ok(s) if Instant::now() > deadline => bail!("member still {:?} after the restart", s.state),
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
