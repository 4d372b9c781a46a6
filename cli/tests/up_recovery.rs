//! `pgplane up` survives its own control-plane PostgreSQL dying: a kill -9 of the postmaster in
//! the middle of a provision, and `up` starts it again on the same folder and port; the API, the
//! scheduler and the agents carry on by themselves and the database still comes up.

mod support;

use pgplane_tests::data_plane::psql;
use std::time::{Duration, Instant};
use support::up::{
    access_token, alive, app, create_database, eventually_answers, operation_status, postmaster_pid, start, state_dir,
    stop, url, wait_done,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_control_plane_postgres_is_started_again_mid_provision() {
    let state = state_dir("r");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let up = start(&state, port);
    let token = access_token(&base, &state).await;
    let (_, app) = app(&http, &base, &token, "Crash").await;
    let op = create_database(&http, &base, &token, &app).await;
    let (op_id, db) = (op["id"].as_str().unwrap(), op["database_id"].as_str().unwrap());

    // Mid-provision: the operation runs (its first steps are done, the agent is at work).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = operation_status(&http, &base, &token, op_id).await.expect("the operation");
        match now["status"].as_str() {
            Some("running") => break,
            Some("pending") => assert!(Instant::now() < deadline, "the operation did not start: {now}"),
            _ => panic!("the operation ended before the kill: {now}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = postmaster_pid(&state);
    support::procs::kill9(old);
    let killed = Instant::now();

    // `up` reaps it at once (no zombie holding the lock file) and starts another; the API's
    // readiness check (a query through its pool) answers again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let data = state.join("pg/data");
    loop {
        let restarted = support::procs::postmaster(&data).is_some_and(|pid| pid != old);
        if restarted && http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not answer again after the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_after = killed.elapsed();
    let new = postmaster_pid(&state);
    assert_ne!(new, old, "the control-plane PostgreSQL was not started again");
    assert!(alive(new) && !alive(old));
    // The keeper logs the restart once its start returns, which may come a moment after the
    // API already reaches the new server.
    let logged = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&up.log).unwrap().contains("started again") {
        assert!(Instant::now() < logged, "up did not log the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    wait_done(&http, &base, &token, op_id, Duration::from_secs(180)).await;
    let done_after = killed.elapsed();
    let url = url(&http, &base, &token, db, &state).await;
    eventually_answers(&url, "SELECT 6 * 7", "42", Duration::from_secs(30)).await;
    assert_eq!(psql(&url, "SHOW ssl").await.as_deref(), Ok("on"));
    eprintln!(
        "kill -9 of the control-plane postmaster: API ready again after {} ms, the provision done after {} ms",
        ready_after.as_millis(),
        done_after.as_millis()
    );
    let log = up.log.clone();
    stop(up);
    let left = support::procs::naming(&state);
    assert!(left.is_empty(), "processes of pgplane up outlived it: {left:?}");
    if std::env::var_os("PGPLANE_TEST_LOGS").is_some() {
        for log in [log.clone(), state.join("pg/postgres.log")] {
            eprintln!("--- {} ---\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&log);
}
