//! The checked-in OpenAPI document must be exactly what the code generates, and the API
//! must serve that same document. Regenerate with `PGPLANE_UPDATE_OPENAPI=1 cargo test -p pgplane-tests openapi`.

use pgplane_tests::spawn_app;
use reqwest::StatusCode;

pub const OPENAPI_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/pgplane.json");

pub fn generated() -> String {
    serde_json::to_string_pretty(&pgplane_api::openapi()).expect("serialize") + "\n"
}

#[test]
fn checked_in_document_is_current() {
    let fresh = generated();
    if std::env::var_os("PGPLANE_UPDATE_OPENAPI").is_some() {
        std::fs::write(OPENAPI_FILE, &fresh).expect("write openapi/pgplane.json");
        return;
    }
    let on_disk = std::fs::read_to_string(OPENAPI_FILE).unwrap_or_default();
    assert!(
        on_disk == fresh,
        "openapi/pgplane.json is stale: run `PGPLANE_UPDATE_OPENAPI=1 cargo test -p pgplane-tests openapi` and commit it"
    );
}

#[tokio::test]
async fn served_document_is_the_generated_one() {
    let app = spawn_app().await;
    let (status, body) = app.anonymous().get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::to_value(pgplane_api::openapi()).unwrap());
    assert_eq!(body["openapi"], "3.1.0");
}
