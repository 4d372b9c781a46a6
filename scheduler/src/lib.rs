//! The scheduler: it owns every multi-step workflow, the timers and the agent-facing API.
//! So far it holds the job-queue worker that everything else runs on.

pub mod agent_api;
pub mod config;
pub mod divergence;
mod etcd_users;
mod plan_change;
pub mod queue;
pub mod run;
pub mod timers;
mod tls;
pub mod truth;
mod vip;
pub mod workflows;
