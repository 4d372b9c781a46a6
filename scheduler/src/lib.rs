//! The scheduler: it owns every multi-step workflow (`workflows`, one module per operation
//! kind), the engine that moves operations on and ends them (`engine`: deadlines, lost hosts,
//! dead jobs), the job-queue worker everything runs on (`queue`), the reading of etcd (`truth`)
//! and the agent-facing API.

pub mod agent_api;
pub mod config;
pub mod daily;
pub mod divergence;
pub mod engine;
mod etcd_users;
pub mod queue;
pub mod run;
pub mod timers;
mod tls;
pub mod truth;
mod vip;
pub mod workflows;
