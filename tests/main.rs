//! One integration-test binary (it builds once), a module per feature.

mod agents;
mod api_document;
mod auth;
mod backup;
mod backup_s3;
mod backup_standby;
mod databases;
mod e2e;
mod engine;
mod etcd_auth;
mod ha;
mod isolation;
mod limits;
mod lost_hosts;
mod node;
mod openapi;
mod operators;
mod pitr;
mod queue;
mod scheduler;
mod settings;
mod tenants;
mod timers;
mod truth;
