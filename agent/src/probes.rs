//! The two paths of a database host that broke before, exercised for real by `doctor`:
//! Patroni's own Python (the interpreter of the `patroni` script, importing what Patroni
//! imports) reaching a short-lived local etcd over https the way Patroni's etcd3 client does,
//! and HAProxy checking a short-lived TLS server with `check-ssl verify required ca-file`.
//! Both run as the user that runs Patroni and HAProxy; every process started is stopped by pid.

use crate::doctor::{fail, ok, output, warn};
use crate::etcd::LocalEtcd;
use crate::files::{ensure_dir, find_program};
use pgplane_core::agent::Check;
use pgplane_localpg::{free_port, RunAs, Supervised};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PATRONI_ETCD: &str = "patroni → etcd over https";
pub const HAPROXY_TLS: &str = "haproxy → TLS check";

/// A private folder for one probe, given to `runas`, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str, runas: &RunAs) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pgplane-doctor-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ensure_dir(&dir, 0o700, Some(runas))?;
        Ok(Scratch(dir))
    }

    /// Writes a file `runas` may read.
    fn file(&self, name: &str, contents: &str, runas: &RunAs) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        crate::files::write_atomic(&path, contents, Some(runas))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What Patroni imports, then a `POST /v3/cluster/member/list` over https with urllib3 checking
/// the server against a CA, as Patroni's etcd3 client does (python-etcd, which Patroni imports,
/// makes urllib3 go through pyOpenSSL when it is installed; pyOpenSSL then needs idna to match
/// the certificate's DNS names). Prints one JSON line. Without a URL: the imports only.
const PROBE_PY: &str = r#"
import json, sys
def out(**kw):
    print(json.dumps(kw))
    sys.exit(0)
def missing_in(e):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError):
            return e.name or str(e)
        e = getattr(e, 'reason', None) if isinstance(getattr(e, 'reason', None), BaseException) else (e.__cause__ or e.__context__)
    return None
try:
    import patroni.dcs.etcd3, patroni.psycopg, patroni.version
    import ssl, urllib3, urllib3.util.ssl_
except ImportError as e:
    out(ok=False, missing=e.name or str(e))
info = dict(patroni=patroni.version.__version__, python=sys.executable, urllib3=urllib3.__version__,
            pyopenssl=bool(getattr(urllib3.util.ssl_, 'IS_PYOPENSSL', False)))
if len(sys.argv) < 3:
    if info['pyopenssl']:
        try:
            import idna
        except ImportError as e:
            out(ok=False, missing=e.name or 'idna', **info)
    out(ok=True, **info)
url, ca = sys.argv[1], sys.argv[2]
try:
    http = urllib3.PoolManager(num_pools=1, cert_reqs=ssl.CERT_REQUIRED, ca_certs=ca)
    r = http.urlopen('POST', url + '/v3/cluster/member/list', body='{}',
                     headers={'Content-Type': 'application/json'}, retries=False, timeout=5)
    out(ok=r.status == 200, status=r.status, body=r.data[:200].decode('utf-8', 'replace'), **info)
except Exception as e:
    name = missing_in(e)
    if name:
        out(ok=False, missing=name, **info)
    out(ok=False, error=repr(e), **info)
"#;

/// The Debian package of a Python module Patroni's libraries import.
fn python_package(module: &str) -> String {
    let top = module.split('.').next().unwrap_or(module);
    match top {
        "OpenSSL" => "python3-openssl".into(),
        "dns" => "python3-dnspython".into(),
        "yaml" => "python3-yaml".into(),
        "etcd" => "python3-etcd".into(),
        "ydiff" | "cdiff" => "python3-cdiff".into(),
        "patroni" => "patroni".into(),
        other => format!("python3-{}", other.to_lowercase()),
    }
}

/// Patroni's Python reaching a short-lived etcd over https (`with_etcd`), or only importing
/// what it needs when there is no etcd program to start one.
pub fn patroni_reaches_etcd(runas: &RunAs, with_etcd: bool) -> Check {
    match patroni_probe(runas, with_etcd) {
        Ok(check) => check,
        Err(e) => fail(PATRONI_ETCD, format!("could not run the check: {e:#}")),
    }
}

fn patroni_probe(runas: &RunAs, with_etcd: bool) -> anyhow::Result<Check> {
    let program = crate::patroni::program()?;
    let Some(python) = crate::patroni::python_of(&program) else {
        return Ok(warn(
            PATRONI_ETCD,
            format!("{} is not a Python script: its libraries were not checked", program.display()),
        ));
    };
    let scratch = Scratch::new("patroni", runas)?;
    let script = scratch.file("probe.py", PROBE_PY, runas)?;
    let mut cmd = Command::new(&python);
    cmd.arg(&script).current_dir(&scratch.0).env("HOME", &scratch.0);
    // Kept until the probe ran; dropping it stops etcd (by pid).
    let _etcd = if with_etcd {
        let etcd = LocalEtcd::start(&scratch.0.join("etcd"))?;
        let ca = scratch.file("etcd-ca.pem", &std::fs::read_to_string(etcd.ca_file())?, runas)?;
        cmd.arg(format!("https://{}", etcd.endpoint())).arg(ca);
        Some(etcd)
    } else {
        None
    };
    runas.apply(&mut cmd);
    let text = output(&mut cmd).map_err(|e| anyhow::anyhow!("{} {}: {e}", python.display(), script.display()))?;
    let answer: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("unreadable answer {text:?}: {e}"))?;
    let via = if answer["pyopenssl"] == true { ", through pyOpenSSL" } else { "" };
    if let Some(module) = answer["missing"].as_str() {
        // A virtual environment (scripts/install-deps) has its own modules, none from Debian
        // (no pyOpenSSL there: its dnspython needs idna itself).
        let venv = python.parent().and_then(Path::parent).filter(|d| d.join("pyvenv.cfg").is_file());
        let pyopenssl = match venv {
            Some(_) => answer["pyopenssl"] == true,
            None => answer["pyopenssl"] != false,
        };
        let why = if module == "idna" && pyopenssl { "for pyOpenSSL" } else { "for Patroni" };
        let fix = match venv {
            Some(dir) => format!("scripts/install-deps makes {} again", dir.display()),
            None => format!("apt-get install {}", python_package(module)),
        };
        return Ok(fail(PATRONI_ETCD, format!("missing python module {module} {why}: {fix}")));
    }
    let about = format!(
        "Patroni {} on {} (urllib3 {}{via})",
        answer["patroni"].as_str().unwrap_or("?"),
        python.display(),
        answer["urllib3"].as_str().unwrap_or("?")
    );
    if answer["ok"] != true {
        let error = answer["error"].as_str().map(str::to_string).unwrap_or_else(|| {
            format!("etcd answered {} {}", answer["status"], answer["body"].as_str().unwrap_or_default())
        });
        return Ok(fail(PATRONI_ETCD, format!("{about} cannot reach etcd over https: {error}")));
    }
    if !with_etcd {
        return Ok(warn(
            PATRONI_ETCD,
            format!("{about} imports its libraries; not exercised: no etcd program here to start a test etcd"),
        ));
    }
    Ok(ok(PATRONI_ETCD, format!("{about} reached etcd over https")))
}

/// HAProxy checking a short-lived TLS server (a certificate from a CA of its own) with
/// `check-ssl verify required ca-file`, until the admin socket says the server is UP.
pub fn haproxy_checks_tls(runas: &RunAs) -> Check {
    match haproxy_probe(runas) {
        Ok(check) => check,
        Err(e) => fail(HAPROXY_TLS, format!("could not run the check: {e:#}")),
    }
}

fn haproxy_probe(runas: &RunAs) -> anyhow::Result<Check> {
    let haproxy = find_program("haproxy", "PGPLANE_HAPROXY")?;
    let scratch = Scratch::new("haproxy", runas)?;
    let ca = pgplane_pki::DatabaseCa::generate("pgplane doctor")?;
    let cert = ca.issue_server(&["127.0.0.1", "localhost"])?;
    let server = TlsServer::start(&cert.cert_pem, &cert.key_pem)?;
    let ca_file = scratch.file("ca.pem", ca.cert_pem(), runas)?;
    let socket = scratch.0.join("admin.sock");
    let config = format!(
        "global\n    stats socket {socket} mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n    timeout check 2s\n\
         listen probe\n    bind 127.0.0.1:{listen}\n\
         \x20   server tls 127.0.0.1:{port} check inter 200ms fall 1 rise 1 check-ssl verify required ca-file \"{ca}\"\n",
        socket = socket.display(),
        listen = free_port()?,
        port = server.port,
        ca = ca_file.display(),
    );
    let config_file = scratch.file("haproxy.cfg", &config, runas)?;
    let mut cmd = Command::new(&haproxy);
    cmd.args(["-db", "-f"]).arg(&config_file).current_dir(&scratch.0).stdin(Stdio::null());
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(scratch.0.join("haproxy.log"))?);
    runas.apply(&mut cmd);
    let proc = Supervised::spawn(cmd, libc::SIGTERM)?;
    let result = wait_up(&proc, &socket, Duration::from_secs(15));
    proc.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(scratch.0.join("haproxy.log")).unwrap_or_default();
    let version = output(Command::new(&haproxy).arg("-v")).unwrap_or_default();
    let version = version.split_whitespace().nth(2).unwrap_or("?").to_string();
    Ok(match result {
        Ok(()) => ok(HAPROXY_TLS, format!("HAProxy {version} verified a TLS server against its CA and marked it UP")),
        Err(why) => fail(
            HAPROXY_TLS,
            format!("HAProxy {version} did not mark a TLS server UP: {why} {}", log.lines().last().unwrap_or_default()),
        ),
    })
}

/// Polls `show stat` until the `tls` server is UP, HAProxy exits, or `timeout` passes.
fn wait_up(proc: &Supervised, socket: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer from the admin socket");
    loop {
        if let Some(status) = proc.exit_status() {
            return Err(format!("haproxy exited ({status})"));
        }
        if let Ok(stat) = admin(socket, "show stat") {
            let mut lines = stat.lines();
            let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
            let col = |name: &str| header.iter().position(|h| *h == name);
            for line in lines {
                let f: Vec<&str> = line.split(',').collect();
                if f.get(1) == Some(&"tls") {
                    let status = col("status").and_then(|i| f.get(i)).copied().unwrap_or_default();
                    if status == "UP" {
                        return Ok(());
                    }
                    let check = col("check_status").and_then(|i| f.get(i)).copied().unwrap_or_default();
                    let desc = col("check_desc").and_then(|i| f.get(i)).copied().unwrap_or_default();
                    last = format!("server {status}, check {check} {desc}");
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("after {timeout:?}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn admin(socket: &Path, command: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(socket)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    sock.read_to_string(&mut out)?;
    Ok(out)
}

/// A TLS server on a free loopback port that completes handshakes and hangs up, on a thread of
/// its own; stopped when dropped.
struct TlsServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsServer {
    fn start(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                        if let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) {
                            while conn.is_handshaking() {
                                if conn.complete_io(&mut stream).is_err() {
                                    break;
                                }
                            }
                            conn.send_close_notify();
                            let _ = conn.complete_io(&mut stream);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(TlsServer { port, stop, thread: Some(thread) })
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_name_their_debian_package() {
        assert_eq!(python_package("idna"), "python3-idna");
        assert_eq!(python_package("OpenSSL.SSL"), "python3-openssl");
        assert_eq!(python_package("dns.resolver"), "python3-dnspython");
        assert_eq!(python_package("psycopg2"), "python3-psycopg2");
    }
}
