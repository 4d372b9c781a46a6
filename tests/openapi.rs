//! The checked-in OpenAPI document must be exactly what the code generates, and the API
//! must serve that same document. Regenerate with `PGPLANE_UPDATE_OPENAPI=1 cargo test -p pgplane-tests openapi`.

use pgplane_tests::spawn_app;
use reqwest::StatusCode;

/// Compares (or, with PGPLANE_UPDATE_OPENAPI set, rewrites) a checked-in document.
fn check(file: &str, doc: &utoipa::openapi::OpenApi) {
    let path = format!("{}/../openapi/{file}", env!("CARGO_MANIFEST_DIR"));
    let fresh = serde_json::to_string_pretty(doc).expect("serialize") + "\n";
    if std::env::var_os("PGPLANE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &fresh).expect("write the OpenAPI document");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == fresh,
        "openapi/{file} is stale: run `PGPLANE_UPDATE_OPENAPI=1 cargo test -p pgplane-tests openapi` and commit it"
    );
}

#[test]
fn checked_in_document_is_current() {
    check("pgplane.json", &pgplane_api::openapi());
}

#[test]
fn checked_in_agent_document_is_current() {
    check("agent.json", &pgplane_scheduler::agent_api::openapi());
}

#[tokio::test]
async fn served_document_is_the_generated_one() {
    let app = spawn_app().await;
    let (status, body) = app.anonymous().get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::to_value(pgplane_api::openapi()).unwrap());
    assert_eq!(body["openapi"], "3.1.0");
}
