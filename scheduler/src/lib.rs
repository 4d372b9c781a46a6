//! The scheduler: it owns every multi-step workflow, the timers and the agent-facing API.
//! So far it holds the job-queue worker that everything else runs on.

pub mod queue;
