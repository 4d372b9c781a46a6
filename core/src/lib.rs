//! pgplane's domain vocabulary: typed ids, roles, plans, the resources the API shows, input
//! validation, the one error type every layer speaks, and a `Debug` that hides secrets
//! (`redact`). Nothing here performs I/O, so the agent, the CLI and the API can share these
//! types without pulling in a database driver.

pub mod agent;
pub mod backup;
pub mod backup_link;
pub mod error;
pub mod ids;
pub mod model;
pub mod page;
pub mod params;
pub mod pitr;
pub mod redact;
pub mod timer;
pub mod validate;

pub use error::{Error, FieldError};
