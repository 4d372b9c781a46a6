//! `pgplane backups …` against a real API (the test harness's, with local backup storage and a
//! finished backup written as a backup workflow writes it): list and show print it, `download`
//! writes the same bytes to the file the API names (its SHA-256 checked) or to `-o`, `--link`
//! prints a link that downloads without a token, `quota` reads the plan's, and an API error is
//! printed from its problem+json with a non-zero exit.

use pgplane_tests::spawn_app;
use serde_json::json;
/// Runs `pgplane backups <args>` (without blocking the runtime the API is served on).
async fn pgplane(api: &str, token: &str, dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .arg("backups")
        .args(args)
        .env("PGPLANE_API_URL", api)
        .env("PGPLANE_API_TOKEN", token)
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .output()
        .await
        .expect("run pgplane backups");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    (out.status.success(), stdout, stderr)
}

#[tokio::test]
async fn backups_list_show_download_link_and_quota_from_the_cli() {
    let app = spawn_app().await;
    let user = app
        .store
        .user_create(&pgplane_core::model::CreateUser {
            email: "dev@a.test".into(),
            name: "Dev".into(),
            platform_role: None,
        })
        .await
        .unwrap();
    let (_, token) = app.store.token_create(user.id, "laptop", None).await.unwrap();
    let owner = app.client_for_api_token(&token).await;
    let (_, app_id) = app.tenant_with_app(&owner, "Acme").await;
    let (_, op) =
        owner.post(&format!("/v1/apps/{app_id}/databases"), &json!({ "name": "main", "plan": "starter-1" })).await;
    let db = op["database_id"].as_str().unwrap().to_string();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let backup = app.stored_backup(&db, "done", &data).await;
    let dir = std::env::temp_dir().join(format!("pgplane-cli-backups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = app.base();

    let (ok, out, err) = pgplane(&base, &token, &dir, &["list", &db]).await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("ID "), "{out}");
    assert!(
        out.contains(&backup) && out.contains("manual") && out.contains("done") && out.contains("293.0 KiB"),
        "{out}"
    );

    let (ok, out, err) = pgplane(&base, &token, &dir, &["show", &db, &backup]).await;
    assert!(ok, "{out}{err}");
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    assert!(out.contains(&format!("sha256    {sha256}")) && out.contains("status    done"), "{out}");

    // To the file the API names, then to a file of our choosing.
    let (ok, out, err) = pgplane(&base, &token, &dir, &["download", &db, &backup]).await;
    assert!(ok, "{out}{err}");
    assert!(err.contains("(checked)"), "{err}");
    assert_eq!(std::fs::read(dir.join("main-20261128T104207Z.dump")).unwrap(), data);
    let (ok, _, err) = pgplane(&base, &token, &dir, &["download", &db, &backup, "-o", "mine.dump"]).await;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(dir.join("mine.dump")).unwrap(), data);
    assert!(!dir.join("mine.dump.part").exists());

    // A link that downloads without a token.
    let (ok, out, err) =
        pgplane(&base, &token, &dir, &["download", &db, &backup, "--link", "--expires-in", "60"]).await;
    assert!(ok, "{out}{err}");
    let url = out.trim();
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), reqwest::StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), data);

    let (ok, out, err) = pgplane(&base, &token, &dir, &["quota", &db, "--json"]).await;
    assert!(ok, "{out}{err}");
    let quota: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(quota["used"], 1, "{quota}");

    // An error of the API, said as the API said it.
    let (ok, _, err) = pgplane(&base, &token, &dir, &["show", &db, "00000000-0000-0000-0000-000000000000"]).await;
    assert!(!ok);
    assert!(err.contains("Not found (404): backup not found"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
