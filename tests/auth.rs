//! Authentication and platform roles: API token → access token exchange, the Authorization
//! header, the caller's own tokens, operator-only user management and the billing role.

use chrono::{DateTime, SecondsFormat, Utc};
use pgplane_core::model::{CreateUser, PlatformRole};
use pgplane_tests::{assert_problem, spawn_app, Client, TestApp};
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A user created through the store and one API token of theirs: (user id, secret).
async fn user_and_secret(app: &TestApp, email: &str) -> (String, String) {
    let user = app
        .store
        .user_create(&CreateUser { email: email.into(), name: "Someone".into(), platform_role: None })
        .await
        .expect("user");
    let (_, secret) = app.store.token_create(user.id, "laptop", None).await.expect("token");
    (user.id.to_string(), secret)
}

async fn exchange(app: &TestApp, secret: &str) -> (StatusCode, Value) {
    app.anonymous().post("/v1/auth/token", &json!({ "api_token": secret })).await
}

/// GET /v1/me with a raw Authorization header value.
async fn me_with_header(app: &TestApp, value: &str) -> (StatusCode, Value) {
    let anon = app.anonymous();
    let a = anon.send(anon.request(Method::GET, "/v1/me").header(AUTHORIZATION, value)).await;
    (a.status, a.body)
}

async fn my_id(client: &Client) -> String {
    let (s, me) = client.get("/v1/me").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    me["user"]["id"].as_str().expect("user id").to_string()
}

fn ts(body: &Value) -> DateTime<Utc> {
    body.as_str().expect("timestamp").parse().expect("RFC 3339")
}

#[tokio::test]
async fn exchange_returns_a_bearer_jwt_valid_one_hour() {
    let app = spawn_app().await;
    let (user_id, secret) = user_and_secret(&app, "ada@a.test").await;
    let (s, body) = exchange(&app, &secret).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let jwt = body["access_token"].as_str().expect("access_token");
    assert_eq!(jwt.split('.').count(), 3, "a JWT has three parts: {jwt}");
    let left = (ts(&body["expires_at"]) - Utc::now()).num_seconds();
    assert!((3590..=3600).contains(&left), "expires_at is an hour away, not {left} s");
    // Surrounding whitespace in the pasted secret is forgiven.
    assert_eq!(exchange(&app, &format!("  {secret}\n")).await.0, StatusCode::OK);

    let (s, me) = me_with_header(&app, &format!("Bearer {jwt}")).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["id"], user_id.as_str());
    assert_eq!(me["user"]["email"], "ada@a.test");
}

#[tokio::test]
async fn unknown_revoked_and_expired_api_tokens_are_refused() {
    let app = spawn_app().await;
    let (s, body) = exchange(&app, "pgp_thisTokenWasNeverIssued").await;
    assert_problem(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    let user = app
        .store
        .user_create(&CreateUser { email: "bo@a.test".into(), name: "Bo".into(), platform_role: None })
        .await
        .unwrap();
    let (revoked, revoked_secret) = app.store.token_create(user.id, "old", None).await.unwrap();
    assert_eq!(exchange(&app, &revoked_secret).await.0, StatusCode::OK);
    app.store.token_revoke(user.id, revoked.id).await.unwrap();
    let (s, body) = exchange(&app, &revoked_secret).await;
    assert_problem(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    let (expiring, expiring_secret) = app.store.token_create(user.id, "short", Some(1)).await.unwrap();
    assert_eq!(exchange(&app, &expiring_secret).await.0, StatusCode::OK);
    sqlx::query("UPDATE api_tokens SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(expiring.id)
        .execute(app.store.pool())
        .await
        .unwrap();
    let (s, body) = exchange(&app, &expiring_secret).await;
    assert_problem(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(body["detail"].as_str().unwrap().contains("invalid, expired or revoked"), "{body}");

    let (s, body) = app.anonymous().post("/v1/auth/token", &json!({ "token": "pgp_x" })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
}

#[tokio::test]
async fn missing_malformed_and_foreign_authorization_is_401() {
    let app = spawn_app().await;
    let (s, body) = app.anonymous().get("/v1/me").await;
    assert_problem(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(body["detail"].as_str().unwrap().contains("POST /v1/auth/token"), "{body}");

    let (_, ada) = user_and_secret(&app, "ada@a.test").await;
    let (_, bob) = user_and_secret(&app, "bob@a.test").await;
    let ada_jwt = exchange(&app, &ada).await.1["access_token"].as_str().unwrap().to_string();
    let bob_jwt = exchange(&app, &bob).await.1["access_token"].as_str().unwrap().to_string();
    // Bob's claims under Ada's signature: a forged token.
    let (ada_sig, bob_claims) = (ada_jwt.rsplit_once('.').unwrap().1, bob_jwt.rsplit_once('.').unwrap().0);
    let forged = format!("Bearer {bob_claims}.{ada_sig}");
    for value in [
        "Bearer not-a-jwt",
        "Bearer ",
        "Basic YWRhOnNlY3JldA==",
        format!("Token {ada_jwt}").as_str(),
        ada_jwt.as_str(), // no scheme
        ada.as_str(),     // an API token is not an access token
        format!("Bearer {ada}").as_str(),
        forged.as_str(),
    ] {
        let (s, body) = me_with_header(&app, value).await;
        assert_problem(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // The genuine one works, with either capitalization of the scheme.
    assert_eq!(me_with_header(&app, &format!("Bearer {ada_jwt}")).await.0, StatusCode::OK);
    assert_eq!(me_with_header(&app, &format!("bearer {ada_jwt}")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn me_shows_the_user_and_their_memberships() {
    let app = spawn_app().await;
    let ada = app.user("ada@a.test").await;
    let (s, me) = ada.get("/v1/me").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], "ada@a.test");
    assert_eq!(me["user"]["platform_role"], Value::Null);
    assert_eq!(me["memberships"], json!([]));

    let (tenant, _) = app.tenant_with_app(&ada, "Ada's").await;
    let (_, me) = ada.get("/v1/me").await;
    assert_eq!(me["memberships"], json!([{ "tenant_id": tenant, "tenant_name": "Ada's", "role": "owner" }]));
    let (_, op) = app.operator().get("/v1/me").await;
    assert_eq!(op["user"]["platform_role"], "operator");
}

#[tokio::test]
async fn my_tokens_show_the_secret_once_and_revoke() {
    let app = spawn_app().await;
    let ada = app.user("ada@a.test").await;
    let ada_id = my_id(&ada).await;
    let a = ada
        .send(ada.request(Method::POST, "/v1/me/tokens").json(&json!({ "name": "ci", "expires_in_days": 30 })))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let (token, secret) = (&a.body["token"], a.body["secret"].as_str().expect("secret").to_string());
    let id = token["id"].as_str().unwrap().to_string();
    assert!(a.headers.get("location").is_none(), "tokens are not fetched one by one");
    assert!(secret.starts_with("pgp_") && secret.len() > 30, "{secret}");
    assert!(secret.starts_with(token["prefix"].as_str().unwrap()), "the prefix is the secret's start");
    assert_eq!(token["name"], "ci");
    assert_eq!(token["user_id"], ada_id.as_str());
    let days = (ts(&token["expires_at"]) - Utc::now()).num_hours();
    assert!((719..=720).contains(&days), "expires in 30 days, not {days} h");

    // The new secret works; the list names it but never shows a secret.
    let via_new = app.client_for_api_token(&secret).await;
    assert_eq!(my_id(&via_new).await, ada_id);
    let (s, list) = ada.get("/v1/me/tokens").await;
    assert_eq!(s, StatusCode::OK);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the harness's token and ours: {list}");
    assert!(items.iter().any(|t| t["id"] == id.as_str() && t["name"] == "ci" && t["last_used_at"].is_string()));
    assert!(items.iter().all(|t| t.get("secret").is_none() && t.get("secret_hash").is_none()), "{list}");
    assert!(!list.to_string().contains(&secret[4..]), "the list leaks the secret");

    let (s, body) = ada.delete(&format!("/v1/me/tokens/{id}")).await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));
    let (s, body) = exchange(&app, &secret).await;
    assert_problem(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (_, list) = ada.get("/v1/me/tokens").await;
    assert!(!list.to_string().contains(&id), "revoked tokens are not listed: {list}");
    let (s, body) = ada.delete(&format!("/v1/me/tokens/{id}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");

    let (s, body) = ada.post("/v1/me/tokens", &json!({ "name": " ", "expires_in_days": 0 })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let fields: Vec<_> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].clone()).collect();
    assert_eq!(fields, [json!("name"), json!("expires_in_days")], "{body}");
}

#[tokio::test]
async fn another_users_token_cannot_be_revoked() {
    let app = spawn_app().await;
    let (ada_id, ada_secret) = user_and_secret(&app, "ada@a.test").await;
    let ada = app.client_for_api_token(&ada_secret).await;
    let (_, list) = ada.get("/v1/me/tokens").await;
    let ada_token = list["items"][0]["id"].as_str().unwrap().to_string();
    let mallory = app.user("mallory@b.test").await;
    let before = app.fingerprint().await;
    let (s, body) = mallory.delete(&format!("/v1/me/tokens/{ada_token}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    assert_eq!(app.fingerprint().await, before);
    assert_eq!(exchange(&app, &ada_secret).await.0, StatusCode::OK, "Ada's token still works");
    assert_eq!(my_id(&ada).await, ada_id);
}

#[tokio::test]
async fn operator_endpoints_refuse_ordinary_users() {
    let app = spawn_app().await;
    let user = app.user("plain@a.test").await;
    let id = my_id(&user).await;
    let before = app.fingerprint().await;
    let window = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    for (method, path, body) in [
        (Method::GET, "/v1/users".to_string(), None),
        (Method::POST, "/v1/users".to_string(), Some(json!({ "email": "x@a.test", "name": "X" }))),
        (Method::POST, format!("/v1/users/{id}/tokens"), Some(json!({ "name": "self-service" }))),
        (Method::GET, format!("/v1/billing/periods?{window}"), None),
        (Method::PUT, format!("/v1/tenants/{id}/plan-grants/business-16"), None),
    ] {
        let (s, answer) = user.call(method.clone(), &path, body.as_ref()).await;
        assert_problem(s, &answer, StatusCode::FORBIDDEN, "forbidden");
        assert!(answer["detail"].as_str().unwrap().contains("platform role"), "{method} {path}: {answer}");
    }
    assert_eq!(app.fingerprint().await, before, "refused requests changed nothing");
}

#[tokio::test]
async fn operators_create_users_and_issue_their_first_token() {
    let app = spawn_app().await;
    let op = app.operator();
    let a = op
        .send(op.request(Method::POST, "/v1/users").json(&json!({ "email": " new@c.test ", "name": "Newcomer" })))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.headers["location"], format!("/v1/users/{id}").as_str());
    assert_eq!(a.body["email"], "new@c.test", "trimmed");
    assert_eq!(a.body["platform_role"], Value::Null);

    let (s, users) = op.get("/v1/users").await;
    assert_eq!(s, StatusCode::OK);
    let emails: Vec<_> = users["items"].as_array().unwrap().iter().map(|u| u["email"].clone()).collect();
    assert!(emails.contains(&json!("new@c.test")) && emails.contains(&json!("operator@platform.test")), "{users}");

    let (s, created) = op.post(&format!("/v1/users/{id}/tokens"), &json!({ "name": "first" })).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["token"]["user_id"], id.as_str());
    assert_eq!(created["token"]["expires_at"], Value::Null);
    let newcomer = app.client_for_api_token(created["secret"].as_str().unwrap()).await;
    assert_eq!(my_id(&newcomer).await, id);

    let (s, body) = op.post(&format!("/v1/users/{}/tokens", uuid::Uuid::now_v7()), &json!({ "name": "x" })).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn user_email_conflict_is_409_and_invalid_input_422() {
    let app = spawn_app().await;
    let op = app.operator();
    let (s, _) = op.post("/v1/users", &json!({ "email": "dup@c.test", "name": "First" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let before = app.fingerprint().await;
    let (s, body) = op.post("/v1/users", &json!({ "email": "DUP@c.test", "name": "Second" })).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "email_taken");

    let (s, body) = op.post("/v1/users", &json!({ "email": "not-an-email", "name": "" })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let fields: Vec<_> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].clone()).collect();
    assert_eq!(fields, [json!("email"), json!("name")], "{body}");
    let (s, body) = op.post("/v1/users", &json!({ "email": "x@c.test", "name": "X", "platform_role": "god" })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn users_read_their_own_record_only() {
    let app = spawn_app().await;
    let ada = app.user("ada@a.test").await;
    let bob = app.user("bob@a.test").await;
    let (ada_id, bob_id) = (my_id(&ada).await, my_id(&bob).await);
    let (s, me) = ada.get(&format!("/v1/users/{ada_id}")).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!((me["id"].as_str(), me["email"].as_str()), (Some(ada_id.as_str()), Some("ada@a.test")));
    let (s, body) = ada.get(&format!("/v1/users/{bob_id}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let (s, body) = app.operator().get(&format!("/v1/users/{bob_id}")).await;
    assert_eq!((s, body["email"].as_str()), (StatusCode::OK, Some("bob@a.test")));
}

#[tokio::test]
async fn billing_reads_periods_of_every_tenant_and_nothing_else() {
    let app = spawn_app().await;
    let mut databases = Vec::new();
    for (email, plan) in [("ada@a.test", "starter-1"), ("bob@b.test", "business-2")] {
        let owner = app.user(email).await;
        let (tenant, app_id) = app.tenant_with_app(&owner, email).await;
        let (s, op) =
            owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": plan })).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}");
        databases.push((tenant, op["database_id"].as_str().unwrap().to_string(), plan));
    }
    let billing = app.user_with_role("billing@platform.test", Some(PlatformRole::Billing)).await;
    let now = Utc::now();
    let at = |d: DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Secs, true);
    let window = [("from", at(now - chrono::Duration::hours(1))), ("to", at(now + chrono::Duration::hours(1)))];
    let a = billing.send(billing.request(Method::GET, "/v1/billing/periods").query(&window)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let items = a.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", a.body);
    for (tenant, db, plan) in &databases {
        let p = items.iter().find(|p| p["database_id"] == db.as_str()).expect("a period per database");
        assert_eq!((p["tenant_id"].as_str(), p["plan"].as_str()), (Some(tenant.as_str()), Some(*plan)));
        assert_eq!(p["ended_at"], Value::Null);
        assert_eq!(p["price_per_hour"]["currency"], "EUR");
    }
    // A window long past shows nothing; an empty window is refused.
    let old = [("from", "2001-01-01T00:00:00Z"), ("to", "2001-02-01T00:00:00Z")];
    let a = billing.send(billing.request(Method::GET, "/v1/billing/periods").query(&old)).await;
    assert_eq!((a.status, &a.body["items"]), (StatusCode::OK, &json!([])));
    let (s, body) = billing.get("/v1/billing/periods?from=2001-01-01T00:00:00Z&to=2001-01-01T00:00:00Z").await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(body["errors"][0]["field"], "to");

    // The billing role sees no tenant's resources, and cannot manage users.
    let (s, body) = billing.get(&format!("/v1/databases/{}", databases[0].1)).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let (s, body) = billing.get(&format!("/v1/tenants/{}", databases[1].0)).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let (s, body) = billing.get("/v1/users").await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    // Operators pass the billing check too.
    let a = app.operator().send(app.operator().request(Method::GET, "/v1/billing/periods").query(&window)).await;
    assert_eq!((a.status, a.body["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)));
}

#[tokio::test]
async fn an_expired_bearer_does_not_block_the_exchange_and_the_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let user = app
        .store
        .user_create(&CreateUser { email: "eve@a.test".into(), name: "Eve".into(), platform_role: None })
        .await
        .unwrap();
    let (_, secret) = app.store.token_create(user.id, "cli", None).await.unwrap();
    let anon = app.anonymous();
    let a = anon
        .send(
            anon.request(Method::POST, "/v1/auth/token")
                .header("authorization", "Bearer stale.or.garbage")
                .json(&json!({ "api_token": secret })),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let jwt = a.body["access_token"].as_str().unwrap();
    let me = anon.send(anon.request(Method::GET, "/v1/me").header("authorization", format!("BEARER {jwt}"))).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    // The reason a bad bearer was refused still reaches endpoints that need a caller.
    let bad = anon.send(anon.request(Method::GET, "/v1/me").header("authorization", "Bearer garbage")).await;
    assert_problem(bad.status, &bad.body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(bad.body["detail"], "the access token is invalid");
}
