//! The node agent: drives the real processes of the databases placed on this host (PostgreSQL
//! through Patroni, HAProxy gateways), which outlive it and are re-adopted (`reconcile`), and for
//! `pgplane up` and tests a local etcd. `Node` is the entry point; `runtime` the agent's loop.

pub mod control;
mod dcs;
pub mod doctor;
mod drain;
pub mod etcd;
mod fence;
mod files;
pub mod haproxy;
pub mod keepalived;
pub mod lifecycle;
pub mod node;
pub mod observe;
pub mod patroni;
mod probes;
pub mod process;
mod reaper;
pub mod reconcile;
mod removal;
pub mod restart;
pub mod runtime;
mod specs;
mod tenant;

pub use etcd::LocalEtcd;
pub use node::{MemberStatus, Node, NodeError};
