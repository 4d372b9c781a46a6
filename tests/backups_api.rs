//! The backups API's refusals, without a scheduler (the end-to-end path with the real binaries
//! is `cli/tests/backups.rs`): a backup of another tenant cannot be restored, by naming one of
//! its databases as the target or one of its apps for a new database (404, nothing changes); a
//! backup still being taken cannot be restored or deleted (409); a database that is not
//! available takes no backup (409); bad restore bodies are 4xx.

use pgplane_tests::{spawn_app, Client, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A database of a new tenant (not provisioned: no scheduler runs) with one backup in `status`.
async fn database_with_backup(app: &TestApp, owner: &Client, tenant: &str, status: &str) -> (String, String, String) {
    let (tenant_id, app_id) = app.tenant_with_app(owner, tenant).await;
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let db = op["database_id"].as_str().unwrap().to_string();
    let backup = uuid::Uuid::now_v7();
    let done = status == "done";
    sqlx::query(
        "INSERT INTO backups (id, tenant_id, database_id, method, status, object_key, size_bytes, sha256) \
         VALUES ($1, $2::uuid, $3::uuid, 'manual', $4, 'databases/x/backups/y.dump', \
                 CASE WHEN $5 THEN 1 END, CASE WHEN $5 THEN repeat('a', 64) END)",
    )
    .bind(backup)
    .bind(&tenant_id)
    .bind(&db)
    .bind(status)
    .bind(done)
    .execute(app.store.pool())
    .await
    .expect("a backup row");
    (app_id, db, backup.to_string())
}

fn problem(answer: &(StatusCode, Value), status: StatusCode, kind: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["type"], format!("urn:pgplane:problem:{kind}"), "{}", answer.1);
}

#[tokio::test]
async fn another_tenants_backup_is_never_restored_and_unfinished_ones_are_refused() {
    let app = spawn_app().await;
    let alice = app.user("alice@a.test").await;
    let mallory = app.user("mallory@b.test").await;
    let (a_app, a_db, a_backup) = database_with_backup(&app, &alice, "A", "done").await;
    let (_, b_db, b_backup) = database_with_backup(&app, &mallory, "B", "done").await;

    // Mallory restores her own backup into Alice's database, or into a new one in Alice's app.
    let before = app.fingerprint().await;
    let path = format!("/v1/databases/{b_db}/backups/{b_backup}/restore");
    problem(
        &mallory.post(&path, &json!({ "target": "in_place", "database_id": a_db })).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    let body = json!({ "target": "new_database", "name": "stolen", "plan": "sandbox", "app_id": a_app });
    problem(&mallory.post(&path, &body).await, StatusCode::NOT_FOUND, "not-found");
    // Alice's backup under Mallory's database's path, and Mallory's under Alice's.
    let crossed = format!("/v1/databases/{b_db}/backups/{a_backup}/restore");
    problem(&mallory.post(&crossed, &json!({ "target": "in_place" })).await, StatusCode::NOT_FOUND, "not-found");
    let crossed = format!("/v1/databases/{a_db}/backups/{b_backup}");
    problem(&alice.get(&crossed).await, StatusCode::NOT_FOUND, "not-found");
    assert_eq!(before, app.fingerprint().await, "the refusals changed the control plane");

    // Bad bodies: an unknown target, an invalid name, an unknown plan.
    let path = format!("/v1/databases/{a_db}/backups/{a_backup}/restore");
    let (s, _) = alice.post(&path, &json!({ "target": "elsewhere" })).await;
    assert!(s.is_client_error(), "{s}");
    let bad = alice.post(&path, &json!({ "target": "new_database", "name": "Not A Name!", "plan": "nope" })).await;
    problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let fields: Vec<&str> = bad.1["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "plan"], "{}", bad.1);

    // The database is still being created: no backup, no restore into it.
    problem(&alice.post(&format!("/v1/databases/{a_db}/backups"), &json!({})).await, StatusCode::CONFLICT, "conflict");
    problem(&alice.post(&path, &json!({ "target": "in_place" })).await, StatusCode::CONFLICT, "conflict");
    assert_eq!(before, app.fingerprint().await, "the refusals changed the control plane");

    // A backup still being taken is neither restored nor deleted.
    let (_, c_db, c_backup) = database_with_backup(&app, &alice, "C", "running").await;
    let running = format!("/v1/databases/{c_db}/backups/{c_backup}");
    let answer = alice.post(&format!("{running}/restore"), &json!({ "target": "in_place" })).await;
    problem(&answer, StatusCode::CONFLICT, "conflict");
    assert_eq!(answer.1["code"], "backup_not_done");
    let answer = alice.delete(&running).await;
    problem(&answer, StatusCode::CONFLICT, "conflict");
    assert_eq!(answer.1["code"], "backup_in_progress");

    // The quota as the tenant sees it: a Sandbox keeps 2 manual backups, 1 a day.
    let (s, q) = alice.get(&format!("/v1/databases/{a_db}/backup-quota")).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!((q["max_total"].as_u64(), q["max_per_day"].as_u64(), q["used"].as_u64()), (Some(2), Some(1), Some(1)));
    assert_eq!(q["remaining_today"], 0, "the done backup was started today: {q}");
    // Deleting the done backup gives the quota back at once.
    let (s, _) = alice.delete(&format!("/v1/databases/{a_db}/backups/{a_backup}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, q) = alice.get(&format!("/v1/databases/{a_db}/backup-quota")).await;
    assert_eq!((q["used"].as_u64(), q["remaining_today"].as_u64()), (Some(0), Some(1)), "{q}");
    let (s, page) = alice.get(&format!("/v1/databases/{a_db}/backups")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["items"], json!([]), "{page}");
}
