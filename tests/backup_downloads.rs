//! Downloads of backups through the API: whole and by byte ranges (compared with the stored
//! object's bytes), 416 outside the object, 409 before a backup is done; signed links that
//! download without a token, take ranges, expire, and cannot be altered or turned to another
//! backup, database or tenant; a deleted backup's link finds nothing.

use pgplane_tests::{assert_problem, spawn_app, Client, TestApp};
use reqwest::header::{HeaderMap, RANGE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A tenant with a database; returns (database id, owner's client).
async fn tenant_database(app: &TestApp, email: &str) -> (String, Client) {
    let owner = app.user(email).await;
    let (_, app_id) = app.tenant_with_app(&owner, email).await;
    let (s, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "sandbox" })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    (op["database_id"].as_str().expect("database id").to_string(), owner)
}

/// GET with optional Range; answers status, headers, bytes.
async fn fetch(http: &reqwest::RequestBuilder, range: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut rb = http.try_clone().expect("clonable request");
    if let Some(r) = range {
        rb = rb.header(RANGE, r);
    }
    let res = rb.send().await.expect("request");
    let (status, headers) = (res.status(), res.headers().clone());
    (status, headers, res.bytes().await.expect("body").to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Downloads whole and in parts through `request`, comparing with `data`.
async fn check_ranges(request: &reqwest::RequestBuilder, data: &[u8]) {
    let size = data.len();
    let (s, h, body) = fetch(request, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, data, "the whole download is the object");
    assert_eq!(header(&h, "content-length"), size.to_string());
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    let sha = hex::encode(Sha256::digest(data));
    assert_eq!(header(&h, "x-backup-sha256"), sha);
    assert_eq!(header(&h, "etag"), format!("\"{sha}\""));
    assert_eq!(header(&h, "content-type"), "application/octet-stream");
    assert_eq!(header(&h, "content-disposition"), "attachment; filename=\"main-20261128T104207Z.dump\"");
    let parts = [
        ("bytes=0-0".to_string(), 0..1),
        ("bytes=100-199".to_string(), 100..200),
        // Across the store's read chunks and the upload's 5 MiB parts.
        ("bytes=1000-5300000".to_string(), 1000..5_300_001),
        ("bytes=-10".to_string(), size - 10..size),
        (format!("bytes={}-", size - 5), size - 5..size),
        (format!("bytes={}-{}", size - 3, size + 100), size - 3..size),
    ];
    for (range, want) in parts {
        let (s, h, body) = fetch(request, Some(&range)).await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(body, &data[want.clone()], "{range}");
        assert_eq!(header(&h, "content-range"), format!("bytes {}-{}/{size}", want.start, want.end - 1), "{range}");
        assert_eq!(header(&h, "content-length"), want.len().to_string(), "{range}");
    }
    // Outside the object: 416 problem+json naming the size.
    for range in [format!("bytes={size}-"), "bytes=-0".to_string()] {
        let (s, h, body) = fetch(request, Some(&range)).await;
        assert_problem(s, &json_of(&body), StatusCode::RANGE_NOT_SATISFIABLE, "range-not-satisfiable");
        assert_eq!(header(&h, "content-range"), format!("bytes */{size}"));
    }
    // Several ranges, or a stale If-Range, answer the whole object.
    let (s, _, body) = fetch(request, Some("bytes=0-1,5-9")).await;
    assert_eq!((s, body.len()), (StatusCode::OK, size));
    let stale = request.try_clone().unwrap().header("if-range", "\"an older one\"");
    let (s, _, body) = fetch(&stale, Some("bytes=0-9")).await;
    assert_eq!((s, body.len()), (StatusCode::OK, size));
    let current = request.try_clone().unwrap().header("if-range", format!("\"{sha}\""));
    let (s, _, body) = fetch(&current, Some("bytes=0-9")).await;
    assert_eq!((s, &body[..]), (StatusCode::PARTIAL_CONTENT, &data[..10]));
}

#[tokio::test]
async fn backups_download_whole_and_by_ranges_with_a_token_or_a_signed_link() {
    let app = spawn_app().await;
    let (db, alice) = tenant_database(&app, "alice@a.test").await;
    // More than one 5 MiB upload part, not a multiple of any chunk size.
    let data: Vec<u8> = (0..6_000_123u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let backup = app.stored_backup(&db, "done", &data).await;
    let path = format!("/v1/databases/{db}/backups/{backup}/download");

    // With a token.
    check_ranges(&alice.request(Method::GET, &path), &data).await;

    // Not done yet, or failed: nothing to download, nor to link to.
    for (status, code) in [("pending", "backup_not_done"), ("running", "backup_not_done"), ("error", "backup_failed")] {
        let other = app.stored_backup(&db, status, &[]).await;
        let (s, body) = alice.get(&format!("/v1/databases/{db}/backups/{other}/download")).await;
        assert_problem(s, &body, StatusCode::CONFLICT, "conflict");
        assert_eq!(body["code"], code, "{body}");
        let (s, body) = alice.post(&format!("/v1/databases/{db}/backups/{other}/link"), &json!({})).await;
        assert_eq!((s, body["code"].as_str()), (StatusCode::CONFLICT, Some(code)), "{body}");
    }

    // A signed link: 15 minutes by default, downloads without a token, ranges included.
    let link_path = format!("/v1/databases/{db}/backups/{backup}/link");
    let (s, link) = alice.post(&link_path, &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{link}");
    assert_eq!(link["expires_in"], 900);
    let url = link["url"].as_str().expect("url").to_string();
    assert!(url.starts_with(&format!("{}/v1/backup-links/{db}/{backup}?expires=", app.base())), "{url}");
    check_ranges(&app.http.get(&url), &data).await;
    // A link is no token: it opens nothing else.
    let (s, _) = app.anonymous().get(&path).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Lifetimes outside 1 s .. 1 day are refused.
    for bad in [json!({ "expires_in": 0 }), json!({ "expires_in": 86401 }), json!({ "expires_in": -5 })] {
        let (s, body) = alice.post(&link_path, &bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }

    // Altered links are refused: the signature, the expiry, the backup, the database.
    let second = app.stored_backup(&db, "done", b"another backup").await;
    let (bob_db, bob) = tenant_database(&app, "bob@b.test").await;
    let (signature_at, expires_at) = (url.find("signature=").unwrap() + 10, url.find("expires=").unwrap() + 8);
    let mut flipped = url.clone().into_bytes();
    flipped[signature_at] = if flipped[signature_at] == b'0' { b'1' } else { b'0' };
    let later = format!("{}9{}", &url[..expires_at], &url[expires_at..]);
    let altered = [
        String::from_utf8(flipped).unwrap(),
        later,
        url.replace(&backup, &second),
        url.replace(&db, &bob_db),
        url[..url.find('?').unwrap()].to_string(),
        url[..url.find("&signature").unwrap()].to_string(),
    ];
    for bad in altered {
        let (s, _, body) = fetch(&app.http.get(&bad), None).await;
        assert_problem(s, &json_of(&body), StatusCode::FORBIDDEN, "forbidden");
    }

    // Another tenant cannot make a link to it, nor turn a link of their own to it.
    let (s, body) = bob.post(&link_path, &json!({})).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
    let bobs_backup = app.stored_backup(&bob_db, "done", b"bob's data").await;
    let (s, bobs) = bob.post(&format!("/v1/databases/{bob_db}/backups/{bobs_backup}/link"), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{bobs}");
    let bobs = bobs["url"].as_str().unwrap();
    let (s, _, body) = fetch(&app.http.get(bobs), None).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"bob's data"[..]));
    for turned in [bobs.replace(&bob_db, &db).replace(&bobs_backup, &backup), bobs.replace(&bobs_backup, &backup)] {
        let (s, _, body) = fetch(&app.http.get(&turned), None).await;
        assert_problem(s, &json_of(&body), StatusCode::FORBIDDEN, "forbidden");
    }

    // A link expires (asked for one second).
    let (s, short) = alice.post(&link_path, &json!({ "expires_in": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{short}");
    let expires_at: chrono::DateTime<chrono::Utc> = short["expires_at"].as_str().unwrap().parse().unwrap();
    while chrono::Utc::now() < expires_at + chrono::Duration::milliseconds(100) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (s, _, body) = fetch(&app.http.get(short["url"].as_str().unwrap()), None).await;
    let problem = json_of(&body);
    assert_problem(s, &problem, StatusCode::FORBIDDEN, "forbidden");
    assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");

    // Once the backup is deleted, its links and its download find nothing.
    sqlx::query("UPDATE backups SET deleted_at = now() WHERE id = $1::uuid")
        .bind(&backup)
        .execute(app.store.pool())
        .await
        .unwrap();
    let (s, _, body) = fetch(&app.http.get(&url), None).await;
    assert_problem(s, &json_of(&body), StatusCode::NOT_FOUND, "not-found");
    let (s, body) = alice.get(&path).await;
    assert_problem(s, &body, StatusCode::NOT_FOUND, "not-found");
}
