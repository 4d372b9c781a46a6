//! `pgplane etcd init` and `pgplane etcd enable-auth` as docker-compose runs them: the files
//! made once and kept, an etcd started on them serves https only, and authentication is turned
//! on with root's password (again: nothing to do; with another password: a prompt failure).

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn pgplane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgplane"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run pgplane")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A folder of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The etcd the test started, killed when dropped.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(files: &Path, data: &Path, client: u16, peer: u16) -> Etcd {
    let etcd = std::env::var_os("PGPLANE_ETCD").unwrap_or_else(|| "etcd".into());
    let (client, peer) = (format!("https://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
    let child = Command::new(etcd)
        .args(["--name", "etcd", "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("etcd={peer}")])
        .arg("--cert-file")
        .arg(files.join("tls/server.pem"))
        .arg("--key-file")
        .arg(files.join("tls/server.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server, or set PGPLANE_ETCD)");
    Etcd(child)
}

async fn post(http: &reqwest::Client, url: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(token) = token {
        req = req.header("authorization", token);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn init_then_enable_auth_on_an_etcd_started_on_the_files() {
    let tmp = TempDir(std::env::temp_dir().join(format!("pgplane-etcd-cli-{}", std::process::id())));
    let files = tmp.0.join("etcd");
    let dir = files.to_str().unwrap();

    let first = pgplane(&["etcd", "init", "--dir", dir, "--san", "etcd,localhost,127.0.0.1"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("(made)"), "{}", text(&first));
    let names = [
        "tls/ca.pem",
        "tls/ca.key",
        "tls/server.pem",
        "tls/server.key",
        "tls/peer.pem",
        "tls/peer.key",
        "root-password",
    ];
    let read_all = || names.map(|n| std::fs::read_to_string(files.join(n)).unwrap());
    let made = read_all();
    for n in names {
        assert_eq!(std::fs::metadata(files.join(n)).unwrap().permissions().mode() & 0o777, 0o600, "{n}");
    }
    let again = pgplane(&["etcd", "init", "--dir", dir, "--san", "etcd"]);
    assert!(again.status.success() && text(&again).contains("(kept)"), "{}", text(&again));
    assert_eq!(read_all(), made, "a second init keeps every file");
    assert!(!pgplane(&["etcd", "init", "--dir", dir]).status.success(), "--san is required");

    let client = free_port();
    let peer = std::iter::repeat_with(free_port).find(|&p| p != client).unwrap();
    let data = tmp.0.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Started after enable-auth, as compose may: enable-auth waits for it.
    let endpoint = format!("--etcd-endpoints=127.0.0.1:{client}");
    let ca = format!("--etcd-ca-file={dir}/tls/ca.pem");
    let password = format!("--etcd-root-password-file={dir}/root-password");
    let (e, c, p) = (endpoint.clone(), ca.clone(), password.clone());
    let enable = std::thread::spawn(move || pgplane(&["etcd", "enable-auth", &e, &c, &p, "--wait-seconds", "30"]));
    std::thread::sleep(Duration::from_millis(500));
    let _etcd = start_etcd(&files, &data, client, peer);
    let enabled = enable.join().unwrap();
    assert!(enabled.status.success(), "{}", text(&enabled));

    let ca_cert = reqwest::Certificate::from_pem(made[0].as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca_cert)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{client}");
    let version: Value = http.get(format!("{base}/version")).send().await.unwrap().json().await.unwrap();
    assert!(version["etcdserver"].is_string(), "{version}");
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{client}/version")).send().await;
    assert!(plain.is_err(), "etcd answers plain http: {plain:?}");

    let key = json!({ "key": "L2Zvbw==" });
    let (status, answer) = post(&http, &format!("{base}/v3/kv/range"), key.clone(), None).await;
    assert!(status >= 400 && answer.to_string().contains("user name is empty"), "{status} {answer}");
    let login = json!({ "name": "root", "password": made[6].trim() });
    let (status, answer) = post(&http, &format!("{base}/v3/auth/authenticate"), login, None).await;
    assert_eq!(status, 200, "{answer}");
    let token = answer["token"].as_str().unwrap().to_string();
    let (status, answer) = post(&http, &format!("{base}/v3/kv/range"), key, Some(&token)).await;
    assert_eq!(status, 200, "{answer}");

    let started = Instant::now();
    let twice = pgplane(&["etcd", "enable-auth", &endpoint, &ca, &password]);
    assert!(twice.status.success(), "{}", text(&twice));
    let wrong = tmp.0.join("wrong-password");
    std::fs::write(&wrong, "not root's").unwrap();
    let other = format!("--etcd-root-password-file={}", wrong.display());
    let refused = pgplane(&["etcd", "enable-auth", &endpoint, &ca, &other]);
    assert!(!refused.status.success() && text(&refused).contains("not with the root password"), "{}", text(&refused));
    assert!(started.elapsed() < Duration::from_secs(10), "a refusal is final, no waiting");
}
