//! Databases: create, change plan, delete and settings changes answer 202 with an operation
//! that stays pending (no scheduler runs here); invalid requests change nothing.

use pgplane_tests::{assert_problem, spawn_app, Answer, Client, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// An owner with a tenant and an app: (owner, tenant id, app id).
async fn setup(app: &TestApp) -> (Client, String, String) {
    let owner = app.user("owner@a.test").await;
    let (tenant, app_id) = app.tenant_with_app(&owner, "Acme").await;
    (owner, tenant, app_id)
}

async fn post_database(client: &Client, app_id: &str, body: Value) -> Answer {
    client.send(client.request(Method::POST, &format!("/v1/apps/{app_id}/databases")).json(&body)).await
}

/// Orders a database and returns its `create` operation.
async fn create_database(client: &Client, app_id: &str, name: &str, plan: &str) -> Value {
    let a = post_database(client, app_id, json!({ "name": name, "plan": plan })).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    a.body
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn db_of(op: &Value) -> String {
    op["database_id"].as_str().expect("database_id").to_string()
}

/// What the scheduler of a later issue will do: finish the create operation.
async fn simulate_provisioned(app: &TestApp, op: &Value) {
    let op_id: uuid::Uuid = id(op).parse().unwrap();
    let db_id: uuid::Uuid = db_of(op).parse().unwrap();
    sqlx::query(
        "UPDATE operations SET status = 'done', progress = 100, started_at = now(), finished_at = now() WHERE id = $1",
    )
    .bind(op_id)
    .execute(app.store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE databases SET status = 'available' WHERE id = $1")
        .bind(db_id)
        .execute(app.store.pool())
        .await
        .unwrap();
}

/// Jobs in the queue (enqueued in the same transaction as an operation).
async fn jobs(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(app.store.pool()).await.unwrap()
}

fn fields(problem: &Value) -> BTreeSet<String> {
    problem["errors"].as_array().expect("errors").iter().map(|e| e["field"].as_str().unwrap().to_string()).collect()
}

async fn addon(client: &Client, app_id: &str) -> Value {
    let (s, page) = client.get(&format!("/v1/apps/{app_id}/addons")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    page["items"][0].clone()
}

#[tokio::test]
async fn create_is_accepted_and_stays_pending() {
    let app = spawn_app().await;
    let (owner, tenant, app_id) = setup(&app).await;
    let a = post_database(
        &owner,
        &app_id,
        json!({ "name": "main", "plan": "starter-1", "settings": { "backup_hour": 3 } }),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let op = a.body;
    assert_eq!(a.headers["location"], format!("/v1/operations/{}", id(&op)).as_str());
    assert_eq!(
        (op["kind"].as_str(), op["status"].as_str(), op["progress"].as_i64()),
        (Some("create"), Some("pending"), Some(0))
    );
    assert_eq!(op["tenant_id"], tenant.as_str());
    assert_eq!(op["params"], json!({ "plan": "starter-1", "version": "15" }));
    assert_eq!((op["started_at"].clone(), op["finished_at"].clone()), (Value::Null, Value::Null));

    let (s, db) = owner.get(&format!("/v1/databases/{}", db_of(&op))).await;
    assert_eq!(s, StatusCode::OK, "{db}");
    assert_eq!(
        (db["status"].as_str(), db["plan"].as_str(), db["version"].as_str()),
        (Some("creating"), Some("starter-1"), Some("15"))
    );
    assert_eq!((db["name"].as_str(), db["app_id"].as_str()), (Some("main"), Some(app_id.as_str())));
    assert_eq!(
        db["settings"],
        json!({ "force_tls": false, "internet_exposure": false, "backup_hour": 3, "daily_backups": true,
                "effective_backup_hour": 3, "allowed_cidrs": [] })
    );
    assert_eq!(db["endpoint"], Value::Null);
    let (_, list) = owner.get(&format!("/v1/apps/{app_id}/databases")).await;
    assert_eq!(list["items"].as_array().map(|i| i.iter().map(id).collect::<Vec<_>>()), Some(vec![db_of(&op)]));

    // The addon bills from now on the ordered plan.
    let addon = addon(&owner, &app_id).await;
    assert_eq!((addon["database_id"].as_str(), addon["plan"].as_str()), (Some(db_of(&op).as_str()), Some("starter-1")));
    assert_eq!(addon["periods"].as_array().unwrap().len(), 1);
    assert_eq!(addon["periods"][0]["price_per_hour"], json!({ "amount_micros": 27400, "currency": "EUR" }));
    assert_eq!(addon["periods"][0]["ended_at"], Value::Null);

    // Its first job is queued with it; nothing carries it out, so it is still pending later.
    let queued: Vec<(String,)> = sqlx::query_as("SELECT status FROM jobs WHERE operation_id = $1")
        .bind(id(&op).parse::<uuid::Uuid>().unwrap())
        .fetch_all(app.store.pool())
        .await
        .unwrap();
    assert_eq!(queued, [("queued".to_string(),)]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, again) = owner.get(a.headers["location"].to_str().unwrap()).await;
    assert_eq!((s, again["status"].as_str(), again["progress"].as_i64()), (StatusCode::OK, Some("pending"), Some(0)));
    let (_, db) = owner.get(&format!("/v1/databases/{}", db_of(&op))).await;
    assert_eq!(db["status"], "creating");
}

#[tokio::test]
async fn invalid_create_lists_every_field_and_enqueues_nothing() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let before = app.fingerprint().await;
    let bad = json!({
        "name": "Main_DB", "plan": "gold", "version": "9",
        "settings": { "backup_hour": 25, "internet_exposure": true }
    });
    let a = post_database(&owner, &app_id, bad).await;
    assert_problem(a.status, &a.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let expected = ["name", "plan", "version", "settings.backup_hour", "settings.internet_exposure"];
    assert_eq!(fields(&a.body), expected.iter().map(|f| f.to_string()).collect(), "{}", a.body);
    let codes: BTreeSet<_> = a.body["errors"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, BTreeSet::from(["invalid", "unknown", "out_of_range", "force_tls_required"]));

    for (body, field) in [
        (json!({ "name": "main", "plan": "starter-1", "settings": { "backup_hour": -1 } }), "settings.backup_hour"),
        (json!({ "name": "main", "plan": "starter-3" }), "plan"),
        (json!({ "name": "", "plan": "starter-1" }), "name"),
        (json!({ "name": "main" }), "body"),
    ] {
        let a = post_database(&owner, &app_id, body).await;
        assert_problem(a.status, &a.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(fields(&a.body), BTreeSet::from([field.to_string()]), "{}", a.body);
    }
    assert_eq!(app.fingerprint().await, before, "a refused create left rows behind");
    assert_eq!(jobs(&app).await, 0, "a refused create enqueued a job");

    sqlx::query("UPDATE plans SET available = false WHERE id = 'starter-4'").execute(app.store.pool()).await.unwrap();
    let before = app.fingerprint().await;
    let a = post_database(&owner, &app_id, json!({ "name": "main", "plan": "starter-4" })).await;
    assert_problem(a.status, &a.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(a.body["errors"][0]["code"], "unavailable", "retired plans are not sold");
    assert_eq!(app.fingerprint().await, before);
    // Exposure with force TLS is fine, and the explicit default version is accepted.
    let ok = json!({ "name": "main", "plan": "sandbox", "version": "15", "settings": { "force_tls": true, "internet_exposure": true } });
    assert_eq!(post_database(&owner, &app_id, ok).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn names_the_platform_uses_are_refused_before_anything_is_placed_or_billed() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let before = app.fingerprint().await;
    // A database's name is also its tenant's role and PostgreSQL database.
    for name in ["postgres", "template0", "template1", "replicator", "patroni", "public", "pg_catalog"] {
        let a = post_database(&owner, &app_id, json!({ "name": name, "plan": "starter-1" })).await;
        assert_problem(a.status, &a.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(fields(&a.body), BTreeSet::from(["name".to_string()]), "{name}: {}", a.body);
        let code = a.body["errors"][0]["code"].as_str().unwrap();
        assert!(code == "reserved" || (name.starts_with("pg_") && code == "invalid"), "{name}: {}", a.body);
    }
    assert_eq!(app.fingerprint().await, before, "a refused name left rows behind (addon, billing period)");
    assert_eq!(jobs(&app).await, 0, "a refused name enqueued a job");
    let (_, page) = owner.get(&format!("/v1/apps/{app_id}/addons")).await;
    assert_eq!(page["items"], json!([]), "nothing is billed");
    create_database(&owner, &app_id, "postgres2", "starter-1").await;
}

#[tokio::test]
async fn duplicate_names_conflict_and_roll_back() {
    let app = spawn_app().await;
    let (owner, tenant, app_id) = setup(&app).await;
    create_database(&owner, &app_id, "main", "starter-1").await;
    let (s, other) = owner.post(&format!("/v1/tenants/{tenant}/apps"), &json!({ "name": "other" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let before = app.fingerprint().await;
    // Names are unique per tenant, across its apps.
    for target in [app_id.clone(), id(&other)] {
        let a = post_database(&owner, &target, json!({ "name": "main", "plan": "sandbox" })).await;
        assert_problem(a.status, &a.body, StatusCode::CONFLICT, "conflict");
        assert_eq!(a.body["code"], "name_taken");
    }
    assert_eq!(app.fingerprint().await, before, "the addon and period of a refused create were rolled back");
    assert_eq!(jobs(&app).await, 1, "only the first create's job");
}

#[tokio::test]
async fn non_public_plan_needs_an_operator_grant() {
    let app = spawn_app().await;
    let (owner, tenant, app_id) = setup(&app).await;
    let body = json!({ "name": "big", "plan": "business-16" });
    let before = app.fingerprint().await;
    let a = post_database(&owner, &app_id, body.clone()).await;
    assert_problem(a.status, &a.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(
        (a.body["errors"][0]["field"].as_str(), a.body["errors"][0]["code"].as_str()),
        (Some("plan"), Some("not_allowed"))
    );
    let grant = format!("/v1/tenants/{tenant}/plan-grants/business-16");
    let (s, answer) = owner.put(&grant).await;
    assert_problem(s, &answer, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.fingerprint().await, before);

    let (s, answer) = app.operator().put(&format!("/v1/tenants/{tenant}/plan-grants/no-such-plan")).await;
    assert_problem(s, &answer, StatusCode::NOT_FOUND, "not-found");
    let (s, answer) = app.operator().put(&grant).await;
    assert_eq!((s, answer), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(app.operator().put(&grant).await.0, StatusCode::NO_CONTENT, "granting twice is harmless");
    let a = post_database(&owner, &app_id, body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let (_, db) = owner.get(&format!("/v1/databases/{}", db_of(&a.body))).await;
    assert_eq!(db["plan"], "business-16");
}

#[tokio::test]
async fn change_plan_waits_for_the_pending_create() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let op = create_database(&owner, &app_id, "main", "starter-1").await;
    let before = app.fingerprint().await;
    let (s, body) =
        owner.post(&format!("/v1/databases/{}/change-plan", db_of(&op)), &json!({ "plan": "starter-2" })).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "operation_in_progress");
    assert_eq!(app.fingerprint().await, before, "plan and billing period untouched");
    assert_eq!(jobs(&app).await, 1, "only the create's job");
}

#[tokio::test]
async fn change_plan_moves_the_plan_and_the_billing_period() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let create = create_database(&owner, &app_id, "main", "starter-1").await;
    simulate_provisioned(&app, &create).await;
    let db = db_of(&create);
    let path = format!("/v1/databases/{db}/change-plan");

    let before = app.fingerprint().await;
    let (s, body) = owner.post(&path, &json!({ "plan": "starter-1" })).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "same_plan");
    for plan in ["nope", "business-16"] {
        let (s, body) = owner.post(&path, &json!({ "plan": plan })).await;
        assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(body["errors"][0]["field"], "plan");
    }
    assert_eq!(app.fingerprint().await, before);

    let a = owner.send(owner.request(Method::POST, &path).json(&json!({ "plan": "starter-2" }))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.headers["location"], format!("/v1/operations/{}", id(&a.body)).as_str());
    assert_eq!((a.body["kind"].as_str(), a.body["status"].as_str()), (Some("change_plan"), Some("pending")));
    assert_eq!(a.body["params"], json!({ "from_plan": "starter-1", "to_plan": "starter-2" }));
    let (_, got) = owner.get(&format!("/v1/databases/{db}")).await;
    assert_eq!((got["plan"].as_str(), got["status"].as_str()), (Some("starter-2"), Some("changing_plan")));

    let addon = addon(&owner, &app_id).await;
    assert_eq!((addon["plan"].as_str(), addon["ended_at"].clone()), (Some("starter-2"), Value::Null));
    let periods = addon["periods"].as_array().unwrap();
    assert_eq!(periods.len(), 2, "{addon}");
    assert_eq!((periods[0]["plan"].as_str(), periods[1]["plan"].as_str()), (Some("starter-1"), Some("starter-2")));
    assert!(periods[0]["ended_at"].is_string(), "the old period ended: {addon}");
    assert_eq!(periods[0]["ended_at"], periods[1]["started_at"], "no gap, no overlap");
    assert_eq!(periods[1]["ended_at"], Value::Null);
    assert_eq!(periods[1]["price_per_hour"]["amount_micros"], 54800);

    let (s, body) = owner.post(&path, &json!({ "plan": "starter-4" })).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("operation_in_progress")));
}

#[tokio::test]
async fn business_databases_start_synchronous_and_plan_changes_follow_the_follower() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let sync_of = |db: String| {
        let owner = &owner;
        async move { owner.get(&format!("/v1/databases/{db}/configuration")).await.1["synchronous_replication"].clone() }
    };
    let business = create_database(&owner, &app_id, "big", "business-1").await;
    assert_eq!(sync_of(db_of(&business)).await, json!(true));
    let starter = create_database(&owner, &app_id, "small", "starter-1").await;
    simulate_provisioned(&app, &starter).await;
    let db = db_of(&starter);
    assert_eq!(sync_of(db.clone()).await, json!(false));

    // Gaining a follower turns it on (the workflow applies it first), losing it turns it off.
    let (s, op) = owner.post(&format!("/v1/databases/{db}/change-plan"), &json!({ "plan": "business-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["params"]["synchronous_replication"], json!(true));
    assert_eq!(sync_of(db.clone()).await, json!(true));
    simulate_provisioned(&app, &op).await;
    let (s, op) = owner.post(&format!("/v1/databases/{db}/change-plan"), &json!({ "plan": "starter-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["params"]["synchronous_replication"], json!(false));
    assert_eq!(sync_of(db).await, json!(false));
}

#[tokio::test]
async fn delete_cancels_the_pending_operation_and_repeats_the_same_answer() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let create = create_database(&owner, &app_id, "main", "starter-1").await;
    let db = db_of(&create);
    let a = owner.send(owner.request(Method::DELETE, &format!("/v1/databases/{db}"))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let delete = a.body;
    assert_eq!(a.headers["location"], format!("/v1/operations/{}", id(&delete)).as_str());
    assert_eq!((delete["kind"].as_str(), delete["status"].as_str()), (Some("delete"), Some("pending")));

    let (_, canceled) = owner.get(&format!("/v1/operations/{}", id(&create))).await;
    assert_eq!(
        (canceled["status"].as_str(), canceled["error"].as_str()),
        (Some("canceled"), Some("superseded by deletion"))
    );
    assert!(canceled["finished_at"].is_string());
    let (s, again) = owner.delete(&format!("/v1/databases/{db}")).await;
    assert_eq!((s, id(&again)), (StatusCode::ACCEPTED, id(&delete)), "asking twice answers the same operation");

    let (_, got) = owner.get(&format!("/v1/databases/{db}")).await;
    assert_eq!(got["status"], "deleting");
    let addon = addon(&owner, &app_id).await;
    assert!(addon["ended_at"].is_string(), "{addon}");
    assert!(addon["periods"][0]["ended_at"].is_string(), "billing stops: {addon}");

    let before = app.fingerprint().await;
    let (s, body) = owner.post(&format!("/v1/databases/{db}/change-plan"), &json!({ "plan": "starter-2" })).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("database_deleting")));
    let (s, body) = owner.patch(&format!("/v1/databases/{db}/settings"), &json!({ "force_tls": true })).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("database_deleting")));
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn delete_waits_for_a_running_operation() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let create = create_database(&owner, &app_id, "main", "starter-1").await;
    let op_id: uuid::Uuid = id(&create).parse().unwrap();
    sqlx::query("UPDATE operations SET status = 'running', started_at = now(), progress = 40 WHERE id = $1")
        .bind(op_id)
        .execute(app.store.pool())
        .await
        .unwrap();
    let before = app.fingerprint().await;
    let (s, body) = owner.delete(&format!("/v1/databases/{}", db_of(&create))).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "operation_in_progress");
    assert!(body["detail"].as_str().unwrap().contains(&id(&create)), "names the running operation: {body}");
    assert_eq!(app.fingerprint().await, before);
    let (_, op) = owner.get(&format!("/v1/operations/{}", id(&create))).await;
    assert_eq!((op["status"].as_str(), op["progress"].as_i64()), (Some("running"), Some(40)));
}

/// What the scheduler would do: finish the database's pending or running operation.
async fn simulate_done(app: &TestApp, op: &Value) {
    let op_id: uuid::Uuid = id(op).parse().unwrap();
    sqlx::query("UPDATE operations SET status = 'done', progress = 100, finished_at = now() WHERE id = $1")
        .bind(op_id)
        .execute(app.store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn settings_are_read_and_patched_with_their_rules() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let create = create_database(&owner, &app_id, "main", "starter-1").await;
    let db = db_of(&create);
    let path = format!("/v1/databases/{db}/settings");
    let (s, settings) = owner.get(&path).await;
    // No hour chosen: the platform's, derived from the database.
    let chosen = pgplane_core::backup::daily::platform_hour(db.parse().unwrap());
    assert_eq!(
        (s, settings),
        (
            StatusCode::OK,
            json!({ "force_tls": false, "internet_exposure": false, "backup_hour": null, "daily_backups": true,
                    "effective_backup_hour": chosen, "allowed_cidrs": [] })
        )
    );
    // Settings reach the running database through an operation: not before it is available.
    let (s, body) = owner.patch(&path, &json!({ "force_tls": true })).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("not_available")), "{body}");
    simulate_provisioned(&app, &create).await;

    let before = app.fingerprint().await;
    for (patch, field, code) in [
        (json!({ "internet_exposure": true }), "internet_exposure", "force_tls_required"),
        (json!({ "backup_hour": 24 }), "backup_hour", "out_of_range"),
        (json!({ "backup_hour": -1 }), "backup_hour", "out_of_range"),
        (json!({ "force_tls": "yes" }), "body", "invalid"),
        (json!({ "allowed_cidrs": ["10.0.0.0/33"] }), "allowed_cidrs", "invalid"),
        (json!({ "allowed_cidrs": ["example.com"] }), "allowed_cidrs", "invalid"),
        (json!({ "allowed_cidrs": vec!["10.0.0.0/8"; 65] }), "allowed_cidrs", "too_many"),
    ] {
        let (s, body) = owner.patch(&path, &patch).await;
        assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(
            (body["errors"][0]["field"].as_str(), body["errors"][0]["code"].as_str()),
            (Some(field), Some(code)),
            "{patch}"
        );
    }
    assert_eq!(app.fingerprint().await, before);

    let none: [&str; 0] = [];
    for (patch, expected, changed) in [
        (
            json!({ "backup_hour": 0 }),
            json!({ "force_tls": false, "internet_exposure": false, "backup_hour": 0, "daily_backups": true,
                    "effective_backup_hour": 0, "allowed_cidrs": [] }),
            vec!["backup_hour"],
        ),
        (
            json!({ "force_tls": true, "internet_exposure": true, "backup_hour": 23,
                    "allowed_cidrs": ["203.0.113.9/24", "2001:db8::1", "203.0.113.0/24"] }),
            json!({ "force_tls": true, "internet_exposure": true, "backup_hour": 23, "daily_backups": true,
                    "effective_backup_hour": 23, "allowed_cidrs": ["203.0.113.0/24", "2001:db8::1/128"] }),
            vec!["force_tls", "internet_exposure", "allowed_cidrs", "backup_hour"],
        ),
        (
            json!({}),
            json!({ "force_tls": true, "internet_exposure": true, "backup_hour": 23, "daily_backups": true,
                    "effective_backup_hour": 23, "allowed_cidrs": ["203.0.113.0/24", "2001:db8::1/128"] }),
            none.to_vec(),
        ),
    ] {
        let (s, op) = owner.patch(&path, &patch).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{patch}: {op}");
        assert_eq!((op["kind"].as_str(), op["status"].as_str()), (Some("update_settings"), Some("pending")), "{op}");
        assert_eq!(op["params"]["changed"], json!(changed), "{patch}");
        assert_eq!(owner.get(&path).await.1, expected, "the desired settings show at once");
        // One operation at a time.
        let (s, body) = owner.patch(&path, &json!({ "backup_hour": 5 })).await;
        assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("operation_in_progress")), "{body}");
        assert_eq!(owner.get(&path).await.1, expected);
        simulate_done(&app, &op).await;
    }
    // Force TLS cannot be dropped while the database is exposed; both together can.
    let (s, body) = owner.patch(&path, &json!({ "force_tls": false })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(body["errors"][0]["code"], "force_tls_required");
    let (s, op) =
        owner.patch(&path, &json!({ "force_tls": false, "internet_exposure": false, "allowed_cidrs": [] })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(
        owner.get(&path).await.1,
        json!({ "force_tls": false, "internet_exposure": false, "backup_hour": 23, "daily_backups": true,
                "effective_backup_hour": 23, "allowed_cidrs": [] })
    );
}

#[tokio::test]
async fn operations_are_listed_newest_first() {
    let app = spawn_app().await;
    let (owner, _, app_id) = setup(&app).await;
    let create = create_database(&owner, &app_id, "main", "starter-1").await;
    simulate_provisioned(&app, &create).await;
    let db = db_of(&create);
    let (s, change) = owner.post(&format!("/v1/databases/{db}/change-plan"), &json!({ "plan": "starter-2" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{change}");
    let (s, delete) = owner.delete(&format!("/v1/databases/{db}")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{delete}");

    let (s, page) = owner.get(&format!("/v1/databases/{db}/operations")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    let seen: Vec<_> =
        items.iter().map(|o| (id(o), o["kind"].as_str().unwrap(), o["status"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [(id(&delete), "delete", "pending"), (id(&change), "change_plan", "canceled"), (id(&create), "create", "done")]
    );
    assert_eq!(page["next_cursor"], Value::Null);

    // Paged one at a time, the same order.
    let (_, first) = owner.get(&format!("/v1/databases/{db}/operations?limit=1")).await;
    assert_eq!(id(&first["items"][0]), id(&delete));
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = owner.get(&format!("/v1/databases/{db}/operations?limit=1&cursor={cursor}")).await;
    assert_eq!(id(&second["items"][0]), id(&change));

    for op in [&create, &change, &delete] {
        let (s, got) = owner.get(&format!("/v1/operations/{}", id(op))).await;
        assert_eq!(
            (s, got["database_id"].as_str(), got["kind"].clone()),
            (StatusCode::OK, Some(db.as_str()), op["kind"].clone())
        );
    }
    let (s, body) = owner.get(&format!("/v1/operations/{}", uuid::Uuid::now_v7())).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
}
