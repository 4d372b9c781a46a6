//! The data every API benchmark reads: a private PostgreSQL (or the server named by
//! `PGPLANE_BENCH_DATABASE_URL`), a fresh migrated control-plane database, and through the
//! store a user, tenant, app, one database row and an API token.

use anyhow::{Context, Result};
use pgplane_core::ids::DatabaseId;
use pgplane_core::model::{CreateUser, DatabaseSettings};
use pgplane_localpg::{find_bindir, LocalPg};
use pgplane_store::databases::NewDatabase;
use pgplane_store::{Actor, Store};
use sqlx::Connection;

pub const ENV_DATABASE_URL: &str = "PGPLANE_BENCH_DATABASE_URL";
pub const DATABASE_NAME: &str = "bench-db";
pub const PLAN: &str = "starter-1";
pub const VERSION: &str = "15";

/// Where the benchmark database lives; dropping it stops a private server.
pub struct Server {
    /// Server-level URL (any database), to create and drop the benchmark database.
    admin_url: String,
    /// The benchmark's own control-plane database.
    pub url: String,
    db_name: String,
    /// The private server, when no URL was given.
    pg: Option<LocalPg>,
}

/// What the fixture created.
pub struct Fixture {
    pub database_id: DatabaseId,
    /// The long-lived API token, exchanged for an access token through the API.
    pub api_token: String,
}

impl Server {
    pub async fn start() -> Result<Self> {
        let (admin_url, pg) = match std::env::var(ENV_DATABASE_URL) {
            Ok(url) => (url, None),
            Err(_) => {
                let bindir = find_bindir(std::env::var_os("PGPLANE_PG_BINDIR").as_deref().map(std::path::Path::new))
                    .context("PostgreSQL binaries (set PGPLANE_PG_BINDIR, or PGPLANE_BENCH_DATABASE_URL)")?;
                let pg = tokio::task::spawn_blocking(move || LocalPg::temporary(&bindir)).await??;
                (pg.url("postgres"), Some(pg))
            }
        };
        let db_name = format!("pgplane_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut conn).await?;
        conn.close().await?;
        let url = with_database(&admin_url, &db_name);
        Ok(Server { admin_url, url, db_name, pg })
    }

    /// PID of the private PostgreSQL's postmaster, if we started one.
    pub fn postgres_pid(&self) -> Option<u32> {
        self.pg.as_ref().map(|pg| pg.pid())
    }

    /// Drops the benchmark database, then stops the private server (if any).
    pub async fn stop(mut self) -> Result<()> {
        let result = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name)).execute(&mut conn).await?;
            conn.close().await?;
            anyhow::Ok(())
        }
        .await;
        if let Some(mut pg) = self.pg.take() {
            tokio::task::spawn_blocking(move || pg.stop()).await?;
        }
        result
    }
}

/// Migrates the database and creates the rows the benchmark reads.
pub async fn create(url: &str) -> Result<Fixture> {
    let store = Store::connect(url, 2).await?;
    store.migrate().await?;
    let user = store
        .user_create(&CreateUser { email: "bench@pgplane.test".into(), name: "bench".into(), platform_role: None })
        .await?;
    let actor = Actor { user_id: user.id, platform_role: None };
    let tenant = store.tenant_create(&actor, "bench").await?;
    let app = store.app_create(tenant.id, "web").await?;
    let plan = store.plan_get(PLAN).await?;
    let settings = DatabaseSettings {
        force_tls: false,
        internet_exposure: false,
        backup_hour: None,
        daily_backups: true,
        effective_backup_hour: None,
        allowed_cidrs: Vec::new(),
    };
    let new = NewDatabase {
        tenant_id: tenant.id,
        app_id: app.id,
        name: DATABASE_NAME,
        plan: &plan,
        version: VERSION,
        settings,
    };
    let (database, _) = store.database_create(&actor, new).await?;
    let (_, api_token) = store.token_create(user.id, "bench", None).await?;
    store.pool().close().await;
    Ok(Fixture { database_id: database.id, api_token })
}

/// Replaces the database name of a URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((url, None));
    let base = match base.rfind('/') {
        Some(i) if i > base.find("//").map_or(0, |j| j + 1) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(with_database("postgres://u:p@h:1/postgres", "x"), "postgres://u:p@h:1/x");
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u:p@h:1", "x"), "postgres://u:p@h:1/x");
    }
}
