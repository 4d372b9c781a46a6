//! Databases' virtual IPs: one per database whose gateways span hosts, taken from the
//! scheduler's pool with a VRRP router id unique among them, released with the database.

use pgplane_core::ids::DatabaseId;
use sqlx::{FromRow, PgConnection};

use crate::{db_error, Result};

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct VipRow {
    pub database_id: DatabaseId,
    pub address: String,
    pub port: i32,
    pub router_id: i32,
}

/// The database's VIP, if it has one.
pub async fn vip_of_in(conn: &mut PgConnection, db: DatabaseId) -> Result<Option<VipRow>> {
    sqlx::query_as("SELECT database_id, address, port, router_id FROM database_vips WHERE database_id = $1")
        .bind(db)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)
}

/// The database's VIP, allocated from `pool` (in order) with the lowest free router id when it
/// has none yet; None when the pool (or the 255 router ids) is used up. Allocations are
/// serialized by a table lock for the rest of the caller's transaction.
pub async fn vip_allocate_in(
    conn: &mut PgConnection,
    db: DatabaseId,
    pool: &[String],
    port: i32,
) -> Result<Option<VipRow>> {
    if let Some(row) = vip_of_in(conn, db).await? {
        return Ok(Some(row));
    }
    sqlx::query("LOCK TABLE database_vips IN SHARE ROW EXCLUSIVE MODE").execute(&mut *conn).await.map_err(db_error)?;
    let used: Vec<(String, i32)> =
        sqlx::query_as("SELECT address, router_id FROM database_vips").fetch_all(&mut *conn).await.map_err(db_error)?;
    let Some(address) = pool.iter().find(|a| !used.iter().any(|(u, _)| u == *a)) else { return Ok(None) };
    let Some(router_id) = (1..=255).find(|id| !used.iter().any(|(_, u)| u == id)) else { return Ok(None) };
    sqlx::query("INSERT INTO database_vips (database_id, address, port, router_id) VALUES ($1, $2, $3, $4)")
        .bind(db)
        .bind(address)
        .bind(port)
        .bind(router_id)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    vip_of_in(conn, db).await
}

/// Gives the database's VIP back to the pool.
pub async fn vip_release_in(conn: &mut PgConnection, db: DatabaseId) -> Result<()> {
    sqlx::query("DELETE FROM database_vips WHERE database_id = $1")
        .bind(db)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}
