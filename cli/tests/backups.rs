//! Backups through the API with the real binaries (`pgplane api`, `scheduler`, `agent` with a
//! local backup storage): a database with real data (pgbench tables, jsonb, arrays, large
//! objects, a sequence, a view) backs up and restores to identical logical content, in place (the
//! connection URL unchanged) and into a new database; kill -9 of the agent in the middle of a
//! backup and of a restore leaves no partial object, an unchanged quota when it failed, and the
//! old content or the new one, never a mix; the manual quota evicts the oldest backup only after
//! the new one succeeded and refuses over the per-day cap with the next allowed time.

mod support;

use pgplane_tests::data_plane::psql;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::Plane;

const OP_TIMEOUT: Duration = Duration::from_secs(300);

fn bin(name: &str) -> PathBuf {
    let dir = pgplane_localpg::find_bindir(None).expect("PostgreSQL binaries");
    dir.join(name)
}

/// pgbench's tables plus the kinds of data a dump must carry, and a table of random text large
/// enough for a dump and a restore to run for a while (to be killed in the middle).
async fn fill(url: &str) {
    let out = tokio::process::Command::new(bin("pgbench"))
        .args(["-i", "-q", "-s", "1", url])
        .env_remove("PGPASSWORD")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    psql(
        url,
        "CREATE SEQUENCE invoice_no START 1000;\n\
         SELECT nextval('invoice_no') FROM generate_series(1, 17);\n\
         CREATE TABLE docs (id bigserial PRIMARY KEY, body jsonb NOT NULL, tags text[] NOT NULL, scores int[]);\n\
         INSERT INTO docs (body, tags, scores) SELECT jsonb_build_object('n', g, 'nested', jsonb_build_object('sq', g * g), 'list', jsonb_build_array(g, 'x', null)), \
             ARRAY['t' || g % 7, 'quote''s', 'ünïcode'], ARRAY[g, g + 1] FROM generate_series(1, 500) g;\n\
         CREATE TABLE files (name text PRIMARY KEY, blob oid NOT NULL);\n\
         INSERT INTO files SELECT 'f' || g, lo_from_bytea(0, convert_to(repeat('large object ' || g, 2000), 'UTF8')) FROM generate_series(1, 5) g;\n\
         CREATE VIEW rich_accounts AS SELECT aid, abalance FROM pgbench_accounts WHERE abalance > 0;\n\
         UPDATE pgbench_accounts SET abalance = aid % 97 WHERE aid % 10 = 0;\n\
         CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 1000000) g;",
    )
    .await
    .expect("the tenant's data");
}

/// A digest of the database's logical content: every table's rows (ordered), every sequence's
/// state, every view's definition and every large object's bytes.
async fn digest(url: &str) -> String {
    psql(
        url,
        "CREATE TEMP TABLE parts (part text);\n\
         DO $$ DECLARE r record; d text; BEGIN\n\
           FOR r IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n\
                    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v') ORDER BY 1::text LOOP\n\
             IF r.relkind = 'r' THEN\n\
               EXECUTE format('SELECT %L || count(*) || md5(coalesce(string_agg(t::text, E''\\n'' ORDER BY t::text), '''')) FROM %s t', r.rel::text, r.rel) INTO d;\n\
             ELSIF r.relkind = 'S' THEN\n\
               EXECUTE format('SELECT %L || last_value || is_called FROM %s', r.rel::text, r.rel) INTO d;\n\
             ELSE\n\
               d := r.rel::text || pg_get_viewdef(r.rel);\n\
             END IF;\n\
             INSERT INTO parts VALUES (d);\n\
           END LOOP;\n\
         END $$;\n\
         SELECT md5(string_agg(part, '|' ORDER BY part)) || ':' || (SELECT count(*) FROM parts) || ':' ||\n\
           (SELECT md5(coalesce(string_agg(md5(lo_get(oid)), ',' ORDER BY md5(lo_get(oid))), '')) FROM pg_largeobject_metadata) FROM parts;",
    )
    .await
    .expect("the digest")
}

/// Files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The database's objects in backup storage (file names) and the staging files beside them.
fn stored(plane: &Plane, db: &str) -> (Vec<String>, Vec<String>) {
    let files = walk(&plane.backups_dir().join("databases").join(db));
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
    names.into_iter().partition(|n| !n.contains('#'))
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Waits until the operation has ended; returns it.
async fn ended(plane: &Plane, op: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, body) = plane.call(Method::GET, &format!("/v1/operations/{op}"), None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        if matches!(body["status"].as_str(), Some("done" | "error" | "canceled")) {
            return body;
        }
        assert!(t0.elapsed() < OP_TIMEOUT, "operation {op} not ended within {OP_TIMEOUT:?}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs a backup; returns its operation id.
async fn backup(plane: &Plane, db: &str) -> String {
    let (s, op) = plane.call(Method::POST, &format!("/v1/databases/{db}/backups"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "backup");
    op["id"].as_str().unwrap().to_string()
}

/// The backup an operation took.
async fn backup_of(plane: &Plane, db: &str, op: &str) -> Value {
    let (s, page) = plane.call(Method::GET, &format!("/v1/databases/{db}/backups?limit=200"), None).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().iter().find(|b| b["operation_id"] == op).cloned().expect("the operation's backup")
}

async fn quota(plane: &Plane, db: &str) -> Value {
    let (s, q) = plane.call(Method::GET, &format!("/v1/databases/{db}/backup-quota"), None).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    q
}

/// Waits until a running agent job of `kind` of operation `op` has got as far as `ready` says.
async fn when_running(plane: &Plane, op: &str, kind: &str, ready: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE operation_id = $1::uuid AND kind = $2 AND status = 'running'",
        )
        .bind(op)
        .bind(kind)
        .fetch_one(&plane.pool)
        .await
        .unwrap();
        if running > 0 && ready().await {
            return;
        }
        assert!(Instant::now() < deadline, "the {kind} job of {op} never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_restore_identically_survive_a_killed_agent_and_keep_the_quota() {
    let mut plane = Plane::start(support::port_window(7)).await;
    let (db, op) = plane.create_database("shop").await;
    plane.wait_done(&op, OP_TIMEOUT).await;
    let url = plane.url(&db).await;
    fill(&url).await;
    let original = digest(&url).await;

    // A backup whose agent is killed -9 in the middle of the upload: retried, or ended cleanly.
    let op = backup(&plane, &db).await;
    when_running(&plane, &op, "backup_dump", async || !stored(&plane, &db).1.is_empty()).await;
    plane.agent.kill9();
    plane.agent.start();
    let end = ended(&plane, &op).await;
    eprintln!("the backup whose agent was killed ended {}: {}", end["status"], end["error"]);
    let (objects, staging) = stored(&plane, &db);
    assert!(staging.is_empty(), "staging files left: {staging:?}");
    let taken = backup_of(&plane, &db, &op).await;
    let op = if end["status"] == "done" {
        assert_eq!(taken["status"], "done", "{taken}");
        op
    } else {
        // Failed: no object stays, and the quota counts nothing.
        assert_eq!(taken["status"], "error", "{taken}");
        assert!(objects.is_empty(), "a failed backup left {objects:?}");
        assert_eq!(quota(&plane, &db).await["used"], 0);
        let again = backup(&plane, &db).await;
        plane.wait_done(&again, OP_TIMEOUT).await;
        again
    };
    let taken = backup_of(&plane, &db, &op).await;
    let bid = taken["id"].as_str().unwrap().to_string();
    let (objects, _) = stored(&plane, &db);
    assert_eq!(objects, vec![format!("{bid}.dump")], "exactly the backup's object");
    let file = plane.backups_dir().join(format!("databases/{db}/backups/{bid}.dump"));
    assert_eq!(taken["sha256"].as_str().unwrap(), sha256_of(&file), "the recorded SHA-256 is the object's");
    assert_eq!(taken["size_bytes"].as_u64().unwrap(), std::fs::metadata(&file).unwrap().len());
    assert_eq!(taken["member"], "m0", "{taken}");
    assert!(taken["postgres_version"].as_str().unwrap().starts_with("15"), "{taken}");
    assert_eq!(quota(&plane, &db).await["used"], 1);

    // Changed after the backup: the restore must bring the backup's content back.
    psql(
        &url,
        "DELETE FROM pgbench_accounts WHERE aid <= 1000; DROP VIEW rich_accounts; SELECT nextval('invoice_no');",
    )
    .await
    .unwrap();
    let changed = digest(&url).await;
    assert_ne!(changed, original);

    // Restore in place, the agent killed -9 while pg_restore fills the scratch database.
    let (_, conn_before) = plane.call(Method::GET, &format!("/v1/databases/{db}/connection"), None).await;
    let path = format!("/v1/databases/{db}/backups/{bid}/restore");
    let (s, restore) = plane.call(Method::POST, &path, Some(json!({ "target": "in_place" }))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{restore}");
    assert_eq!(restore["kind"], "restore");
    let restore = restore["id"].as_str().unwrap().to_string();
    let scratch = "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgplane_restore_%'";
    when_running(&plane, &restore, "backup_restore", async || psql(&url, scratch).await.as_deref() == Ok("1")).await;
    plane.agent.kill9();
    let meanwhile = digest(&url).await;
    assert!(meanwhile == changed || meanwhile == original, "a mix of old and new content");
    plane.agent.start();
    let end = ended(&plane, &restore).await;
    eprintln!("the restore whose agent was killed ended {}: {}", end["status"], end["error"]);
    let after = digest(&url).await;
    if end["status"] == "done" {
        assert_eq!(after, original, "restored in place to the backup's content");
    } else {
        assert_eq!(after, changed, "a failed restore leaves the old content: {end}");
        let (s, again) = plane.call(Method::POST, &path, Some(json!({ "target": "in_place" }))).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{again}");
        plane.wait_done(again["id"].as_str().unwrap(), OP_TIMEOUT).await;
        assert_eq!(digest(&url).await, original, "restored in place to the backup's content");
    }
    let (_, conn_after) = plane.call(Method::GET, &format!("/v1/databases/{db}/connection"), None).await;
    assert_eq!(conn_before["url"], conn_after["url"], "the connection URL is unchanged");
    assert_eq!(psql(&url, scratch).await.as_deref(), Ok("0"), "no scratch database left");

    // Into a new database on a chosen plan.
    let body = json!({ "target": "new_database", "name": "shop-copy", "plan": "starter-512" });
    let (s, create) = plane.call(Method::POST, &path, Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{create}");
    assert_eq!(create["kind"], "create");
    plane.wait_done(create["id"].as_str().unwrap(), OP_TIMEOUT).await;
    let copy = create["database_id"].as_str().unwrap();
    assert_eq!(digest(&plane.url(copy).await).await, original, "the new database holds the backup's content");

    // The quota, on a Sandbox database: 2 manual backups kept, 1 a day.
    let app = plane.app.clone();
    let body = json!({ "name": "tiny", "plan": "sandbox" });
    let (s, op) = plane.call(Method::POST, &format!("/v1/apps/{app}/databases"), Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    plane.wait_done(op["id"].as_str().unwrap(), OP_TIMEOUT).await;
    let tiny = op["database_id"].as_str().unwrap().to_string();
    let first = backup(&plane, &tiny).await;
    plane.wait_done(&first, OP_TIMEOUT).await;
    let first = backup_of(&plane, &tiny, &first).await["id"].as_str().unwrap().to_string();
    let (s, refused) = plane.call(Method::POST, &format!("/v1/databases/{tiny}/backups"), None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["type"], "urn:pgplane:problem:quota-exceeded");
    assert_eq!(refused["code"], "backup_daily_cap");
    let tomorrow =
        (chrono::Utc::now().date_naive() + chrono::Duration::days(1)).and_hms_opt(0, 0, 0).unwrap().and_utc();
    let next: chrono::DateTime<chrono::Utc> = refused["next_allowed_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, tomorrow, "{refused}");
    let q = quota(&plane, &tiny).await;
    assert_eq!((q["used"].as_u64(), q["remaining_today"].as_u64()), (Some(1), Some(0)), "{q}");
    // The clock moves on a day (the backup's start moves back one).
    let yesterday = "UPDATE backups SET started_at = started_at - interval '1 day' WHERE database_id = $1::uuid";
    sqlx::query(yesterday).bind(&tiny).execute(&plane.pool).await.unwrap();
    let second = backup(&plane, &tiny).await;
    plane.wait_done(&second, OP_TIMEOUT).await;
    let q = quota(&plane, &tiny).await;
    assert_eq!((q["used"].as_u64(), q["next_evicts"].as_str()), (Some(2), Some(first.as_str())), "{q}");
    sqlx::query(yesterday).bind(&tiny).execute(&plane.pool).await.unwrap();
    let third = backup(&plane, &tiny).await;
    plane.wait_done(&third, OP_TIMEOUT).await;
    let (_, page) = plane.call(Method::GET, &format!("/v1/databases/{tiny}/backups"), None).await;
    let ids: Vec<&str> = page["items"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "N+1 backups keep N: {page}");
    assert!(!ids.contains(&first.as_str()), "the oldest was evicted: {page}");
    let (s, _) = plane.call(Method::GET, &format!("/v1/databases/{tiny}/backups/{first}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&plane, &tiny).0.iter().any(|o| o.starts_with(&first)) {
        assert!(Instant::now() < deadline, "the evicted backup's object stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored(&plane, &tiny).0.len(), 2);
    let (_, events) = plane.call(Method::GET, &format!("/v1/databases/{tiny}/events"), None).await;
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"backup_evicted") && kinds.contains(&"backup_done"), "{events}");

    // Deleting a backup: gone from the list at once, its object then its row after.
    let (s, _) = plane.call(Method::DELETE, &format!("/v1/databases/{db}/backups/{bid}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, page) = plane.call(Method::GET, &format!("/v1/databases/{db}/backups"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM backups WHERE id = $1::uuid")
            .bind(&bid)
            .fetch_one(&plane.pool)
            .await
            .unwrap();
        if rows == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted backup's row stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored(&plane, &db).0.is_empty(), "the row went, and the object before it");
}
