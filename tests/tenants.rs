//! Tenants, their members and roles, and apps.

use pgplane_tests::{assert_problem, spawn_app, Client, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn my_id(client: &Client) -> String {
    let (s, me) = client.get("/v1/me").await;
    assert_eq!(s, StatusCode::OK, "{me}");
    me["user"]["id"].as_str().expect("user id").to_string()
}

/// Creates a user and adds them to the tenant with `role`; returns their client and id.
async fn member(app: &TestApp, owner: &Client, tenant: &str, email: &str, role: &str) -> (Client, String) {
    let client = app.user(email).await;
    let (s, body) =
        owner.post(&format!("/v1/tenants/{tenant}/members"), &json!({ "email": email, "role": role })).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!((body["email"].as_str(), body["role"].as_str()), (Some(email), Some(role)));
    let id = my_id(&client).await;
    assert_eq!(body["user_id"], id.as_str());
    (client, id)
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().expect("items").iter().map(|i| i["id"].as_str().expect("id").to_string()).collect()
}

async fn role_of(client: &Client, tenant: &str, user: &str) -> Value {
    let (s, members) = client.get(&format!("/v1/tenants/{tenant}/members")).await;
    assert_eq!(s, StatusCode::OK, "{members}");
    let items = members["items"].as_array().unwrap();
    items.iter().find(|m| m["user_id"] == user).map(|m| m["role"].clone()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn tenant_create_list_get_rename_delete() {
    let app = spawn_app().await;
    let ada = app.user("ada@a.test").await;
    let a = ada.send(ada.request(Method::POST, "/v1/tenants").json(&json!({ "name": "  Acme  " }))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.headers["location"], format!("/v1/tenants/{id}").as_str());
    assert_eq!(a.body["name"], "Acme", "names are trimmed");

    let (s, list) = ada.get("/v1/tenants").await;
    assert_eq!((s, ids(&list)), (StatusCode::OK, vec![id.clone()]));
    let (s, t) = ada.get(&format!("/v1/tenants/{id}")).await;
    assert_eq!((s, t["name"].as_str()), (StatusCode::OK, Some("Acme")));
    let (s, t) = ada.patch(&format!("/v1/tenants/{id}"), &json!({ "name": "Acme Corp" })).await;
    assert_eq!((s, t["name"].as_str(), t["id"].as_str()), (StatusCode::OK, Some("Acme Corp"), Some(id.as_str())));
    let (_, t) = ada.get(&format!("/v1/tenants/{id}")).await;
    assert_eq!(t["name"], "Acme Corp");
    for bad in ["", "   ", "tab\tbad"] {
        let (s, body) = ada.patch(&format!("/v1/tenants/{id}"), &json!({ "name": bad })).await;
        assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(body["errors"][0]["field"], "name");
    }
    let (s, body) = ada.post("/v1/tenants", &json!({ "name": "x".repeat(101) })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(body["errors"][0]["code"], "too_long");

    // Operators see every tenant; other users none.
    let (_, all) = app.operator().get("/v1/tenants").await;
    assert_eq!(ids(&all), vec![id.clone()]);
    let (_, none) = app.user("bob@b.test").await.get("/v1/tenants").await;
    assert_eq!(none["items"], json!([]));

    let (s, body) = ada.delete(&format!("/v1/tenants/{id}")).await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));
    let (s, body) = ada.get(&format!("/v1/tenants/{id}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let (_, list) = ada.get("/v1/tenants").await;
    assert_eq!(list["items"], json!([]));
    let (_, me) = ada.get("/v1/me").await;
    assert_eq!(me["memberships"], json!([]));
}

#[tokio::test]
async fn read_only_reads_but_changes_nothing() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (tenant, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let (ro, _) = member(&app, &owner, &tenant, "ro@a.test", "read_only").await;
    for path in [format!("/v1/tenants/{tenant}"), format!("/v1/tenants/{tenant}/apps"), format!("/v1/apps/{app_id}")] {
        let (s, body) = ro.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }
    let (_, members) = ro.get(&format!("/v1/tenants/{tenant}/members")).await;
    assert_eq!(members["items"].as_array().unwrap().len(), 2);

    let before = app.fingerprint().await;
    for (method, path, body) in [
        (Method::POST, format!("/v1/tenants/{tenant}/apps"), Some(json!({ "name": "api" }))),
        (Method::PATCH, format!("/v1/apps/{app_id}"), Some(json!({ "name": "renamed" }))),
        (Method::DELETE, format!("/v1/apps/{app_id}"), None),
        (Method::POST, format!("/v1/apps/{app_id}/databases"), Some(json!({ "name": "db", "plan": "sandbox" }))),
        (Method::PATCH, format!("/v1/tenants/{tenant}"), Some(json!({ "name": "Mine" }))),
        (Method::DELETE, format!("/v1/tenants/{tenant}"), None),
    ] {
        let (s, answer) = ro.call(method.clone(), &path, body.as_ref()).await;
        assert_problem(s, &answer, StatusCode::FORBIDDEN, "forbidden");
        assert!(answer["detail"].as_str().unwrap().contains("read_only"), "{method} {path}: {answer}");
    }
    assert_eq!(app.fingerprint().await, before, "read_only changed something");
}

#[tokio::test]
async fn member_manages_apps_but_not_members() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (tenant, _) = app.tenant_with_app(&owner, "Acme").await;
    let (dev, _) = member(&app, &owner, &tenant, "dev@a.test", "member").await;
    let (s, created) = dev.post(&format!("/v1/tenants/{tenant}/apps"), &json!({ "name": "api" })).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (s, renamed) = dev.patch(&format!("/v1/apps/{id}"), &json!({ "name": "api-v2" })).await;
    assert_eq!((s, renamed["name"].as_str()), (StatusCode::OK, Some("api-v2")));
    assert_eq!(dev.delete(&format!("/v1/apps/{id}")).await.0, StatusCode::NO_CONTENT);

    app.user("new@a.test").await;
    let before = app.fingerprint().await;
    let (s, body) = dev
        .post(&format!("/v1/tenants/{tenant}/members"), &json!({ "email": "new@a.test", "role": "read_only" }))
        .await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, body) = dev.patch(&format!("/v1/tenants/{tenant}"), &json!({ "name": "Dev's" })).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let owner_id = my_id(&owner).await;
    let (s, body) = dev.delete(&format!("/v1/tenants/{tenant}/members/{owner_id}")).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn admin_manages_members_but_not_owners() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let owner_id = my_id(&owner).await;
    let (tenant, _) = app.tenant_with_app(&owner, "Acme").await;
    let (admin, _) = member(&app, &owner, &tenant, "admin@a.test", "admin").await;
    let (_, dev_id) = member(&app, &admin, &tenant, "dev@a.test", "member").await;
    let members = format!("/v1/tenants/{tenant}/members");

    let (s, m) = admin.patch(&format!("{members}/{dev_id}"), &json!({ "role": "read_only" })).await;
    assert_eq!((s, m["role"].as_str()), (StatusCode::OK, Some("read_only")));
    let (s, t) = admin.patch(&format!("/v1/tenants/{tenant}"), &json!({ "name": "Acme Ltd" })).await;
    assert_eq!((s, t["name"].as_str()), (StatusCode::OK, Some("Acme Ltd")));

    let boss = app.user("boss@a.test").await;
    let before = app.fingerprint().await;
    let (s, body) = admin.post(&members, &json!({ "email": "boss@a.test", "role": "owner" })).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, body) = admin.patch(&format!("{members}/{dev_id}"), &json!({ "role": "owner" })).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, body) = admin.patch(&format!("{members}/{owner_id}"), &json!({ "role": "member" })).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, body) = admin.delete(&format!("{members}/{owner_id}")).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, body) = admin.delete(&format!("/v1/tenants/{tenant}")).await;
    assert_problem(s, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.fingerprint().await, before, "refused requests changed nothing");

    // The owner can do all of that.
    let (s, added) = owner.post(&members, &json!({ "email": "boss@a.test", "role": "owner" })).await;
    assert_eq!((s, added["role"].as_str()), (StatusCode::CREATED, Some("owner")));
    let boss_id = my_id(&boss).await;
    assert_eq!(role_of(&admin, &tenant, &boss_id).await, "owner");
    let (s, m) = owner.patch(&format!("{members}/{dev_id}"), &json!({ "role": "owner" })).await;
    assert_eq!((s, m["role"].as_str()), (StatusCode::OK, Some("owner")));
    assert_eq!(owner.delete(&format!("{members}/{boss_id}")).await.0, StatusCode::NO_CONTENT);
    assert_eq!(role_of(&owner, &tenant, &boss_id).await, Value::Null);
}

#[tokio::test]
async fn the_last_owner_stays() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let owner_id = my_id(&owner).await;
    let (s, t) = owner.post("/v1/tenants", &json!({ "name": "Solo" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let tenant = t["id"].as_str().unwrap();
    let me = format!("/v1/tenants/{tenant}/members/{owner_id}");

    let before = app.fingerprint().await;
    let (s, body) = owner.patch(&me, &json!({ "role": "admin" })).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "last_owner");
    let (s, body) = owner.delete(&me).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "last_owner");
    assert_eq!(app.fingerprint().await, before);
    // Staying owner is no demotion.
    let (s, m) = owner.patch(&me, &json!({ "role": "owner" })).await;
    assert_eq!((s, m["role"].as_str()), (StatusCode::OK, Some("owner")));

    // With a second owner, the first may step down, and the second is then the last.
    let (other, other_id) = member(&app, &owner, tenant, "other@a.test", "owner").await;
    let (s, m) = owner.patch(&me, &json!({ "role": "admin" })).await;
    assert_eq!((s, m["role"].as_str()), (StatusCode::OK, Some("admin")));
    let (s, body) = other.delete(&format!("/v1/tenants/{tenant}/members/{other_id}")).await;
    assert_eq!(body["code"], "last_owner", "{s} {body}");
    assert_eq!(role_of(&other, tenant, &other_id).await, "owner");
}

#[tokio::test]
async fn a_member_can_leave() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (tenant, _) = app.tenant_with_app(&owner, "Acme").await;
    let (ro, ro_id) = member(&app, &owner, &tenant, "ro@a.test", "read_only").await;
    let (s, body) = ro.delete(&format!("/v1/tenants/{tenant}/members/{ro_id}")).await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));
    let (s, body) = ro.get(&format!("/v1/tenants/{tenant}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let (_, me) = ro.get("/v1/me").await;
    assert_eq!(me["memberships"], json!([]));
    assert_eq!(role_of(&owner, &tenant, &ro_id).await, Value::Null);
    let (s, body) = owner.delete(&format!("/v1/tenants/{tenant}/members/{ro_id}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn adding_unknown_invalid_or_existing_members_is_refused() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (tenant, _) = app.tenant_with_app(&owner, "Acme").await;
    let members = format!("/v1/tenants/{tenant}/members");
    let before = app.fingerprint().await;
    for (email, code) in [("ghost@a.test", "unknown"), ("not an email", "invalid")] {
        let (s, body) = owner.post(&members, &json!({ "email": email, "role": "member" })).await;
        assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(
            (body["errors"][0]["field"].as_str(), body["errors"][0]["code"].as_str()),
            (Some("email"), Some(code))
        );
    }
    let (s, body) = owner.post(&members, &json!({ "email": "owner@a.test", "role": "superuser" })).await;
    assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(app.fingerprint().await, before);

    member(&app, &owner, &tenant, "dev@a.test", "member").await;
    let before = app.fingerprint().await;
    let (s, body) = owner.post(&members, &json!({ "email": "DEV@a.test", "role": "admin" })).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "already_member");
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn a_tenant_with_apps_cannot_be_deleted() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (tenant, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let (s, body) = owner.delete(&format!("/v1/tenants/{tenant}")).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "tenant_not_empty");
    assert_eq!(owner.get(&format!("/v1/tenants/{tenant}")).await.0, StatusCode::OK);
    assert_eq!(owner.delete(&format!("/v1/apps/{app_id}")).await.0, StatusCode::NO_CONTENT);
    assert_eq!(owner.delete(&format!("/v1/tenants/{tenant}")).await.0, StatusCode::NO_CONTENT);
    let (s, body) = owner.post(&format!("/v1/tenants/{tenant}/apps"), &json!({ "name": "late" })).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn apps_create_list_get_rename_delete() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (tenant, web) = app.tenant_with_app(&owner, "Acme").await;
    let apps = format!("/v1/tenants/{tenant}/apps");
    let a = owner.send(owner.request(Method::POST, &apps).json(&json!({ "name": "api" }))).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let api = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.headers["location"], format!("/v1/apps/{api}").as_str());
    assert_eq!((a.body["tenant_id"].as_str(), a.body["name"].as_str()), (Some(tenant.as_str()), Some("api")));
    let (_, list) = owner.get(&apps).await;
    assert_eq!(ids(&list), vec![web.clone(), api.clone()]);

    let before = app.fingerprint().await;
    let (s, body) = owner.post(&apps, &json!({ "name": "web" })).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "name_taken");
    let (s, body) = owner.patch(&format!("/v1/apps/{api}"), &json!({ "name": "web" })).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("name_taken")));
    for bad in ["Web", "1st", "api-", "my_app", "", &"a".repeat(64)] {
        let (s, body) = owner.post(&apps, &json!({ "name": bad })).await;
        assert_problem(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(body["errors"][0]["field"], "name", "{bad}");
    }
    assert_eq!(app.fingerprint().await, before);

    let (s, renamed) = owner.patch(&format!("/v1/apps/{api}"), &json!({ "name": "api-v2" })).await;
    assert_eq!((s, renamed["name"].as_str()), (StatusCode::OK, Some("api-v2")));
    let (_, got) = owner.get(&format!("/v1/apps/{api}")).await;
    assert_eq!(got["name"], "api-v2");
    assert_eq!(owner.delete(&format!("/v1/apps/{web}")).await.0, StatusCode::NO_CONTENT);
    let (s, body) = owner.get(&format!("/v1/apps/{web}")).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let (_, list) = owner.get(&apps).await;
    assert_eq!(ids(&list), vec![api]);
    // A deleted app's name is free again.
    assert_eq!(owner.post(&apps, &json!({ "name": "web" })).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn an_app_with_a_live_database_cannot_be_deleted() {
    let app = spawn_app().await;
    let owner = app.user("owner@a.test").await;
    let (_, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    let (s, body) = owner.delete(&format!("/v1/apps/{app_id}")).await;
    assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(body["code"], "app_not_empty");
    // A database being deleted still holds the app until it is gone.
    assert_eq!(
        owner.delete(&format!("/v1/databases/{}", op["database_id"].as_str().unwrap())).await.0,
        StatusCode::ACCEPTED
    );
    let (s, body) = owner.delete(&format!("/v1/apps/{app_id}")).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some("app_not_empty")));
    assert_eq!(owner.get(&format!("/v1/apps/{app_id}")).await.0, StatusCode::OK);
}
