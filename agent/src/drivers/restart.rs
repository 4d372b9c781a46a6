//! Restarting a member's PostgreSQL through its Patroni REST API (authenticated, over TLS
//! checked against the database's CA), then waiting until Patroni reports it running again; and
//! re-cloning a replica (`POST /reinitialize`).

use anyhow::{bail, Context, Result};
use pgplane_core::agent::PatroniApi;
use std::time::{Duration, Instant};

use crate::control::client;
use crate::patroni::{rest_client, state};

/// `POST /restart` on the member's Patroni, then wait for `running`.
pub async fn restart_member(api: &PatroniApi, timeout: Duration) -> Result<()> {
    let client_short = rest_client(&api.ca_pem)?;
    let url = format!("https://{}/restart", crate::files::host_port(&api.host, api.patroni_port));
    // Patroni's own timeout on the call is short; the restart itself can take longer.
    let client_long = client(&api.ca_pem, timeout)?;
    let res = client_long
        .post(&url)
        .basic_auth("patroni", Some(&api.restapi_password))
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
        match state(&client_short, &api.host, api.patroni_port).await {
            Ok(s) if s.state == "running" => return Ok(()),
            Ok(s) if Instant::now() > deadline => bail!("member still {:?} after the restart", s.state),
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `POST /reinitialize` on a replica's Patroni: it wipes the replica's data and clones it again
/// from the leader (Patroni refuses on the leader, or with no leader). Returns once Patroni has
/// started it; the clone goes on in Patroni, and the scheduler sees the member again by its reports.
pub async fn reinit_member(api: &PatroniApi) -> Result<String> {
    let url = format!("https://{}/reinitialize", crate::files::host_port(&api.host, api.patroni_port));
    let res = client(&api.ca_pem, Duration::from_secs(30))?
        .post(&url)
        .basic_auth("patroni", Some(&api.restapi_password))
        // Cancels whatever Patroni is stuck doing with the member (starting it, say).
        .json(&serde_json::json!({ "force": true }))
        .send()
        .await
        .with_context(|| format!("asking {url} to reinitialize"))?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Patroni refused to reinitialize ({status}): {body}");
    }
    Ok(body)
}
