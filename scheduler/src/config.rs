//! Scheduler settings.

use pgplane_core::agent::EtcdAccess;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The platform's etcd, as Patroni reaches it.
    pub etcd: EtcdAccess,
    /// Shared secret agents present to register.
    pub bootstrap_token: String,
}
