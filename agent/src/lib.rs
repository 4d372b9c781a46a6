//! The node agent: drives the real processes of the databases placed on this host (PostgreSQL
//! through Patroni, HAProxy gateways, keepalived for virtual IPs), which outlive it and are
//! re-adopted (`reconcile`), and for `pgplane up` and tests a local etcd. The programs' drivers
//! are in `drivers/`; the rest is the agent's machinery. `Node` is the entry point; `runtime`
//! the agent's loop; `doctor` the host's checks.

pub mod backup;
pub mod doctor;
pub mod drivers;
mod fence;
mod files;
pub mod lifecycle;
pub mod node;
pub mod observe;
mod probes;
pub mod process;
mod reaper;
pub mod reconcile;
mod removal;
pub mod runtime;
mod specs;

// The drivers by their short names, as the rest of the agent and other crates call them.
pub use drivers::{control, etcd, haproxy, keepalived, patroni, pgbackrest, pgdump, restart};
pub(crate) use drivers::{dcs, tenant};

pub use etcd::LocalEtcd;
pub use node::{MemberStatus, Node, NodeError};
