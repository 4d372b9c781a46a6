//! What the crash tests assert about one database: after a provision, one Patroni and one
//! postmaster per member, one HAProxy per gateway, TLS through the gateway; after a delete, no
//! process, folder, port, row or etcd key; and every job of the operation done exactly once.

use super::{procs, Plane};
use pgplane_tests::data_plane::eventually;
use std::time::Duration;

pub async fn scalar(plane: &Plane, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql).bind(id).fetch_one(&plane.pool).await.unwrap()
}

pub async fn names(plane: &Plane, table: &str, db: &str) -> Vec<String> {
    let sql = format!("SELECT name FROM {table} WHERE database_id = $1::uuid ORDER BY name");
    sqlx::query_scalar(&sql).bind(db).fetch_all(&plane.pool).await.unwrap()
}

/// Every job of the operation is done, and no two did the same work (same queue, kind, step
/// and member or gateway). Returns how many attempts they took in all.
pub async fn assert_jobs_once(plane: &Plane, op: &str) -> i64 {
    let duplicates = scalar(
        plane,
        "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE operation_id = $1::uuid \
         GROUP BY queue, kind, COALESCE(payload->>'step', 'start'), payload->'task'->'spec'->>'member', \
            payload->'task'->'spec'->>'name' HAVING count(*) > 1) d",
        op,
    )
    .await;
    assert_eq!(duplicates, 0, "jobs of operation {op} were enqueued twice");
    let unfinished = scalar(plane, "SELECT count(*) FROM jobs WHERE operation_id = $1::uuid AND status <> 'done'", op);
    assert_eq!(unfinished.await, 0, "operation {op} has unfinished jobs");
    scalar(plane, "SELECT COALESCE(sum(attempts), 0)::bigint FROM jobs WHERE operation_id = $1::uuid", op).await
}

/// One Patroni and one postmaster per member, one HAProxy per gateway, a working database.
pub async fn assert_provisioned(plane: &Plane, db: &str, op: &str) -> i64 {
    let dir = plane.database_dir(db);
    let members = names(plane, "database_members", db).await;
    let gateways = names(plane, "database_gateways", db).await;
    assert!(!members.is_empty() && !gateways.is_empty(), "{members:?} {gateways:?}");
    for m in &members {
        let member = dir.join(format!("member-{m}"));
        let patroni = procs::running_exactly(&member.join("patroni.yml"));
        assert_eq!(patroni.len(), 1, "Patroni processes of member {m} of {db}: {patroni:?}");
        let postmasters: Vec<u32> = procs::naming(&member.join("data"))
            .into_iter()
            .filter(|&p| procs::arguments(p).first().is_some_and(|a| a.ends_with("/postgres")))
            .collect();
        assert_eq!(postmasters.len(), 1, "postmasters of member {m} of {db}: {postmasters:?}");
    }
    for g in &gateways {
        let haproxy = procs::running_exactly(&dir.join(format!("gateway-{g}/haproxy.cfg")));
        assert_eq!(haproxy.len(), 1, "HAProxy processes of gateway {g} of {db}: {haproxy:?}");
    }
    let folders = std::fs::read_dir(&plane.root).unwrap().flatten().filter(|e| e.path().is_dir()).count();
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM databases WHERE status = 'available'")
        .fetch_one(&plane.pool)
        .await
        .unwrap();
    assert_eq!(folders as i64, live, "one folder per available database on the agent");
    let name: String = sqlx::query_scalar("SELECT name FROM databases WHERE id = $1::uuid")
        .bind(db)
        .fetch_one(&plane.pool)
        .await
        .unwrap();
    let sql = "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    eventually(&plane.url(db).await, sql, &format!("{name} true"), Duration::from_secs(10)).await;
    assert_jobs_once(plane, op).await
}

/// Keys under Patroni's prefix of the database in etcd.
pub async fn etcd_keys(plane: &Plane, db: &str) -> i64 {
    let root = pgplane_etcd::Client::new(&plane.etcd.admin()).unwrap();
    root.count(&pgplane_etcd::scope_prefix(db)).await.unwrap() as i64
}

/// Nothing of the database runs, on disk, on its ports, in the control plane or in etcd.
pub async fn assert_deleted(plane: &Plane, db: &str, ports: &[i32], op: &str) -> i64 {
    let dir = plane.database_dir(db);
    assert_eq!(procs::naming(&dir), Vec::<u32>::new(), "processes still reference {}", dir.display());
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!plane.root.join(format!("{db}.removing")).exists(), "the removal marker is left");
    for &port in ports {
        assert!(procs::port_free(port as u16), "port {port} of {db} is still taken");
    }
    for table in ["port_allocations", "database_members", "database_gateways"] {
        let rows = scalar(plane, &format!("SELECT count(*) FROM {table} WHERE database_id = $1::uuid"), db).await;
        assert_eq!(rows, 0, "{table} keeps rows of {db}");
    }
    assert_eq!(etcd_keys(plane, db).await, 0, "Patroni's keys of {db} are left in etcd");
    let root = pgplane_etcd::Client::new(&plane.etcd.admin()).unwrap();
    let user = pgplane_etcd::admin::database_user(db);
    assert!(!root.user_exists(&user).await.unwrap(), "the etcd user {user} is left");
    assert_jobs_once(plane, op).await
}

pub async fn ports_of(plane: &Plane, db: &str) -> Vec<i32> {
    let sql = "SELECT port FROM port_allocations WHERE database_id = $1::uuid";
    sqlx::query_scalar(sql).bind(db).fetch_all(&plane.pool).await.unwrap()
}
