//! The keepalived driver on two network-namespace "hosts" on a bridge (needs root): the VIP
//! answers on the MASTER, moves to the other host when the master's keepalived is killed -9 (a
//! lost host) and when the master's tracked gateway process dies, and the driver adopts and
//! reloads a running keepalived. Everything lives in namespaces the test makes (a private /24,
//! no route out; the root namespace's interfaces untouched) and is removed by a guard even on
//! panic. Move times are printed, not asserted.
//!
//! A second test runs the agent's own path on one namespace: a persisted gateway spec with a VIP
//! is reconciled into a real HAProxy binding the VIP and a keepalived holding it while HAProxy
//! sees a writable primary (a stand-in Patroni answering `/primary` over TLS); a primary gone
//! (the gateway cut off from the leader) or a dead HAProxy makes keepalived give the VIP up;
//! removing the database stops both and removes the folder.
//!
//! In the first test the gateway's HAProxy is played by a tiny TCP server bound to the VIP (`ip_nonlocal_bind`)
//! that answers with its host's name, recorded where the agent records HAProxy (so the track
//! script the driver renders checks it as it would HAProxy): a client can tell which host holds
//! the VIP.

use pgplane_agent::haproxy::GatewayPaths;
use pgplane_agent::keepalived::{self, VipPaths};
use pgplane_agent::process::{self, Managed};
use pgplane_core::agent::{GatewaySpec, GatewayVip};
use pgplane_core::ids::DatabaseId;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const NET: &str = "10.213.97";
const VIP: &str = "10.213.97.100";
const PORT: u16 = 7000;

/// Removes what the test made, even when it panics: every process under its folder, then the
/// namespaces, then the folder.
struct Lab {
    tag: String,
    dir: PathBuf,
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.tag)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in process::processes_under(&self.dir) {
            // SAFETY: kill takes no pointers; these are the test's own processes.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for host in ["a", "b", "sw", "solo"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a thread inside namespace `ns` (threads and processes it starts stay there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace");
    std::thread::spawn(move || {
        // SAFETY: setns on a valid descriptor affects this thread only.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespaced thread")
}

/// Which host answers on the VIP, asked from the switch's namespace (None: nobody).
fn who(lab: &Lab) -> Option<String> {
    in_ns(&lab.ns("sw"), || {
        let addr: SocketAddr = format!("{VIP}:{PORT}").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let mut name = String::new();
        s.read_to_string(&mut name).ok()?;
        Some(name.trim().to_string())
    })
}

/// Polls until `host` answers on the VIP; returns how long it took.
fn wait_for(lab: &Lab, host: &str, since: Instant, timeout: Duration) -> Duration {
    loop {
        if who(lab).as_deref() == Some(host) {
            return since.elapsed();
        }
        if since.elapsed() > timeout {
            for h in ["a", "b"] {
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "tail -n 25 {}/{h}/*/vip-*/keepalived.log; ip -n {} -4 -o addr",
                        lab.dir.display(),
                        lab.ns(h)
                    ))
                    .output()
                    .unwrap();
                eprintln!("--- {h}:\n{}", String::from_utf8_lossy(&out.stdout));
            }
            panic!("{host} did not take the VIP within {timeout:?} (answering: {:?})", who(lab));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Host {
    name: &'static str,
    addr: String,
    spec: GatewaySpec,
    gateway: GatewayPaths,
    paths: VipPaths,
}

/// The gateway stand-in: a TCP server on the VIP answering `name`, recorded like HAProxy, with
/// an admin socket where HAProxy's is that shows a primary UP (what the track script asks).
fn start_listener(lab: &Lab, host: &Host) -> u32 {
    let script = format!(
        "import os, socket, threading\n\
         def admin():\n\
         \x20   p = '{sock}'\n\
         \x20   try:\n\
         \x20       os.unlink(p)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   a = socket.socket(socket.AF_UNIX)\n\
         \x20   a.bind(p)\n\
         \x20   a.listen(8)\n\
         \x20   while True:\n\
         \x20       c, _ = a.accept()\n\
         \x20       c.recv(1024)\n\
         \x20       c.sendall(b'postgres,m0,' + b'0,' * 15 + b'UP\\n')\n\
         \x20       c.close()\n\
         threading.Thread(target=admin, daemon=True).start()\n\
         s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{VIP}', {PORT}))\ns.listen(64)\nwhile True:\n    c, _ = s.accept()\n    \
         c.sendall(b'{}\\n')\n    c.close()\n",
        host.name,
        sock = host.gateway.dir.join(pgplane_agent::haproxy::STATS_SOCKET).display(),
    );
    std::fs::write(&host.gateway.config, script).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns(host.name), "python3"])
        .arg(&host.gateway.config)
        .spawn()
        .expect("python3");
    let pid = child.id();
    // Reaped as soon as it dies, so the track script sees it gone (not a zombie).
    std::thread::spawn(move || child.wait());
    std::fs::write(&host.gateway.pidfile, format!("pid {pid}\nstart 0\napplied -\n")).unwrap();
    pid
}

/// Renders and writes keepalived's files for `host` as the agent does (interface found from
/// its address inside its namespace).
fn write_vip(lab: &Lab, host: &Host) -> String {
    let (spec, paths, gateway) = (host.spec.clone(), host.paths.clone(), host.gateway.clone());
    in_ns(&lab.ns(host.name), move || {
        let (config, check) = keepalived::render_for(&spec, &paths, &gateway).unwrap().expect("a VIP");
        keepalived::write_files(&paths, &config, &check).unwrap()
    })
}

fn start_vip(lab: &Lab, host: &Host, applied: String) -> Managed {
    let paths = host.paths.clone();
    in_ns(&lab.ns(host.name), move || keepalived::start(&paths, &applied).unwrap())
}

fn kill(pid: i32) {
    // SAFETY: kill takes no pointers; the test's own process (group).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn has_vip(lab: &Lab, host: &str) -> bool {
    let out = Command::new("ip").args(["-n", &lab.ns(host), "-4", "-o", "addr", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/32"))
}

#[test]
fn the_vip_moves_to_the_other_host() {
    // SAFETY: geteuid takes nothing.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["keepalived", "python3", "ip"].iter().all(|p| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p} || test -x /usr/sbin/{p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!("skipped: needs root, keepalived, python3 and ip");
        return;
    }
    let tag = format!("pgpv{}", std::process::id());
    // keepalived runs the track script as root only from a folder no other user may write to.
    let dir = PathBuf::from(format!("/run/{tag}"));
    let lab = Lab { tag, dir: dir.clone() };
    std::fs::create_dir_all(&dir).unwrap();
    let (sw, a, b) = (lab.ns("sw"), lab.ns("a"), lab.ns("b"));
    for ns in [&sw, &a, &b] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    sh(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &sw, "addr", "add", &format!("{NET}.1/24"), "dev", "br0"]);
    sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
    let database_id = DatabaseId::new();
    let mut hosts = Vec::new();
    for (i, (name, ns)) in [("a", &a), ("b", &b)].into_iter().enumerate() {
        let port = format!("v{name}");
        sh(&["ip", "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        sh(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        let addr = format!("{NET}.{}", 11 + i);
        sh(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]);
        let db_dir = dir.join(name).join(database_id.to_string());
        let gateway = GatewayPaths::new(db_dir.join("gateway-g0"));
        std::fs::create_dir_all(&gateway.dir).unwrap();
        let peer = format!("{NET}.{}", 12 - i);
        let spec = GatewaySpec {
            database_id,
            generation: 1,
            name: format!("g{i}"),
            listen_host: addr.clone(),
            listen_port: PORT,
            public_host: None,
            allowed_cidrs: vec![],
            backends: vec![],
            ca_pem: String::new(),
            vip: Some(GatewayVip {
                address: VIP.into(),
                port: PORT,
                router_id: 42,
                priority: if i == 0 { 150 } else { 100 },
                peers: vec![peer],
            }),
        };
        let paths = VipPaths::new(db_dir.join(keepalived::dir_name(&spec.name)));
        hosts.push(Host { name, addr, spec, gateway, paths });
    }
    let (ha, hb) = (&hosts[0], &hosts[1]);
    let mut listeners: Vec<u32> = hosts.iter().map(|h| start_listener(&lab, h)).collect();
    let mut procs: Vec<Managed> = hosts.iter().map(|h| start_vip(&lab, h, write_vip(&lab, h))).collect();
    let started = Instant::now();
    let first = wait_for(&lab, "a", started, Duration::from_secs(20));
    eprintln!("a (priority 150) holds the VIP {first:?} after both started ({}, {})", ha.addr, hb.addr);
    assert!(!has_vip(&lab, "b"), "only the master has the VIP");

    // A restarted agent finds the running keepalived through its pid file.
    let adopted = keepalived::adopt(&ha.paths).expect("adopted");
    assert_eq!(adopted.pid(), procs[0].pid());
    assert_eq!(adopted.applied(), procs[0].applied());
    // A changed configuration is reloaded (SIGHUP), same process, VIP kept.
    let mut lower = ha.spec.clone();
    lower.vip.as_mut().unwrap().priority = 140;
    let changed =
        Host { spec: lower, gateway: ha.gateway.clone(), paths: ha.paths.clone(), addr: ha.addr.clone(), name: "a" };
    let applied = write_vip(&lab, &changed);
    keepalived::reload(&mut procs[0], &ha.paths, &applied).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(procs[0].exited().is_none(), "{}", keepalived::log_tail(&ha.paths));
    assert_eq!(procs[0].applied(), process::digest(&applied));
    assert!(keepalived::log_tail(&ha.paths).contains("Reloading"), "{}", keepalived::log_tail(&ha.paths));
    assert_eq!(who(&lab).as_deref(), Some("a"), "the VIP stays through a reload");

    // The master's host lost: its keepalived (parent and VRRP child) killed at once.
    let killed = Instant::now();
    kill(-(procs[0].pid() as i32));
    let lost_host = wait_for(&lab, "b", killed, Duration::from_secs(10));
    eprintln!("VIP moved a → b {lost_host:?} after kill -9 of a's keepalived");

    // a comes back (its agent starts keepalived again): b keeps the VIP (nopreempt).
    assert!(keepalived::adopt(&ha.paths).is_none(), "nothing to adopt");
    procs[0] = start_vip(&lab, ha, write_vip(&lab, ha));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(who(&lab).as_deref(), Some("b"), "b keeps the VIP when a comes back");
    assert!(!has_vip(&lab, "a"), "a fresh keepalived removes the address its killed one left");

    // b's gateway dies: the track script fails, b gives the VIP up, a takes it.
    let died = Instant::now();
    kill(listeners[1] as i32);
    let gateway_died = wait_for(&lab, "a", died, Duration::from_secs(10));
    eprintln!("VIP moved b → a {gateway_died:?} after kill -9 of b's gateway (track script every 1 s)");
    assert!(!has_vip(&lab, "b"), "b in FAULT has given the VIP up");
    listeners[1] = start_listener(&lab, hb);
    std::thread::sleep(Duration::from_secs(2)); // b's track script passes again: b is BACKUP

    // Stopping keepalived (SIGTERM, as a removal does) hands the VIP over at once.
    // (keepalived takes about a second to exit after it gave the VIP up: measured meanwhile.)
    let stopped = Instant::now();
    let handed = std::thread::scope(|scope| {
        let a = &procs[0];
        let stopping = scope.spawn(move || a.stop(Duration::from_secs(10)));
        let handed = wait_for(&lab, "b", stopped, Duration::from_secs(10));
        stopping.join().unwrap();
        handed
    });
    eprintln!("VIP moved a → b {handed:?} after a SIGTERM to a's keepalived (exited after {:?})", stopped.elapsed());
    assert!(!has_vip(&lab, "a"), "a stopped keepalived removes the VIP");
    for p in &procs {
        p.stop(Duration::from_secs(10));
    }
}

fn root_with_tools(tools: &[&str]) -> bool {
    // SAFETY: geteuid takes nothing.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    root && tools.iter().all(|p| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p} || test -x /usr/sbin/{p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_agent_runs_keepalived_beside_haproxy_and_removes_it() {
    if !root_with_tools(&["keepalived", "haproxy", "ip"]) {
        eprintln!("skipped: needs root, keepalived, haproxy and ip");
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let tag = format!("pgpw{}", std::process::id());
    let dir = PathBuf::from(format!("/run/{tag}"));
    let lab = Lab { tag, dir: dir.clone() };
    std::fs::create_dir_all(&dir).unwrap();
    let ns = lab.ns("solo");
    sh(&["ip", "netns", "add", &ns]);
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    sh(&["ip", "-n", &ns, "link", "set", "eth1", "up"]);
    sh(&["ip", "-n", &ns, "addr", "add", &format!("{NET}.11/24"), "dev", "eth0"]);
    sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    // What the agent sets at start (as root), in this namespace.
    sh(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]);
    let database_id = DatabaseId::new();
    let ca_pem = primary_certificates(&dir);
    let mut primary = start_primary(&ns, &dir);
    let spec = GatewaySpec {
        database_id,
        generation: 1,
        name: "g0".into(),
        listen_host: format!("{NET}.11"),
        listen_port: PORT,
        public_host: None,
        allowed_cidrs: vec![],
        // A member whose Patroni is played by `start_primary`.
        backends: vec![pgplane_core::agent::GatewayBackend {
            member: "m0".into(),
            host: format!("{NET}.11"),
            pg_port: 5432,
            patroni_port: 8008,
        }],
        ca_pem: ca_pem.clone(),
        vip: Some(GatewayVip {
            address: VIP.into(),
            port: PORT + 1,
            router_id: 7,
            priority: 150,
            // A peer that never answers: this host becomes MASTER after 3 adverts.
            peers: vec![format!("{NET}.12")],
        }),
    };
    let node_root = dir.join("node");
    let gateway_dir = node_root.join(database_id.to_string()).join("gateway-g0");
    std::fs::create_dir_all(&gateway_dir).unwrap();
    std::fs::write(gateway_dir.join("spec.json"), serde_json::to_string(&spec).unwrap()).unwrap();
    let vip_dir = node_root.join(database_id.to_string()).join("vip-g0");
    let lab_ref = &lab;
    let wait_vip = |present: bool, what: &str| {
        let t = Instant::now();
        while has_vip(lab_ref, "solo") != present {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: {}",
                keepalived::log_tail(&VipPaths::new(vip_dir.clone()))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    };
    let node_root_copy = node_root.clone();
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The agent's node, inside the namespace (it and what it starts stay there).
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<String>();
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let agent = std::thread::spawn(move || {
        // SAFETY: setns on a valid descriptor affects this thread only.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let node = pgplane_agent::Node::new(&node_root_copy).unwrap();
        let rt = rt();
        for step in rx {
            let out = match step {
                "reconcile" => format!("{:?}", rt.block_on(node.reconcile())),
                "remove" => format!("{:?}", rt.block_on(node.remove_database(database_id, 2))),
                _ => unreachable!(),
            };
            done_tx.send(out).unwrap();
        }
    });
    let step = |s: &'static str| {
        tx.send(s).unwrap();
        done_rx.recv().unwrap()
    };
    let pass = step("reconcile");
    assert!(
        pass.contains("started: 2") && pass.contains("failed: 0"),
        "HAProxy and keepalived started: {pass}\n{}\n{}",
        keepalived::log_tail(&VipPaths::new(vip_dir.clone())),
        std::fs::read_to_string(gateway_dir.join("haproxy.log")).unwrap_or_default()
    );
    let held = wait_vip(true, "keepalived took the VIP");
    eprintln!("the lone gateway host holds the VIP {held:?} after the reconcile pass");

    // The primary gone (the gateway cut off from the leader): the VIP goes after the grace, and
    // comes back with a primary.
    let gone = Instant::now();
    primary.kill().unwrap();
    primary.wait().unwrap();
    let t = Instant::now();
    while has_vip(&lab, "solo") {
        assert!(t.elapsed() < Duration::from_secs(15), "the VIP stayed without a primary");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("the VIP left the host {:?} after its primary went", gone.elapsed());
    let mut primary = start_primary(&ns, &dir);
    let back = wait_vip(true, "the VIP came back with a primary");
    eprintln!("the VIP came back {back:?} after the primary did");
    let reached = in_ns(&ns, || {
        TcpStream::connect_timeout(&format!("{VIP}:{}", PORT + 1).parse().unwrap(), Duration::from_secs(1)).is_ok()
    });
    assert!(reached, "HAProxy listens on the VIP");
    let pass = step("reconcile");
    assert!(pass.contains("unchanged: 2") && pass.contains("started: 0"), "left alone: {pass}");

    // HAProxy dies: the track script fails and keepalived gives the VIP up.
    let record = std::fs::read_to_string(gateway_dir.join("haproxy.pid")).unwrap();
    let haproxy: i32 = record.lines().find_map(|l| l.strip_prefix("pid ")).unwrap().trim().parse().unwrap();
    let died = Instant::now();
    kill(haproxy);
    wait_vip(false, "the VIP left with HAProxy");
    eprintln!("the VIP left the host {:?} after HAProxy was killed", died.elapsed());
    // The next pass starts HAProxy again; keepalived takes the VIP back (no other host).
    let pass = step("reconcile");
    assert!(pass.contains("started: 1") && pass.contains("failed: 0"), "HAProxy started again: {pass}");
    wait_vip(true, "the VIP came back with HAProxy");

    // Removing the database stops keepalived (the VIP goes) and HAProxy, and the folder.
    let removed = step("remove");
    assert_eq!(removed, "Ok(())");
    assert!(!has_vip(&lab, "solo"), "the VIP left with the database");
    assert!(!vip_dir.exists() && !gateway_dir.exists(), "the folder is gone");
    assert!(process::processes_under(&node_root).is_empty(), "nothing of the database runs");
    drop(tx);
    agent.join().unwrap();
    let _ = primary.kill();
    let _ = primary.wait();
}

/// A CA (returned, PEM) and a certificate it signed for the stand-in Patroni (`primary.pem`,
/// `primary.key` in `dir`).
fn primary_certificates(dir: &std::path::Path) -> String {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-subj", "/CN=test", "-days", "1", "-keyout", "ca.key", "-out", "ca.pem"]]
        .concat());
    run(&[&["req"][..], &ec, &["-subj", "/CN=m0", "-keyout", "primary.key", "-out", "primary.csr"]].concat());
    run(&["x509", "-req", "-in", "primary.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1"]
        .into_iter()
        .chain(["-out", "primary.pem"])
        .collect::<Vec<_>>());
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

/// A stand-in for the member's Patroni, leading: HTTPS on the member's REST port answering
/// `GET /primary` with 200 and a primary's role, as HAProxy's check wants.
fn start_primary(ns: &str, dir: &std::path::Path) -> std::process::Child {
    let script = format!(
        "import http.server, ssl\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       b = b'{{\"role\": \"primary\"}}'\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', str(len(b)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(b)\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.ThreadingHTTPServer.allow_reuse_address = True\n\
         s = http.server.ThreadingHTTPServer(('{NET}.11', 8008), H)\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         ctx.load_cert_chain('{dir}/primary.pem', '{dir}/primary.key')\n\
         s.socket = ctx.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        dir = dir.display()
    );
    let path = dir.join("primary.py");
    std::fs::write(&path, script).unwrap();
    Command::new("ip").args(["netns", "exec", ns, "python3"]).arg(&path).spawn().expect("python3")
}
