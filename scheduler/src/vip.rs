//! Databases' virtual IPs: a database whose gateways are on two or more hosts gets one from the
//! scheduler's pool (`SchedulerConfig::gateway_vips`) before its members' certificates are
//! issued (they name it); every gateway host binds it on the same port and keepalived moves it
//! to a live one; the connection URL names it. On one host (`pgplane up`) or without a pool the
//! gateways share their address and port (SO_REUSEPORT) as before.

use pgplane_core::agent::GatewayVip;
use pgplane_core::model::Plan;
use pgplane_store::vips::{vip_allocate_in, vip_release_in, VipRow};
use pgplane_store::workflow::{gateways_of_in, GatewayRow, OperationState};
use sqlx::PgConnection;

use crate::queue::JobError;
use crate::workflows::Workflows;

/// VRRP priority of the gateway on the first host; each next host's is 10 lower.
const TOP_PRIORITY: u8 = 150;

impl Workflows {
    /// Whether the gateways of a database on `plan` carry a VIP when placed on distinct hosts:
    /// the platform has a pool and the plan has two or more members and gateways. Placement
    /// then takes only agents whose hosts can run keepalived.
    pub(crate) fn needs_vip(&self, plan: &Plan) -> bool {
        self.config.gateway_vips.is_some() && plan.data_nodes >= 2 && plan.gateways >= 2
    }

    /// Gives the database a VIP when its gateways are on two or more hosts and the platform has
    /// a pool, and gives it back otherwise (gateways on one host again, or no pool any more).
    pub(crate) async fn assign_vip(&self, tx: &mut PgConnection, st: &OperationState) -> Result<(), JobError> {
        let gateways = gateways_of_in(tx, st.database_id).await?;
        let spans_hosts = hosts(&gateways).len() >= 2;
        match (&self.config.gateway_vips, gateways.first()) {
            (Some(pool), Some(first)) if spans_hosts => {
                let vip = vip_allocate_in(tx, st.database_id, &pool.addresses(), first.port).await?;
                if vip.is_none() {
                    tracing::warn!(database = %st.database_id, "the VIP pool is used up: the database's endpoint is its first gateway's host");
                }
            }
            _ => vip_release_in(tx, st.database_id).await?,
        }
        Ok(())
    }
}

/// The gateways' distinct hosts, in the gateways' order.
fn hosts(gateways: &[GatewayRow]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for g in gateways {
        if !out.contains(&g.host.as_str()) {
            out.push(&g.host);
        }
    }
    out
}

/// What `gateway` carries of the database's VIP: the first gateway on each host runs keepalived
/// (priority by host, highest first, unicast to the other hosts); another gateway on a host
/// that already has one carries none.
pub(crate) fn gateway_vip(vip: &VipRow, gateways: &[GatewayRow], gateway: &GatewayRow) -> Option<GatewayVip> {
    let first_here = gateways.iter().find(|g| g.host == gateway.host)?;
    if first_here.name != gateway.name {
        return None;
    }
    let hosts = hosts(gateways);
    let rank = hosts.iter().position(|h| *h == gateway.host)?;
    Some(GatewayVip {
        address: vip.address.clone(),
        port: u16::try_from(vip.port).ok()?,
        router_id: u8::try_from(vip.router_id).ok()?,
        priority: TOP_PRIORITY.saturating_sub(10 * rank.min(14) as u8),
        peers: hosts.iter().filter(|h| **h != gateway.host).map(|h| h.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::agent::AgentId;
    use pgplane_core::ids::DatabaseId;

    fn gateway(name: &str, host: &str) -> GatewayRow {
        GatewayRow {
            database_id: DatabaseId::new(),
            name: name.into(),
            agent_id: AgentId::nil(),
            host: host.into(),
            port: 7000,
            public_host: host.into(),
        }
    }

    #[test]
    fn one_keepalived_per_host_peering_with_the_others() {
        let vip = VipRow { database_id: DatabaseId::new(), address: "10.213.7.100".into(), port: 7000, router_id: 3 };
        let gws = [gateway("g0", "10.0.0.1"), gateway("g1", "10.0.0.2"), gateway("g2", "10.0.0.1")];
        let g0 = gateway_vip(&vip, &gws, &gws[0]).expect("g0 carries the VIP");
        assert_eq!(
            g0,
            GatewayVip {
                address: "10.213.7.100".into(),
                port: 7000,
                router_id: 3,
                priority: 150,
                peers: vec!["10.0.0.2".into()],
            }
        );
        let g1 = gateway_vip(&vip, &gws, &gws[1]).expect("g1 carries the VIP");
        assert_eq!((g1.priority, g1.peers), (140, vec!["10.0.0.1".to_string()]));
        assert_eq!(gateway_vip(&vip, &gws, &gws[2]), None, "g0 already carries it on that host");
    }
}
