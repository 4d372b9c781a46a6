//! Tenant isolation over every operation of the OpenAPI document: a user of tenant B who
//! names tenant A's resources gets 404 (403 for platform-only endpoints) and changes
//! nothing. The table must name every operation: a new endpoint without a row fails here.

use pgplane_tests::{spawn_app, Client, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Names another tenant's resource: 404, nothing changes.
    NotFound,
    /// Platform staff only: 403 for a tenant user, nothing changes.
    PlatformOnly,
    /// About the caller alone (or public): succeeds and shows nothing of tenant A.
    OwnOrPublic,
    /// Public, but only with a valid signature (a download link): 403 without one.
    SignedOnly,
}
use Expect::*;

/// Every operation of the API, what tenant B's user must get, and a valid body.
fn table() -> Vec<(&'static str, Expect, Option<Value>)> {
    vec![
        ("GET /healthz", OwnOrPublic, None),
        ("GET /readyz", OwnOrPublic, None),
        ("POST /v1/auth/token", OwnOrPublic, None), // body: B's own API token, filled in below
        ("GET /v1/me", OwnOrPublic, None),
        ("GET /v1/me/tokens", OwnOrPublic, None),
        ("POST /v1/me/tokens", OwnOrPublic, Some(json!({ "name": "mine" }))),
        ("DELETE /v1/me/tokens/{token_id}", NotFound, None),
        ("GET /v1/plans", OwnOrPublic, None),
        ("GET /v1/plans/{plan_id}", OwnOrPublic, None),
        ("GET /v1/versions", OwnOrPublic, None),
        ("GET /v1/users", PlatformOnly, None),
        ("POST /v1/users", PlatformOnly, Some(json!({ "email": "new@b.test", "name": "New" }))),
        ("GET /v1/users/{user_id}", NotFound, None),
        ("POST /v1/users/{user_id}/tokens", PlatformOnly, Some(json!({ "name": "stolen" }))),
        ("GET /v1/tenants", OwnOrPublic, None),
        ("POST /v1/tenants", OwnOrPublic, Some(json!({ "name": "B's second tenant" }))),
        ("GET /v1/tenants/{tenant_id}", NotFound, None),
        ("PATCH /v1/tenants/{tenant_id}", NotFound, Some(json!({ "name": "pwned" }))),
        ("DELETE /v1/tenants/{tenant_id}", NotFound, None),
        ("GET /v1/tenants/{tenant_id}/members", NotFound, None),
        ("POST /v1/tenants/{tenant_id}/members", NotFound, Some(json!({ "email": "mallory@b.test", "role": "owner" }))),
        ("GET /v1/tenants/{tenant_id}/members/{user_id}", NotFound, None),
        ("PATCH /v1/tenants/{tenant_id}/members/{user_id}", NotFound, Some(json!({ "role": "read_only" }))),
        ("DELETE /v1/tenants/{tenant_id}/members/{user_id}", NotFound, None),
        ("PUT /v1/tenants/{tenant_id}/plan-grants/{plan_id}", PlatformOnly, None),
        ("DELETE /v1/tenants/{tenant_id}/plan-grants/{plan_id}", PlatformOnly, None),
        ("GET /v1/tenants/{tenant_id}/apps", NotFound, None),
        ("POST /v1/tenants/{tenant_id}/apps", NotFound, Some(json!({ "name": "evil" }))),
        ("GET /v1/apps/{app_id}", NotFound, None),
        ("PATCH /v1/apps/{app_id}", NotFound, Some(json!({ "name": "evil" }))),
        ("DELETE /v1/apps/{app_id}", NotFound, None),
        ("GET /v1/apps/{app_id}/addons", NotFound, None),
        ("GET /v1/apps/{app_id}/databases", NotFound, None),
        ("POST /v1/apps/{app_id}/databases", NotFound, Some(json!({ "name": "evil", "plan": "sandbox" }))),
        ("GET /v1/databases/{database_id}", NotFound, None),
        ("DELETE /v1/databases/{database_id}", NotFound, None),
        ("POST /v1/databases/{database_id}/change-plan", NotFound, Some(json!({ "plan": "business-1" }))),
        ("POST /v1/databases/{database_id}/restart", NotFound, None),
        ("GET /v1/databases/{database_id}/members", NotFound, None),
        ("GET /v1/databases/{database_id}/configuration", NotFound, None),
        (
            "PATCH /v1/databases/{database_id}/configuration",
            NotFound,
            Some(json!({ "parameters": { "work_mem": 4096 } })),
        ),
        ("POST /v1/databases/{database_id}/switchover", NotFound, Some(json!({}))),
        ("GET /v1/databases/{database_id}/events", NotFound, None),
        ("GET /v1/parameters", OwnOrPublic, None),
        ("GET /v1/databases/{database_id}/settings", NotFound, None),
        ("GET /v1/databases/{database_id}/connection", NotFound, None),
        ("GET /v1/databases/{database_id}/ca.pem", NotFound, None),
        ("PATCH /v1/databases/{database_id}/settings", NotFound, Some(json!({ "force_tls": true }))),
        ("GET /v1/databases/{database_id}/backups/{backup_id}/download", NotFound, None),
        ("POST /v1/databases/{database_id}/backups/{backup_id}/link", NotFound, Some(json!({}))),
        ("GET /v1/backup-links/{database_id}/{backup_id}", SignedOnly, None),
        ("GET /v1/databases/{database_id}/operations", NotFound, None),
        ("GET /v1/databases/{database_id}/backups", NotFound, None),
        ("POST /v1/databases/{database_id}/backups", NotFound, None),
        ("GET /v1/databases/{database_id}/backups/{backup_id}", NotFound, None),
        ("DELETE /v1/databases/{database_id}/backups/{backup_id}", NotFound, None),
        ("GET /v1/databases/{database_id}/backup-quota", NotFound, None),
        (
            "POST /v1/databases/{database_id}/backups/{backup_id}/restore",
            NotFound,
            Some(json!({ "target": "new_database", "name": "stolen", "plan": "sandbox" })),
        ),
        ("GET /v1/operations/{operation_id}", NotFound, None),
        ("GET /v1/billing/periods", PlatformOnly, None),
        ("GET /v1/jobs", PlatformOnly, None),
        ("GET /v1/jobs/{job_id}", PlatformOnly, None),
        ("POST /v1/jobs/{job_id}/retry", PlatformOnly, None),
        ("POST /v1/jobs/{job_id}/fail", PlatformOnly, None),
        ("GET /v1/agents", PlatformOnly, None),
        ("GET /v1/agents/{agent_id}", PlatformOnly, None),
        ("POST /v1/agents/{agent_id}/retire", PlatformOnly, None),
        ("GET /v1/timers", PlatformOnly, None),
    ]
}

/// Every "METHOD /path" of the generated document.
fn documented_operations() -> BTreeSet<String> {
    let doc = serde_json::to_value(pgplane_api::openapi()).expect("document");
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

#[test]
fn every_operation_has_a_row() {
    let table: BTreeSet<String> = table().into_iter().map(|(k, _, _)| k.to_string()).collect();
    let documented = documented_operations();
    let missing: Vec<_> = documented.difference(&table).collect();
    let extra: Vec<_> = table.difference(&documented).collect();
    assert!(missing.is_empty(), "operations without a tenant-isolation row: {missing:?}");
    assert!(extra.is_empty(), "isolation rows for operations that do not exist: {extra:?}");
}

/// Tenant A, fully populated, and the ids a trespasser could name.
struct Victim {
    ids: Vec<(&'static str, String)>,
}

async fn victim(app: &TestApp, alice: &Client) -> Victim {
    let (tenant, app_id) = app.tenant_with_app(alice, "Tenant A").await;
    let (s, op) =
        alice.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "starter-1" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let (_, me) = alice.get("/v1/me").await;
    let job: uuid::Uuid = sqlx::query_scalar("SELECT id FROM jobs WHERE operation_id = $1::uuid")
        .bind(op["id"].as_str().unwrap())
        .fetch_one(app.store.pool())
        .await
        .expect("the create operation's job");
    let (s, token) = alice.post("/v1/me/tokens", &json!({ "name": "alice's laptop" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let (agent, _) = app
        .store
        .agent_register(&pgplane_core::agent::AgentRegistration {
            bootstrap_token: String::new(),
            name: "host-a".into(),
            host: "10.0.0.1".into(),
            public_host: None,
            memory_mb: 4096,
            disk_gb: 100,
            port_min: 25000,
            port_max: 25999,
            capabilities: None,
        })
        .await
        .expect("an agent");
    // A finished backup of A's database (the database is not provisioned here: the row is written).
    let backup = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO backups (id, tenant_id, database_id, method, status, object_key, size_bytes, sha256, finished_at) \
         VALUES ($1, $2::uuid, $3::uuid, 'manual', 'done', 'databases/x/backups/y.dump', 1, repeat('a', 64), now())",
    )
    .bind(backup)
    .bind(&tenant)
    .bind(op["database_id"].as_str().unwrap())
    .execute(app.store.pool())
    .await
    .expect("a backup of A's database");
    Victim {
        ids: vec![
            ("{backup_id}", backup.to_string()),
            ("{tenant_id}", tenant),
            ("{app_id}", app_id),
            ("{database_id}", op["database_id"].as_str().unwrap().to_string()),
            ("{operation_id}", op["id"].as_str().unwrap().to_string()),
            ("{user_id}", me["user"]["id"].as_str().unwrap().to_string()),
            ("{token_id}", token["token"]["id"].as_str().unwrap().to_string()),
            ("{plan_id}", "business-16".to_string()),
            ("{job_id}", job.to_string()),
            ("{agent_id}", agent.to_string()),
        ],
    }
}

impl Victim {
    fn path(&self, template: &str) -> String {
        let mut path = template.to_string();
        for (placeholder, id) in &self.ids {
            path = path.replace(placeholder, id);
        }
        assert!(!path.contains('{'), "no victim id for a placeholder of {template}");
        path
    }

    /// Whether an answer mentions any of tenant A's ids.
    fn leaks(&self, body: &Value) -> Option<String> {
        let text = body.to_string();
        self.ids
            .iter()
            .filter(|(p, _)| *p != "{plan_id}")
            .find(|(_, id)| text.contains(id.as_str()))
            .map(|(p, _)| p.to_string())
    }
}

#[tokio::test]
async fn another_tenant_gets_404_and_changes_nothing() {
    let app = spawn_app().await;
    let alice = app.user("alice@a.test").await;
    let a = victim(&app, &alice).await;

    // Tenant B: a full owner of their own tenant, app and database.
    let mallory_user = app
        .store
        .user_create(&pgplane_core::model::CreateUser {
            email: "mallory@b.test".into(),
            name: "Mallory".into(),
            platform_role: None,
        })
        .await
        .unwrap();
    let (_, mallory_secret) = app.store.token_create(mallory_user.id, "cli", None).await.unwrap();
    let mallory = app.client_for_api_token(&mallory_secret).await;
    let (_, b_app) = app.tenant_with_app(&mallory, "Tenant B").await;
    let (s, _) =
        mallory.post(&format!("/v1/apps/{b_app}/databases"), &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_eq!(s, StatusCode::ACCEPTED);

    for (op, expect, body) in table() {
        let (method, template) = op.split_once(' ').unwrap();
        let method: Method = method.parse().unwrap();
        let mut path = a.path(template);
        if op == "GET /v1/billing/periods" {
            path.push_str("?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z");
        }
        let body = match op {
            "POST /v1/auth/token" => Some(json!({ "api_token": mallory_secret })),
            _ => body,
        };
        let client = if op == "POST /v1/auth/token" { app.anonymous() } else { mallory.clone() };
        let before = app.fingerprint().await;
        let (status, answer) = client.call(method, &path, body.as_ref()).await;
        let after = app.fingerprint().await;
        match expect {
            NotFound | PlatformOnly | SignedOnly => {
                let (code, kind) = if expect == NotFound {
                    (StatusCode::NOT_FOUND, "not-found")
                } else {
                    (StatusCode::FORBIDDEN, "forbidden")
                };
                assert_eq!(status, code, "{op} as tenant B: {answer}");
                assert_eq!(answer["type"], format!("urn:pgplane:problem:{kind}"), "{op}: {answer}");
                assert_eq!(before, after, "{op} as tenant B changed the control plane");
            }
            OwnOrPublic => {
                assert!(status.is_success(), "{op} as tenant B: {status} {answer}");
                if let Some(leak) = a.leaks(&answer) {
                    panic!("{op} showed tenant B an id of tenant A ({leak}): {answer}");
                }
            }
        }
    }

    // Tenant A still sees all of its own resources.
    for template in
        ["/v1/tenants/{tenant_id}", "/v1/apps/{app_id}", "/v1/databases/{database_id}", "/v1/operations/{operation_id}"]
    {
        let (s, body) = alice.get(&a.path(template)).await;
        assert_eq!(s, StatusCode::OK, "{template}: {body}");
    }
}
