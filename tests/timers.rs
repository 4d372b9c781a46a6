//! Durable timers on real PostgreSQL with two schedulers' timer loops racing on a clock the
//! test moves: a daily timer fires once per day crossed while they run, once after three days
//! down (missed days collapse), never twice for one due time; the retention sweep its timer
//! starts; the daily backup hook; and the operators' list.

use chrono::{DateTime, Duration as Days, Utc};
use pgplane_core::timer::Schedule;
use pgplane_scheduler::queue::Wakers;
use pgplane_scheduler::timers::{self, ManualClock, TimersConfig, RETENTION_TIMER};
use pgplane_store::jobs::NewJob;
use pgplane_store::retention::Retention;
use pgplane_store::timers::NewTimer;
use pgplane_store::Store;
use pgplane_tests::{fresh_database, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A queue no worker runs, so the jobs timers enqueue stay to be counted.
const COUNTED: &str = "test-timers";

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn daily(name: &str, hour: u8) -> NewTimer {
    let mut timer = NewTimer::new(name, Schedule::Daily { hour }, "count");
    timer.job_queue = COUNTED.into();
    timer
}

/// The due times each timer's jobs were enqueued for, in order.
async fn firings(pool: &sqlx::PgPool, name: &str) -> Vec<DateTime<Utc>> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'due_at' FROM jobs WHERE queue = $1 AND payload->>'timer' = $2 ORDER BY payload->>'due_at'",
    )
    .bind(COUNTED)
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap();
    due.iter().map(|d| d.parse().unwrap()).collect()
}

/// Waits until no timer is due at `now` any more (both loops had their chance).
async fn settle(pool: &sqlx::PgPool, now: DateTime<Utc>) {
    for _ in 0..500 {
        let due: i64 = sqlx::query_scalar("SELECT count(*) FROM timers WHERE next_fire_at <= $1")
            .bind(now)
            .fetch_one(pool)
            .await
            .unwrap();
        if due == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timers still due at {now}");
}

/// A scheduler's timer machinery on a pool of its own, with the test's clock.
fn scheduler(store: Store, clock: &ManualClock, name: &str, stop: &watch::Receiver<bool>) {
    let config = TimersConfig { tick: Duration::from_millis(5), ..TimersConfig::default() };
    tokio::spawn(timers::run(store, Arc::new(clock.clone()), config, Wakers::default(), name.into(), stop.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_fire_each_daily_timer_once_per_due_time() {
    let url = fresh_database().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let setup = Store::connect(&url, 2).await.unwrap();
    let start = t("2026-12-01T00:30:00Z");
    let clock = ManualClock::new(start);
    let names = [("early", 0u8), ("morning", 3), ("late", 23)];
    for (name, hour) in names {
        setup.timer_upsert(&daily(name, hour), start).await.unwrap();
    }
    let (stop, stopped) = watch::channel(false);
    scheduler(Store::connect(&url, 3).await.unwrap(), &clock, "scheduler-a", &stopped);
    scheduler(Store::connect(&url, 3).await.unwrap(), &clock, "scheduler-b", &stopped);

    // Running across three days, the clock moving 20 minutes at a time: once per day crossed.
    let mut now = start;
    while now < start + Days::days(3) {
        now += Days::minutes(20);
        clock.set(now);
        settle(&pool, now).await;
    }
    let days = |from: &str, n: i64| (0..n).map(|i| t(from) + Days::days(i)).collect::<Vec<_>>();
    assert_eq!(firings(&pool, "early").await, days("2026-12-02T00:00:00Z", 3));
    assert_eq!(firings(&pool, "morning").await, days("2026-12-01T03:00:00Z", 3));
    assert_eq!(firings(&pool, "late").await, days("2026-12-01T23:00:00Z", 3));

    // Both schedulers down for three days, then back: one firing each, for the slot missed
    // last, and the next due time counts from now.
    stop.send(true).unwrap();
    now += Days::days(3);
    clock.set(now);
    let (stop, stopped) = watch::channel(false);
    scheduler(Store::connect(&url, 3).await.unwrap(), &clock, "scheduler-a", &stopped);
    scheduler(Store::connect(&url, 3).await.unwrap(), &clock, "scheduler-b", &stopped);
    settle(&pool, now).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (name, hour) in names {
        let fired = firings(&pool, name).await;
        assert_eq!(fired.len(), 4, "{name}: {fired:?}");
        let timer = setup.timer_get(name).await.unwrap();
        assert_eq!(timer.last_fired_at, Some(now), "{name}");
        let next = timer.next_fire_at.unwrap();
        assert!(next > now && next <= now + Days::days(1), "{name}: next {next} after {now}");
        assert_eq!(next.format("%H:%M").to_string(), format!("{hour:02}:00"));
        assert!(timer.last_job_id.is_some());
    }
    // The schedulers' own retention timer exists once, however many started.
    let retention: i64 = sqlx::query_scalar("SELECT count(*) FROM timers WHERE name = $1")
        .bind(RETENTION_TIMER)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(retention, 1);
    stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_firings_never_enqueue_twice() {
    let url = fresh_database().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (a, b) = (Store::connect(&url, 2).await.unwrap(), Store::connect(&url, 2).await.unwrap());
    let start = t("2026-12-01T00:00:00Z");
    for i in 0..20 {
        let mut timer = daily(&format!("t{i}"), (i % 24) as u8);
        timer.schedule = Schedule::Every { minutes: 5 };
        a.timer_upsert(&timer, start).await.unwrap();
    }
    let mut fired = 0;
    for step in 1..=30 {
        let now = start + Days::minutes(5 * step);
        let (x, y) = tokio::join!(a.timer_fire_due(now, 100), b.timer_fire_due(now, 100));
        fired += x.unwrap().len() + y.unwrap().len();
    }
    assert_eq!(fired, 20 * 30);
    // A `once` timer fires once, late or not, and then never again.
    let mut once = daily("once", 0);
    once.schedule = Schedule::Once { at: start + Days::minutes(1) };
    a.timer_upsert(&once, start).await.unwrap();
    let later = start + Days::days(1);
    let (x, y) = tokio::join!(a.timer_fire_due(later, 100), b.timer_fire_due(later, 100));
    let names: Vec<String> = x.unwrap().into_iter().chain(y.unwrap()).map(|f| f.name).filter(|n| n == "once").collect();
    assert_eq!(names, ["once"]);
    assert_eq!(a.timer_get("once").await.unwrap().next_fire_at, None);
    let again = a.timer_fire_due(later + Days::days(1), 100).await.unwrap();
    assert!(again.iter().all(|f| f.name != "once"), "{again:?}");
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM jobs GROUP BY payload->>'timer', payload->>'due_at' HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_timer_sweeps_old_jobs_attempts_and_idempotency_keys() {
    let url = fresh_database().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let store = Store::connect(&url, 3).await.unwrap();
    let mut ids = Vec::new();
    for (status, age_days) in [("done", 31), ("dead", 40), ("done", 2), ("queued", 60)] {
        let id = store.job_enqueue(&NewJob::new("q", "old", json!({}))).await.unwrap();
        sqlx::query(
            "UPDATE jobs SET status = $2, attempts = 1, finished_at = CASE WHEN $2 = 'queued' THEN NULL \
                ELSE now() - make_interval(days => $3) END, created_at = now() - make_interval(days => $3) WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(age_days)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO job_attempts (job_id, attempt, worker) VALUES ($1, 1, 'w')")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        ids.push(id);
    }
    // A timer whose last job goes keeps its other fields.
    let mut keeper = NewTimer::new("keeper", Schedule::Every { minutes: 10_000 }, "count");
    keeper.job_queue = COUNTED.into();
    store.timer_upsert(&keeper, Utc::now()).await.unwrap();
    sqlx::query("UPDATE timers SET last_job_id = $1 WHERE name = 'keeper'").bind(ids[0]).execute(&pool).await.unwrap();
    let user = uuid::Uuid::new_v4();
    for (key, hours) in [("old", 25), ("fresh", 1)] {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, method, path, request_hash, created_at) \
             VALUES ($1, $2, 'POST', '/v1/x', '\\x00', now() - make_interval(hours => $3))",
        )
        .bind(user)
        .bind(key)
        .bind(hours)
        .execute(&pool)
        .await
        .unwrap();
    }

    // The scheduler makes its retention timer at start; the sweep runs when the clock reaches it.
    let clock = ManualClock::new(Utc::now());
    let (stop, stopped) = watch::channel(false);
    let config =
        TimersConfig { tick: Duration::from_millis(10), retention_every_minutes: 60, retention: Retention::default() };
    tokio::spawn(timers::run(store.clone(), Arc::new(clock.clone()), config, Wakers::default(), "s".into(), stopped));
    let mut timer = None;
    for _ in 0..300 {
        if let Ok(t) = store.timer_get(RETENTION_TIMER).await {
            timer = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let timer = timer.expect("the retention timer");
    assert!(timer.last_fired_at.is_none());
    clock.advance(Days::minutes(61));
    let mut result = None;
    for _ in 0..1000 {
        let t = store.timer_get(RETENTION_TIMER).await.unwrap();
        if let Some(job) = t.last_job_id {
            let job = store.job_get(job).await.unwrap();
            if job.status.as_str() == "done" {
                result = Some(job.id);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sweep = result.expect("the retention sweep ran");
    let swept: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM jobs WHERE id = $1").bind(sweep).fetch_one(&pool).await.unwrap();
    assert_eq!(swept, json!({ "jobs": 2, "job_attempts": 2, "idempotency_keys": 1, "timers": 0 }));
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE queue = 'q' ORDER BY id").fetch_all(&pool).await.unwrap();
    let mut kept = vec![ids[2].as_uuid(), ids[3].as_uuid()];
    kept.sort();
    assert_eq!(left, kept, "the recent and the unfinished jobs stay");
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys").fetch_all(&pool).await.unwrap();
    assert_eq!(keys, ["fresh"]);
    let keeper = store.timer_get("keeper").await.unwrap();
    assert_eq!(keeper.last_job_id, None);
    stop.send(true).unwrap();
}

#[tokio::test]
async fn daily_backup_timers_and_the_operators_list() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "A").await;
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let db: pgplane_core::ids::DatabaseId = op["database_id"].as_str().unwrap().parse().unwrap();
    let now = t("2026-12-01T10:00:00Z");

    let timer = app.store.timer_set_daily_backup(db, Some(3), now).await.unwrap().unwrap();
    assert_eq!(timer.name, format!("backup:{db}"));
    assert_eq!(timer.next_fire_at, Some(t("2026-12-02T03:00:00Z")));
    assert_eq!(timer.database_id, Some(db));
    // Asking again changes nothing; a new hour moves it.
    let again = app.store.timer_set_daily_backup(db, Some(3), now + Days::hours(20)).await.unwrap().unwrap();
    assert_eq!((again.id, again.next_fire_at), (timer.id, timer.next_fire_at));
    let moved = app.store.timer_set_daily_backup(db, Some(12), now).await.unwrap().unwrap();
    assert_eq!(moved.next_fire_at, Some(t("2026-12-01T12:00:00Z")));
    assert_eq!(moved.kind, "daily");

    let operator = app.operator();
    let (s, page) = operator.get("/v1/timers?limit=1").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["name"], format!("backup:{db}"));
    assert_eq!(page["items"][0]["schedule"], json!({ "kind": "daily", "hour": 12 }));
    assert_eq!(page["items"][0]["job_kind"], "backup");
    assert_eq!(page["items"][0]["next_fire_at"], "2026-12-01T12:00:00Z");
    assert!(page["next_cursor"].is_null(), "{page}");
    let (s, body) = owner.get("/v1/timers").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");

    assert!(app.store.timer_set_daily_backup(db, None, now).await.unwrap().is_none());
    let (_, page) = operator.get("/v1/timers").await;
    assert_eq!(page["items"], json!([]));

    // A deleted database's timer never fires, and the retention sweep removes it.
    app.store.timer_set_daily_backup(db, Some(3), now).await.unwrap();
    sqlx::query("UPDATE databases SET status = 'deleted' WHERE id = $1")
        .bind(db)
        .execute(app.store.pool())
        .await
        .unwrap();
    assert_eq!(app.store.timer_fire_due(now + Days::days(2), 10).await.unwrap(), vec![]);
    let swept = app.store.retention_sweep(now, &Retention::default()).await.unwrap();
    assert_eq!(swept.timers, 1);
    assert!(app.store.timer_get(&format!("backup:{db}")).await.is_err());
}
