//! Daily backups: the settings a tenant sees (on/off, the hour or the platform's, refused on a
//! plan without daily backups) and the timer the workflows keep in step with them (create,
//! settings, plan change, delete, on fake agents); two schedulers on a clock moved across three
//! days start exactly one scheduled backup per day; a firing's job run twice, or while another
//! operation holds the database; and retention of scheduled backups by the plan's tiers.

use chrono::{DateTime, Duration as Days, Utc};
use pgplane_core::backup::daily::platform_hour;
use pgplane_core::ids::DatabaseId;
use pgplane_scheduler::queue::Wakers;
use pgplane_scheduler::timers::{self, ManualClock, TimersConfig};
use pgplane_store::jobs::Claimed;
use pgplane_store::Store;
use pgplane_tests::fake_agent::{fake_agent, lab, run_op, Mode};
use pgplane_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The database's daily timer as operators list it, if any.
async fn timer_of(store: &Store, db: &str) -> Option<pgplane_core::timer::Timer> {
    store.timer_get(&format!("backup:{db}")).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_backup_follows_the_settings_the_plan_and_the_database() {
    let lab = lab().await;
    let _agent = fake_agent(&lab.agent_api, "host-a", Mode::Succeed).await;
    let owner = &lab.owner;
    let op = owner
        .post(&format!("/v1/apps/{}/databases", lab.app_id), &json!({ "name": "main", "plan": "starter-1" }))
        .await;
    let db = run_op(&lab.app, owner, op).await["database_id"].as_str().unwrap().to_string();
    let id: DatabaseId = db.parse().unwrap();
    let settings = format!("/v1/databases/{db}/settings");

    // Created: on, at the platform's hour for this database.
    let (s, body) = owner.get(&settings).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let chosen = i64::from(platform_hour(id));
    assert_eq!(
        (body["backup_hour"].clone(), body["daily_backups"].clone(), body["effective_backup_hour"].clone()),
        (Value::Null, json!(true), json!(chosen)),
        "{body}"
    );
    let timer = timer_of(&lab.app.store, &db).await.expect("a daily timer after create");
    assert_eq!(timer.schedule, pgplane_core::timer::Schedule::Daily { hour: chosen as u8 });
    assert_eq!(timer.job_kind, "backup");

    // The tenant's hour moves it; `null` gives the choice back to the platform.
    let app = &lab.app;
    let patch = |body: Value| {
        let settings = settings.clone();
        async move { run_op(app, owner, owner.patch(&settings, &body).await).await }
    };
    let hour = (chosen + 5) % 24;
    let done = patch(json!({ "backup_hour": hour })).await;
    assert_eq!(done["params"]["changed"], json!(["backup_hour"]), "{done}");
    assert_eq!(owner.get(&settings).await.1["effective_backup_hour"], json!(hour));
    let timer = timer_of(&lab.app.store, &db).await.unwrap();
    assert_eq!(timer.schedule, pgplane_core::timer::Schedule::Daily { hour: hour as u8 });
    patch(json!({ "backup_hour": null })).await;
    let (_, body) = owner.get(&settings).await;
    assert_eq!((body["backup_hour"].clone(), body["effective_backup_hour"].clone()), (Value::Null, json!(chosen)));
    // Absent keeps it (a change of something else).
    patch(json!({ "backup_hour": 2 })).await;
    patch(json!({ "allowed_cidrs": ["10.0.0.0/8"] })).await;
    assert_eq!(owner.get(&settings).await.1["backup_hour"], json!(2));

    // Off: no timer, no effective hour; on again: back at its hour.
    let done = patch(json!({ "daily_backups": false })).await;
    assert_eq!(done["params"]["changed"], json!(["daily_backups"]), "{done}");
    let (_, body) = owner.get(&settings).await;
    assert_eq!((body["daily_backups"].clone(), body["effective_backup_hour"].clone()), (json!(false), Value::Null));
    assert!(timer_of(&lab.app.store, &db).await.is_none());
    patch(json!({ "daily_backups": true })).await;
    assert_eq!(timer_of(&lab.app.store, &db).await.unwrap().schedule, pgplane_core::timer::Schedule::Daily { hour: 2 });

    // Onto Sandbox (no daily backups): the timer goes, and turning them on is refused.
    let change = format!("/v1/databases/{db}/change-plan");
    run_op(&lab.app, owner, owner.post(&change, &json!({ "plan": "sandbox" })).await).await;
    assert!(timer_of(&lab.app.store, &db).await.is_none());
    let (_, body) = owner.get(&settings).await;
    assert_eq!((body["daily_backups"].clone(), body["effective_backup_hour"].clone()), (json!(false), Value::Null));
    let (s, problem) = owner.patch(&settings, &json!({ "daily_backups": true })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "daily_backups", "{problem}");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("no daily backups"), "{problem}");
    // Back onto a plan with them: on again (the default), at the tenant's hour.
    run_op(&lab.app, owner, owner.post(&change, &json!({ "plan": "starter-1" })).await).await;
    assert_eq!(timer_of(&lab.app.store, &db).await.unwrap().schedule, pgplane_core::timer::Schedule::Daily { hour: 2 });

    // Operators list it; deleted, it is gone.
    let (s, page) = lab.app.operator().get("/v1/timers").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page["items"].as_array().unwrap().iter().any(|t| t["name"] == format!("backup:{db}")), "{page}");
    run_op(&lab.app, owner, owner.delete(&format!("/v1/databases/{db}")).await).await;
    assert!(timer_of(&lab.app.store, &db).await.is_none());
}

#[tokio::test]
async fn sandbox_databases_are_created_without_daily_backups() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let path = format!("/v1/apps/{app_id}/databases");
    let (s, problem) =
        owner.post(&path, &json!({ "name": "main", "plan": "sandbox", "settings": { "daily_backups": true } })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "settings.daily_backups", "{problem}");
    let (s, op) = owner.post(&path, &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let (_, settings) = owner.get(&format!("/v1/databases/{}/settings", op["database_id"].as_str().unwrap())).await;
    assert_eq!(settings["daily_backups"], json!(false), "{settings}");
    assert_eq!(settings["effective_backup_hour"], Value::Null, "{settings}");
}

/// A database that is available with no operation in progress, without a scheduler: its
/// create operation marked done.
async fn available_database(app: &pgplane_tests::TestApp, plan: &str) -> DatabaseId {
    let owner = app.user(&format!("owner-{plan}@a.test")).await;
    let (_, app_id) = app.tenant_with_app(&owner, plan).await;
    let (s, op) = owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": plan })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let db: DatabaseId = op["database_id"].as_str().unwrap().parse().unwrap();
    finish_operations(app.store.pool(), db).await;
    sqlx::query("UPDATE databases SET status = 'available' WHERE id = $1")
        .bind(db)
        .execute(app.store.pool())
        .await
        .unwrap();
    db
}

/// What the backup workflow would do, without agents: every open operation of `db` ends, its
/// backups done.
async fn finish_operations(pool: &sqlx::PgPool, db: DatabaseId) {
    sqlx::query(
        "UPDATE backups SET status = 'done', size_bytes = 1, sha256 = repeat('a', 64), finished_at = now() \
         WHERE database_id = $1 AND status IN ('pending', 'running')",
    )
    .bind(db)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE operations SET status = 'done', finished_at = now() WHERE database_id = $1 AND status IN ('pending', 'running')",
    )
    .bind(db)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE jobs SET status = 'done', finished_at = now() WHERE database_id = $1 AND queue = 'scheduler'")
        .bind(db)
        .execute(pool)
        .await
        .unwrap();
}

/// The start times of the database's scheduled backups, oldest first.
async fn scheduled(pool: &sqlx::PgPool, db: DatabaseId) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar(
        "SELECT started_at FROM backups WHERE database_id = $1 AND method = 'scheduled' ORDER BY started_at",
    )
    .bind(db)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_across_three_days_take_one_scheduled_backup_a_day() {
    let app = spawn_app().await;
    let pool = app.store.pool().clone();
    let db = available_database(&app, "starter-1").await;
    let start = t("2026-12-01T00:30:00Z");
    // The tenant's hour; the schedulers make the timer from it as they start (databases made
    // before they ran get theirs).
    sqlx::query("UPDATE databases SET backup_hour = 3 WHERE id = $1").bind(db).execute(&pool).await.unwrap();
    let clock = ManualClock::new(start);
    let (stop, stopped) = watch::channel(false);
    for name in ["scheduler-a", "scheduler-b"] {
        let store = Store::connect(&app.db_url, 3).await.unwrap();
        let config = TimersConfig { tick: Duration::from_millis(5), ..TimersConfig::default() };
        tokio::spawn(timers::run(
            store,
            Arc::new(clock.clone()),
            config,
            Wakers::default(),
            name.into(),
            stopped.clone(),
        ));
    }

    // Half an hour at a time across three days; whatever backup started is finished at once, as
    // its workflow would.
    let mut now = start;
    while now < start + Days::days(3) {
        now += Days::minutes(30);
        clock.set(now);
        settle(&pool, now).await;
        finish_operations(&pool, db).await;
    }
    let taken = scheduled(&pool, db).await;
    let days: Vec<String> = taken.iter().map(|t| t.format("%Y-%m-%d").to_string()).collect();
    assert_eq!(days, ["2026-12-01", "2026-12-02", "2026-12-03"], "{taken:?}");
    for t in &taken {
        assert_eq!(t.format("%H").to_string(), "03", "{taken:?}");
    }
    // They count against nothing: the manual quota is untouched.
    let quota = app.store.backup_quota(db, now).await.unwrap();
    assert_eq!(quota.used, 0, "{quota:?}");
    stop.send(true).unwrap();
}

/// Waits until every timer job enqueued so far has run (both schedulers had their chance).
async fn settle(pool: &sqlx::PgPool, now: DateTime<Utc>) {
    for _ in 0..1000 {
        let (due, open): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM timers WHERE next_fire_at <= $1), \
                    (SELECT count(*) FROM jobs WHERE queue = 'timers' AND status NOT IN ('done', 'dead') AND run_at <= now())",
        )
        .bind(now)
        .fetch_one(pool)
        .await
        .unwrap();
        if due == 0 && open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let timers: Vec<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT name, next_fire_at FROM timers").fetch_all(pool).await.unwrap();
    let jobs: Vec<(String, String, Option<String>, DateTime<Utc>)> =
        sqlx::query_as("SELECT kind, status, last_error, run_at FROM jobs WHERE queue = 'timers'")
            .fetch_all(pool)
            .await
            .unwrap();
    panic!("timers still due at {now}: {timers:?} {jobs:?}");
}

fn timer_job(db: DatabaseId, due_at: DateTime<Utc>) -> Claimed {
    Claimed {
        id: pgplane_core::ids::JobId::new(),
        queue: "timers".into(),
        kind: "backup".into(),
        payload: json!({ "database_id": db, "due_at": due_at, "timer": format!("backup:{db}") }),
        database_id: Some(db),
        operation_id: None,
        generation: None,
        attempts: 1,
        max_attempts: 3,
        lease_id: pgplane_core::ids::LeaseId::new(),
    }
}

#[tokio::test]
async fn a_firing_run_twice_or_on_a_busy_database() {
    let app = spawn_app().await;
    let pool = app.store.pool().clone();
    let db = available_database(&app, "starter-1").await;
    let due = t("2026-12-01T03:00:00Z");
    let run = |at: DateTime<Utc>| {
        let store = app.store.clone();
        async move {
            match pgplane_scheduler::daily::run_timer_job(&store, &timer_job(db, due), at).await {
                Ok(pgplane_scheduler::queue::Done::Result(v)) => v,
                other => panic!("{other:?}"),
            }
        }
    };
    let first = run(due + Days::seconds(1)).await;
    assert!(first["backup_id"].is_string(), "{first}");
    finish_operations(&pool, db).await;
    // The same firing's job again: nothing new.
    let again = run(due + Days::seconds(2)).await;
    assert!(again["skipped"].is_string(), "{again}");
    assert_eq!(scheduled(&pool, db).await.len(), 1);

    // The next day, another operation holds the database: postponed, not lost.
    let tomorrow = due + Days::days(1);
    sqlx::query(
        "INSERT INTO operations (id, tenant_id, database_id, kind, status, params) \
         SELECT $1, tenant_id, id, 'restart', 'running', '{}' FROM databases WHERE id = $2",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(db)
    .execute(&pool)
    .await
    .unwrap();
    let busy = match pgplane_scheduler::daily::run_timer_job(&app.store, &timer_job(db, tomorrow), tomorrow).await {
        Ok(pgplane_scheduler::queue::Done::Result(v)) => v,
        other => panic!("{other:?}"),
    };
    assert!(busy["postponed"].is_string(), "{busy}");
    let later: (DateTime<Utc>, Value) = sqlx::query_as("SELECT run_at, payload FROM jobs WHERE id = $1")
        .bind(uuid::Uuid::parse_str(busy["next_job"].as_str().unwrap()).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(later.0 > Utc::now() + Days::minutes(9), "{later:?}");
    assert_eq!(later.1["deferred"], 1);
    assert_eq!(later.1["due_at"], json!(tomorrow));
    assert_eq!(scheduled(&pool, db).await.len(), 1);
}

#[tokio::test]
async fn retention_keeps_the_plans_tiers_of_scheduled_backups() {
    let app = spawn_app().await;
    let pool = app.store.pool().clone();
    // Starter: 7 days, 4 weeks, no months.
    let db = available_database(&app, "starter-1").await;
    let now = t("2026-12-31T12:00:00Z");
    let mut ids = Vec::new();
    for day in 0..40 {
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO backups (id, tenant_id, database_id, method, status, object_key, size_bytes, sha256, started_at) \
             SELECT $1, tenant_id, id, 'scheduled', 'done', 'k/' || $1, 1, repeat('b', 64), $3 FROM databases WHERE id = $2",
        )
        .bind(id)
        .bind(db)
        .bind(now - Days::days(day) - Days::hours(9))
        .execute(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let dropped = app.store.backup_retention_sweep(now).await.unwrap();
    let kept: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT started_at FROM backups WHERE database_id = $1 AND deleted_at IS NULL ORDER BY started_at DESC",
    )
    .bind(db)
    .fetch_all(&pool)
    .await
    .unwrap();
    let days: Vec<String> = kept.iter().map(|t| t.format("%m-%d").to_string()).collect();
    // The last 7 days (Friday 25th to Thursday 31st), then the newest of each earlier ISO week
    // of the last 4 (Sundays 20th and 13th; the 27th is kept as a day already).
    assert_eq!(days, ["12-31", "12-30", "12-29", "12-28", "12-27", "12-26", "12-25", "12-20", "12-13"]);
    assert_eq!(dropped, 31);
    let evicted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM database_events WHERE database_id = $1 AND kind = 'backup_evicted' AND detail->>'reason' = 'retention'",
    )
    .bind(db)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(evicted, 31);
    // Their objects are deleted by the backups' deletion job, one each.
    let deletions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'backup_delete'").fetch_one(&pool).await.unwrap();
    assert_eq!(deletions, 31);
    // Again: nothing more.
    assert_eq!(app.store.backup_retention_sweep(now).await.unwrap(), 0);
}
