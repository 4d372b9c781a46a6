//! Cross-cutting rules of the HTTP layer: pagination, Idempotency-Key, body size, rate
//! limits, request ids, routing errors and the probes.

use pgplane_api::ApiConfig;
use pgplane_tests::{assert_problem, spawn_app, spawn_app_with, Answer, Client};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const PROBLEM_JSON: &str = "application/problem+json";

async fn post_with_key(client: &Client, path: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut rb = client.request(Method::POST, path).json(body);
    if let Some(k) = key {
        rb = rb.header("Idempotency-Key", k);
    }
    client.send(rb).await
}

fn content_type(a: &Answer) -> &str {
    a.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn count(app: &pgplane_tests::TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(app.store.pool()).await.unwrap()
}

#[tokio::test]
async fn cursor_pagination_walks_every_item_once() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (s, t) = owner.post("/v1/tenants", &json!({ "name": "Acme" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let apps = format!("/v1/tenants/{}/apps", t["id"].as_str().unwrap());
    let mut created = BTreeSet::new();
    for i in 0..5 {
        let (s, a) = owner.post(&apps, &json!({ "name": format!("app-{i}") })).await;
        assert_eq!(s, StatusCode::CREATED, "{a}");
        created.insert(a["id"].as_str().unwrap().to_string());
    }

    let (mut seen, mut sizes, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            None => format!("{apps}?limit=2"),
            Some(c) => format!("{apps}?limit=2&cursor={c}"),
        };
        let (s, page) = owner.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        sizes.push(items.len());
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert_eq!(page["next_cursor"], Value::Null, "the last page says so");
                break;
            }
        }
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen.len(), 5, "no duplicates: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), created);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "a stable order");

    // Without a limit, everything fits in one page.
    let (_, all) = owner.get(&apps).await;
    assert_eq!((all["items"].as_array().unwrap().len(), all["next_cursor"].clone()), (5, Value::Null));
}

#[tokio::test]
async fn plans_page_by_position() {
    let app = spawn_app().await;
    let anyone = app.anonymous();
    let (_, all) = anyone.get("/v1/plans").await;
    let all: Vec<Value> = all["items"].as_array().unwrap().iter().map(|p| p["id"].clone()).collect();
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = cursor.as_ref().map_or("/v1/plans?limit=2".to_string(), |c| format!("/v1/plans?limit=2&cursor={c}"));
        let (s, page) = anyone.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().map(|p| p["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(seen.len() <= all.len(), "pagination does not end");
    }
    assert!(all.len() > 2, "the catalog spans pages");
    assert_eq!(seen, all);
}

#[tokio::test]
async fn page_parameters_are_checked() {
    let app = spawn_app().await;
    let user = app.user("ada@a.test").await;
    for (query, field) in
        [("limit=0", "limit"), ("limit=500", "limit"), ("cursor=%%%garbage", "cursor"), ("cursor=Z2FyYmFnZQ", "cursor")]
    {
        let (s, body) = user.get(&format!("/v1/tenants?{query}")).await;
        assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }
    let (s, body) = user.get("/v1/tenants?limit=abc").await;
    assert_problem(s, &body, StatusCode::BAD_REQUEST, "bad-request");
    let (s, body) = user.get("/v1/plans?limit=200").await;
    assert_eq!((s, body["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(10)), "200 is the largest limit");
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let path = format!("/v1/apps/{app_id}/databases");
    let body = json!({ "name": "main", "plan": "starter-1" });
    let first = post_with_key(&owner, &path, Some("create-main-1"), &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());

    let before = app.fingerprint().await;
    let replay = post_with_key(&owner, &path, Some("create-main-1"), &body).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, first.body, "the very same operation");
    assert_eq!(replay.headers["location"], first.headers["location"]);
    assert_eq!(content_type(&replay), "application/json");
    assert_eq!(app.fingerprint().await, before, "the replay did nothing");
    assert_eq!((count(&app, "databases").await, count(&app, "operations").await, count(&app, "jobs").await), (1, 1, 1));

    // The same key for another request is refused, and does nothing.
    let other = json!({ "name": "second", "plan": "starter-1" });
    let a = post_with_key(&owner, &path, Some("create-main-1"), &other).await;
    assert_problem(a.status, &a.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(
        (a.body["errors"][0]["field"].as_str(), a.body["errors"][0]["code"].as_str()),
        (Some("Idempotency-Key"), Some("reused"))
    );
    assert_eq!(app.fingerprint().await, before);

    // Keys belong to their user: another member may use the same one.
    let a = post_with_key(&app.operator(), &path, Some("create-main-1"), &other).await;
    assert_eq!((a.status, a.headers.get("idempotent-replayed")), (StatusCode::ACCEPTED, None));
    assert_eq!(count(&app, "databases").await, 2);
}

#[tokio::test]
async fn concurrent_retries_with_one_key_create_once() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let path = format!("/v1/apps/{app_id}/databases");
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (client, path) = (owner.clone(), path.clone());
            tokio::spawn(async move {
                post_with_key(&client, &path, Some("burst"), &json!({ "name": "main", "plan": "sandbox" })).await
            })
        })
        .collect();
    let mut operations = BTreeSet::new();
    for task in tasks {
        let a = task.await.unwrap();
        match a.status {
            StatusCode::ACCEPTED => {
                operations.insert(a.body["id"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => assert_eq!(a.body["code"], "idempotency_key_in_use", "{}", a.body),
            other => panic!("{other}: {}", a.body),
        }
    }
    assert_eq!(operations.len(), 1, "every 202 is the same operation: {operations:?}");
    assert_eq!((count(&app, "databases").await, count(&app, "operations").await, count(&app, "jobs").await), (1, 1, 1));
}

#[tokio::test]
async fn a_key_held_by_a_dead_request_is_taken_over() {
    let app = spawn_app().await;
    let user = app.user("ada@a.test").await;
    let body = json!({ "name": "Acme" });
    let first = post_with_key(&user, "/v1/tenants", Some("k1"), &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // As if the first attempt were still running: a retry must not run it twice.
    let forget =
        "UPDATE idempotency_keys SET status_code = NULL, response_body = NULL, created_at = now() - $1::interval";
    sqlx::query(forget).bind("1 second").execute(app.store.pool()).await.unwrap();
    let a = post_with_key(&user, "/v1/tenants", Some("k1"), &body).await;
    assert_problem(a.status, &a.body, StatusCode::CONFLICT, "conflict");
    assert_eq!(a.body["code"], "idempotency_key_in_use");
    assert_eq!(count(&app, "tenants").await, 1);
    // An attempt silent for longer than the in-flight timeout is presumed dead.
    sqlx::query(forget).bind("2 minutes").execute(app.store.pool()).await.unwrap();
    let second = post_with_key(&user, "/v1/tenants", Some("k1"), &body).await;
    assert_eq!((second.status, second.headers.get("idempotent-replayed")), (StatusCode::CREATED, None));
    assert_ne!(second.body["id"], first.body["id"]);
    let replay = post_with_key(&user, "/v1/tenants", Some("k1"), &body).await;
    assert_eq!((replay.status, &replay.body), (StatusCode::CREATED, &second.body));
    assert_eq!(count(&app, "tenants").await, 2);
}

#[tokio::test]
async fn errors_are_replayed_too_and_keys_are_bounded() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let path = format!("/v1/apps/{app_id}/databases");
    let bad = json!({ "name": "main", "plan": "gold" });
    let first = post_with_key(&owner, &path, Some("k"), &bad).await;
    assert_problem(first.status, &first.body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let again = post_with_key(&owner, &path, Some("k"), &bad).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!((again.headers["idempotent-replayed"].to_str().unwrap(), content_type(&again)), ("true", PROBLEM_JSON));

    let a = post_with_key(&owner, &path, Some(&"k".repeat(256)), &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_problem(a.status, &a.body, StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(count(&app, "databases").await, 0);
}

#[tokio::test]
async fn without_a_key_each_post_creates() {
    let app = spawn_app().await;
    let user = app.user("ada@a.test").await;
    let body = json!({ "name": "Twin" });
    let one = post_with_key(&user, "/v1/tenants", None, &body).await;
    let two = post_with_key(&user, "/v1/tenants", None, &body).await;
    assert_eq!((one.status, two.status), (StatusCode::CREATED, StatusCode::CREATED));
    assert_ne!(one.body["id"], two.body["id"]);
    assert!(one.headers.get("idempotent-replayed").is_none() && two.headers.get("idempotent-replayed").is_none());
    let (_, list) = user.get("/v1/tenants").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = spawn_app().await;
    let user = app.user("ada@a.test").await;
    let before = app.fingerprint().await;
    let huge = json!({ "name": "x".repeat(65 * 1024) });
    for key in [None, Some("big-1")] {
        let a = post_with_key(&user, "/v1/tenants", key, &huge).await;
        assert_problem(a.status, &a.body, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
        assert_eq!(content_type(&a), PROBLEM_JSON);
    }
    assert_eq!(app.fingerprint().await, before);
    // Just under the limit is read (and then refused for its content).
    let (s, body) = user.post("/v1/tenants", &json!({ "name": "x".repeat(60 * 1024) })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(ApiConfig { rate_per_second: 1, rate_burst: 3 }).await;
    let user = app.user("ada@a.test").await;
    for _ in 0..3 {
        assert_eq!(user.get("/v1/me").await.0, StatusCode::OK);
    }
    let a = user.send(user.request(Method::GET, "/v1/me")).await;
    assert_problem(a.status, &a.body, StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(content_type(&a), PROBLEM_JSON);
    let retry: u64 = a.headers[RETRY_AFTER].to_str().unwrap().parse().expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert!(a.headers.contains_key("x-request-id"));

    // Other tokens have their own bucket; unauthenticated probes are not limited.
    assert_eq!(app.user("bob@a.test").await.get("/v1/me").await.0, StatusCode::OK);
    assert_eq!(app.anonymous().get("/healthz").await.0, StatusCode::OK);
    // The bucket refills at the sustained rate.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    assert_eq!(user.get("/v1/me").await.0, StatusCode::OK);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let user = app.user("ada@a.test").await;
    let anon = app.anonymous();
    let mut ids = BTreeSet::new();
    for (client, path) in [(&anon, "/healthz"), (&anon, "/v1/me"), (&user, "/v1/me"), (&user, "/v1/nowhere")] {
        let a = client.send(client.request(Method::GET, path)).await;
        let id = a.headers["x-request-id"].to_str().unwrap().to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{path}: {id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 4, "a new id per request");
    let a = user.send(user.request(Method::GET, "/v1/tenants").header("x-request-id", "trace-me-42")).await;
    assert_eq!((a.status, a.headers["x-request-id"].to_str().unwrap()), (StatusCode::OK, "trace-me-42"));
    let a = anon.send(anon.request(Method::GET, "/v1/me").header("x-request-id", "trace-me-43")).await;
    assert_eq!((a.status, a.headers["x-request-id"].to_str().unwrap()), (StatusCode::UNAUTHORIZED, "trace-me-43"));
}

#[tokio::test]
async fn routing_and_parsing_errors_are_problems() {
    let app = spawn_app().await;
    let user = app.user("ada@a.test").await;
    let cases = [
        (user.request(Method::GET, "/v1/nowhere"), StatusCode::NOT_FOUND, "not-found"),
        (user.request(Method::GET, "/v2/tenants"), StatusCode::NOT_FOUND, "not-found"),
        (user.request(Method::PUT, "/v1/tenants"), StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
        (user.request(Method::DELETE, "/v1/plans"), StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
        (user.request(Method::GET, "/v1/tenants/not-a-uuid"), StatusCode::BAD_REQUEST, "bad-request"),
        (user.request(Method::GET, "/v1/databases/1234/settings"), StatusCode::BAD_REQUEST, "bad-request"),
        (
            user.request(Method::POST, "/v1/tenants").header(CONTENT_TYPE, "application/json").body("{\"name\": "),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            user.request(Method::POST, "/v1/tenants").header(CONTENT_TYPE, "application/json").body("{name: 'x'}"),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (user.request(Method::POST, "/v1/tenants").body("{\"name\": \"x\"}"), StatusCode::BAD_REQUEST, "bad-request"),
    ];
    let before = app.fingerprint().await;
    for (rb, status, kind) in cases {
        let a = user.send(rb).await;
        assert_problem(a.status, &a.body, status, kind);
        assert_eq!(content_type(&a), PROBLEM_JSON, "{}", a.body);
        assert!(!a.body["detail"].as_str().unwrap_or("").is_empty(), "{}", a.body);
    }
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn probes_answer_200() {
    let app = spawn_app().await;
    let (s, body) = app.anonymous().get("/healthz").await;
    assert_eq!((s, body), (StatusCode::OK, json!({ "status": "ok" })));
    let (s, body) = app.anonymous().get("/readyz").await;
    assert_eq!((s, body), (StatusCode::OK, json!({ "status": "ready" })));
}
