//! The drivers of the programs the agent runs on its host, each in one file: Patroni (its
//! configuration and process, its keys in etcd, its REST API for configuration, switchover,
//! restart and re-clone), PostgreSQL itself (the tenant's role and database over the member's
//! socket), HAProxy gateways (and draining a member in them), keepalived carrying a database's
//! virtual IP, logical backups (`pg_dump` streamed into backup storage, restores and verify
//! restores), pgBackRest (WAL archiving, physical backups, point-in-time restores), and the
//! private etcd of `pgplane up` and the tests. The machinery that decides when to call them
//! (runtime, node, reconcile, fence, specs, removal) sits beside this folder.

pub mod control;
pub(crate) mod dcs;
pub(crate) mod drain;
pub mod etcd;
pub mod haproxy;
pub mod keepalived;
pub mod patroni;
pub mod pgbackrest;
pub mod pgdump;
pub mod restart;
pub(crate) mod tenant;
