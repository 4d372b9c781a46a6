//! Scheduler settings.

use pgplane_core::agent::EtcdAccess;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The platform's etcd as the control plane administers it: endpoints and CA as Patroni
    /// reaches them, with root's credentials, from which each database gets a user of its own
    /// confined to its key prefix. Without a user (an etcd without auth, for development only)
    /// databases share etcd unconfined and the scheduler manages nothing in it.
    pub etcd: EtcdAccess,
    /// Shared secret agents present to register.
    pub bootstrap_token: String,
}
