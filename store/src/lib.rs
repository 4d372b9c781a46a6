//! Every SQL statement of the control plane lives here, one module per resource, named
//! resource-first (`database_create`, `app_list`). Tenant-scoped reads join the caller's
//! membership into the query itself, so another tenant's row is simply not found.

pub mod accounts;
pub mod agent_retire;
pub mod agents;
pub mod apps;
pub mod backup_downloads;
pub mod backups;
pub mod billing;
pub mod config;
pub mod daily_backups;
pub mod databases;
pub mod engine;
mod error;
pub mod idempotency;
pub mod job_admin;
pub mod jobs;
pub mod plans;
pub mod retention;
pub mod tenants;
pub mod timers;
pub mod tokens;
pub mod truth;
pub mod vips;
pub mod workflow;

use pgplane_core::ids::UserId;
use pgplane_core::model::{PlatformRole, TenantRole};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::time::Duration;

pub use error::db_error;
pub use pgplane_core::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Migrations of the control-plane schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Who is asking. Built by the API from a verified access token.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub user_id: UserId,
    pub platform_role: Option<PlatformRole>,
}

impl Actor {
    pub fn is_operator(&self) -> bool {
        self.platform_role == Some(PlatformRole::Operator)
    }
}

/// A tenant-scoped resource together with the caller's role in its tenant
/// (operators act as owners).
#[derive(Debug, Clone)]
pub struct Scoped<T> {
    pub item: T,
    pub role: TenantRole,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Connects a pool; `max_connections` bounds what one process takes from the server.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions =
            url.parse().map_err(|e| Error::internal(format!("invalid database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("pgplane"))
            .await
            .map_err(db_error)?;
        Ok(Self::new(pool))
    }

    /// A store on the same database with a pool of its own of at most `max_connections`
    /// (connected lazily): what must never wait for a connection behind other work gets one.
    pub fn with_own_pool(&self, max_connections: u32) -> Self {
        let options = (*self.pool.connect_options()).clone();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Self::new(pool)
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(|e| Error::internal(format!("migration failed: {e}")))
    }

    /// The pool itself, for tests and benchmarks only (feature `sql-access`): everything else
    /// goes through the store's functions, and workflow steps through `begin()`.
    #[cfg(feature = "sql-access")]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Readiness: the control-plane database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_error)?;
        Ok(())
    }
}

/// Parses a text column into one of core's string enums.
pub(crate) fn parse_enum<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T> {
    s.parse().map_err(Error::internal)
}

/// The caller's role from a membership join; no membership means an operator, who acts as owner.
pub(crate) fn scoped_role(role: Option<&str>) -> Result<TenantRole> {
    Ok(role.map(parse_enum).transpose()?.unwrap_or(TenantRole::Owner))
}
