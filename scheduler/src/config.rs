//! Scheduler settings.

use pgplane_core::agent::EtcdAccess;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone)]
pub struct SchedulerConfig {
    /// The platform's etcd as the control plane administers it: endpoints and CA as Patroni
    /// reaches them, with root's credentials, from which each database gets a user of its own
    /// confined to its key prefix. Without a user (an etcd without auth, for development only)
    /// databases share etcd unconfined and the scheduler manages nothing in it.
    pub etcd: EtcdAccess,
    /// Shared secret agents present to register.
    pub bootstrap_token: String,
    /// Virtual IPs for databases whose gateways are on several hosts (see `VipPool`); without
    /// a pool, their connection URL names the first gateway's host.
    pub gateway_vips: Option<VipPool>,
    /// How long a running replica may not stream before it is shown `not_streaming` and
    /// re-cloned (`truth::NOT_STREAMING_GRACE`; tests shorten it).
    pub not_streaming_grace: Duration,
    /// An agent not heard from for this long is lost: operations waiting on it end in `error`,
    /// and cluster-wide requests go through another member (`engine::AGENT_LOST_AFTER`).
    pub agent_lost_after: Duration,
    /// The backup storage the agents write to: the scheduler deletes the objects of evicted,
    /// deleted and failed backups there. Without it those objects stay (logged) and backup
    /// deletions wait.
    pub backup_storage: Option<pgplane_storage::BackupStore>,
}

pgplane_core::redacted_debug!(SchedulerConfig { etcd, gateway_vips, not_streaming_grace, backup_storage } secret { bootstrap_token });

/// A range of IPv4 addresses on the gateway hosts' private network, reserved for databases'
/// virtual IPs (`first-last`, or one address), at most 255 (one VRRP router id each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipPool {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

impl VipPool {
    /// The pool's addresses, in order.
    pub fn addresses(&self) -> Vec<String> {
        (u32::from(self.first)..=u32::from(self.last)).map(|a| Ipv4Addr::from(a).to_string()).collect()
    }
}

impl FromStr for VipPool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |x: &str| {
            x.trim().parse::<Ipv4Addr>().map_err(|_| format!("{x:?} is not an IPv4 address (write first-last)"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("the VIP pool {s} ends before it starts"));
        }
        if u32::from(last) - u32::from(first) >= 255 {
            return Err(format!("the VIP pool {s} has more than 255 addresses (one VRRP router id each)"));
        }
        Ok(VipPool { first, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_a_short_range_of_ipv4_addresses() {
        let pool: VipPool = "10.213.7.100-10.213.7.102".parse().unwrap();
        assert_eq!(pool.addresses(), ["10.213.7.100", "10.213.7.101", "10.213.7.102"]);
        assert_eq!("10.0.0.9".parse::<VipPool>().unwrap().addresses(), ["10.0.0.9"]);
        assert!("10.0.0.9-10.0.0.1".parse::<VipPool>().is_err());
        assert!("10.0.0.0-10.0.1.0".parse::<VipPool>().is_err(), "256 addresses");
        assert!("10.0.0.0-10.0.0.254".parse::<VipPool>().is_ok());
        assert!("fd00::1".parse::<VipPool>().is_err());
    }
}
