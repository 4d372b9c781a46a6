//! keepalived carrying a database's virtual IP: the configuration rendered from a gateway's
//! `GatewayVip` (VRRP version 3, unicast to the other gateway hosts, adverts every 0.1 s, one
//! `vrrp_instance` per VIP, a track on the gateway's HAProxy), and running it as root in the
//! foreground, VRRP only, detached from the agent and re-adopted like HAProxy; SIGHUP reloads
//! it, SIGTERM makes it give the VIP up at once (priority 0) and stop.

use crate::files::{ensure_dir, find_program, open_log, tail, write_atomic};
use crate::haproxy::GatewayPaths;
use crate::process::{self, Managed};
use anyhow::{bail, Context, Result};
use pgplane_core::agent::{GatewaySpec, GatewayVip};
use std::ffi::CStr;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where a gateway's keepalived keeps its files: a folder of its own owned by root (keepalived
/// runs its track script as root and refuses one that another user could change).
#[derive(Debug, Clone)]
pub struct VipPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The track script: exits 0 while the gateway's HAProxy runs.
    pub check: PathBuf,
    pub log: PathBuf,
    /// keepalived's pid, start time and applied configuration (see `process`).
    pub pidfile: PathBuf,
    /// keepalived's own pid files (its parent and VRRP child), kept apart per VIP so that
    /// several keepalived run side by side on one host.
    pub daemon_pid: PathBuf,
    pub vrrp_pid: PathBuf,
}

impl VipPaths {
    pub fn new(dir: PathBuf) -> Self {
        VipPaths {
            config: dir.join("keepalived.conf"),
            check: dir.join("gateway-alive"),
            log: dir.join("keepalived.log"),
            pidfile: process::pidfile(&dir, "keepalived"),
            daemon_pid: dir.join("daemon.pid"),
            vrrp_pid: dir.join("vrrp.pid"),
            dir,
        }
    }
}

/// What the track script checks: the process a pid file (in `process`'s format) names is alive
/// and one of its arguments is `config` (the gateway's HAProxy, as the agent records it), and
/// that HAProxy's admin socket `socket` shows a server of `backend postgres` UP (a writable
/// primary passes its check).
#[derive(Debug, Clone)]
pub struct Tracked {
    pub pidfile: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Tracked {
    pub fn gateway(paths: &GatewayPaths) -> Self {
        Tracked {
            pidfile: paths.pidfile.clone(),
            config: paths.config.clone(),
            socket: paths.dir.join(crate::haproxy::STATS_SOCKET),
        }
    }
}

/// Failed runs of the track script (one a second) before the host gives the VIP up. A gateway
/// cut off from the leader (a partition that leaves both gateway hosts VRRP masters, unable to
/// hear each other) sees no writable primary and gives the VIP up after this; during a normal
/// failover both gateways see none for a moment too, and the VIP goes once a failover lasts
/// longer than this, to come back (`rise 1`) on whichever gateway sees the new leader first.
pub const TRACK_FALL: u32 = 3;

/// keepalived's configuration for `vip`, carried by a gateway whose private address is `source`
/// on `interface`. Every gateway host starts as BACKUP with `nopreempt`: the highest priority
/// wins the first election, and a host that comes back does not take the VIP back (one move
/// per failure, not two). A master that stops (SIGTERM) sends priority 0 and the next one takes
/// over at once; one that vanishes (the host lost) is replaced after 3 adverts plus the skew
/// time, about 0.3 s. The track script runs every second: a host whose HAProxy died, or whose
/// HAProxy has seen no writable primary for `TRACK_FALL` runs, goes to FAULT and gives the VIP
/// up (the agent starts HAProxy again meanwhile); it takes part again at the first good run. A master repeats its
/// gratuitous ARP every 2 s: when a partition heals, both sides are master until one hears the
/// other, and the one that stays often never hears the other's advert (the other steps down at
/// the first one it receives); without the repeat, clients kept sending to the host that had
/// stepped down until their ARP entry expired (15–50 s in the partition lab).
pub fn render(name: &str, database: &str, vip: &GatewayVip, source: &str, interface: &str, paths: &VipPaths) -> String {
    let mut cfg = String::new();
    let _ = write!(
        cfg,
        "# pgplane VIP of database {database}, gateway {name}\n\
         global_defs {{\n\
         \x20   router_id pgplane-{name}-{router_id}\n\
         \x20   vrrp_version 3\n\
         \x20   script_user root\n\
         \x20   enable_script_security\n\
         }}\n\
         \n\
         vrrp_script gateway_alive {{\n\
         \x20   script \"{check}\"\n\
         \x20   interval 1\n\
         \x20   timeout 1\n\
         \x20   fall {fall}\n\
         \x20   rise 1\n\
         }}\n\
         \n\
         vrrp_instance vip_{router_id} {{\n\
         \x20   state BACKUP\n\
         \x20   nopreempt\n\
         \x20   interface {interface}\n\
         \x20   virtual_router_id {router_id}\n\
         \x20   priority {priority}\n\
         \x20   advert_int 0.1\n\
         \x20   garp_master_refresh 2\n\
         \x20   unicast_src_ip {source}\n\
         \x20   unicast_peer {{\n",
        router_id = vip.router_id,
        priority = vip.priority,
        check = paths.check.display(),
        fall = TRACK_FALL,
    );
    for peer in &vip.peers {
        let _ = writeln!(cfg, "        {peer}");
    }
    let _ = write!(
        cfg,
        "    }}\n\
         \x20   virtual_ipaddress {{\n\
         \x20       {address}/32 dev {interface}\n\
         \x20   }}\n\
         \x20   track_script {{\n\
         \x20       gateway_alive\n\
         \x20   }}\n\
         }}\n",
        address = vip.address,
    );
    cfg
}

/// The track script (a POSIX shell script run by keepalived as root). It looks three times
/// 50 ms apart for HAProxy: while the agent replaces HAProxy (a configuration change) the pid
/// file names no process for a moment, which must not move the VIP. Then it asks HAProxy's
/// admin socket (`show stat`, through python3, which every host running Patroni has) whether a
/// server of `backend postgres` is UP (or drained during a switchover): a gateway that cannot
/// reach the leader must not keep clients.
pub fn render_check(tracked: &Tracked) -> String {
    format!(
        "#!/bin/sh\n\
         # pgplane: exits 0 while the gateway's HAProxy runs and sees a writable primary\n\
         # (keepalived's track script)\n\
         PATH=/usr/bin:/bin:/usr/local/bin:$PATH\n\
         alive=\n\
         for try in 1 2 3; do\n\
         \x20   pid=$(sed -n 's/^pid //p' '{pidfile}' 2>/dev/null)\n\
         \x20   if [ -n \"$pid\" ] && grep -qaF -- '{config}' \"/proc/$pid/cmdline\" 2>/dev/null; then alive=1; break; fi\n\
         \x20   [ $try = 3 ] || sleep 0.05\n\
         done\n\
         [ -n \"$alive\" ] || exit 1\n\
         exec python3 - '{socket}' <<'EOF'\n\
         import socket, sys\n\
         out = b''\n\
         try:\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   s.settimeout(0.5)\n\
         \x20   s.connect(sys.argv[1])\n\
         \x20   s.sendall(b'show stat\\n')\n\
         \x20   while True:\n\
         \x20       b = s.recv(65536)\n\
         \x20       if not b:\n\
         \x20           break\n\
         \x20       out += b\n\
         except OSError:\n\
         \x20   sys.exit(1)\n\
         for line in out.decode(errors='replace').splitlines():\n\
         \x20   f = line.split(',')\n\
         \x20   if len(f) > 17 and f[0] == 'postgres' and f[1] not in ('FRONTEND', 'BACKEND', '{hold}') \\\n\
         \x20           and f[17].startswith(('UP', 'DRAIN')):\n\
         \x20       sys.exit(0)\n\
         sys.exit(1)\n\
         EOF\n",
        pidfile = tracked.pidfile.display(),
        config = tracked.config.display(),
        socket = tracked.socket.display(),
        hold = crate::haproxy::HOLD,
    )
}

/// Writes the folder (root's, 0700), the track script and the configuration; returns what the
/// running keepalived must apply (a change is reloaded).
pub fn write_files(paths: &VipPaths, config: &str, check: &str) -> Result<String> {
    ensure_dir(&paths.dir, 0o700, None)?;
    write_atomic(&paths.check, check, None)?;
    std::fs::set_permissions(&paths.check, std::fs::Permissions::from_mode(0o700))?;
    write_atomic(&paths.config, config, None)?;
    Ok(format!("{config}\n{check}"))
}

/// The interface that carries `address` on this host (the agent's private address).
pub fn interface_of(address: &str) -> Result<String> {
    let wanted: Ipv4Addr = address.parse().with_context(|| format!("{address} is not an IPv4 address"))?;
    for (name, addr) in ipv4_interfaces()? {
        if addr == wanted {
            return Ok(name);
        }
    }
    bail!("no interface of this host has the address {address}")
}

/// (interface, address) of every IPv4 address of this host's (this thread's network namespace's)
/// interfaces.
#[allow(unsafe_code)]
fn ipv4_interfaces() -> Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
            // SAFETY: non-null pointers of a live node; an AF_INET address is a sockaddr_in.
            unsafe {
                if i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                    out.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, released once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

fn keepalived() -> Result<PathBuf> {
    find_program("keepalived", "PGPLANE_KEEPALIVED")
}

/// `keepalived -t`: refuses a configuration keepalived would not load, with its own message.
pub fn check_config(config: &Path) -> Result<()> {
    let out = Command::new(keepalived()?)
        .arg("-t")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .context("running keepalived -t")?;
    if !out.status.success() {
        bail!(
            "keepalived refuses {} ({}): {}{}",
            config.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts keepalived (VRRP only, in the foreground, logging to its folder) detached from the
/// agent and recorded in `paths.pidfile` with the digest of `applied`. It must run as root (it
/// adds the VIP and speaks VRRP on a raw socket), in the network namespace of the calling thread.
pub fn start(paths: &VipPaths, applied: &str) -> Result<Managed> {
    check_config(&paths.config)?;
    // A keepalived killed with SIGKILL leaves its pid files, and its VRRP child may linger a
    // moment as a zombie: keepalived would take it for itself running and exit at once. Nothing
    // runs this configuration now (the caller found none to adopt).
    for file in [&paths.daemon_pid, &paths.vrrp_pid] {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", file.display()))
            }
            _ => {}
        }
    }
    let log = open_log(&paths.log, None)?;
    let mut cmd = Command::new(keepalived()?);
    cmd.args(["--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp", "-f"])
        .arg(&paths.config)
        .arg("-p")
        .arg(&paths.daemon_pid)
        .arg("-r")
        .arg(&paths.vrrp_pid)
        .current_dir(&paths.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Managed::start(cmd, libc::SIGTERM, &paths.pidfile, applied).context("starting keepalived")
}

/// The keepalived already running this configuration, if any. Its VRRP child has the same
/// arguments: when the pid file does not name the parent, both are found, stopped (the VIP goes
/// to another host) and a fresh keepalived starts.
pub fn adopt(paths: &VipPaths) -> Option<Managed> {
    Managed::adopt(&paths.pidfile, &paths.config, libc::SIGTERM, |args| args.iter().any(|a| a == "--dont-fork"))
}

/// Makes `proc` (running) apply the configuration written in its folder: SIGHUP.
pub fn reload(proc: &mut Managed, paths: &VipPaths, applied: &str) -> Result<()> {
    check_config(&paths.config)?;
    proc.reload(&paths.pidfile, applied)
}

/// The last lines keepalived logged, for error messages.
pub fn log_tail(paths: &VipPaths) -> String {
    tail(&paths.log, 20)
}

/// The folder of a gateway's keepalived in a database's folder.
pub fn dir_name(gateway: &str) -> String {
    format!("vip-{gateway}")
}

/// The configuration and track script of `spec`'s VIP (None without a VIP), with the interface
/// found from the gateway's private address.
pub fn render_for(spec: &GatewaySpec, paths: &VipPaths, gateway: &GatewayPaths) -> Result<Option<(String, String)>> {
    let Some(vip) = &spec.vip else { return Ok(None) };
    let interface = interface_of(&spec.listen_host)?;
    let config = render(&spec.name, &spec.database_id.to_string(), vip, &spec.listen_host, &interface, paths);
    Ok(Some((config, render_check(&Tracked::gateway(gateway)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip() -> GatewayVip {
        GatewayVip {
            address: "10.213.7.100".into(),
            port: 7000,
            router_id: 17,
            priority: 150,
            peers: vec!["10.0.0.6".into(), "10.0.0.7".into()],
        }
    }

    fn lines(cfg: &str) -> Vec<String> {
        cfg.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    }

    #[test]
    fn vrrp3_unicast_to_the_peers_with_fast_adverts() {
        let paths = VipPaths::new(PathBuf::from("/srv/db/vip-g0"));
        let cfg = render("g0", "db1", &vip(), "10.0.0.5", "eth1", &paths);
        let l = lines(&cfg);
        let block = |start: &str| -> Vec<String> {
            let i = l.iter().position(|x| x == start).unwrap_or_else(|| panic!("no {start:?} in\n{cfg}"));
            let mut depth = 0;
            let mut out = Vec::new();
            for x in &l[i..] {
                depth += x.matches('{').count() as i32 - x.matches('}').count() as i32;
                out.push(x.clone());
                if depth == 0 {
                    break;
                }
            }
            out
        };
        assert!(block("global_defs {").contains(&"vrrp_version 3".to_string()), "{cfg}");
        assert_eq!(
            block("vrrp_instance vip_17 {"),
            [
                "vrrp_instance vip_17 {",
                "state BACKUP",
                "nopreempt",
                "interface eth1",
                "virtual_router_id 17",
                "priority 150",
                "advert_int 0.1",
                "garp_master_refresh 2",
                "unicast_src_ip 10.0.0.5",
                "unicast_peer {",
                "10.0.0.6",
                "10.0.0.7",
                "}",
                "virtual_ipaddress {",
                "10.213.7.100/32 dev eth1",
                "}",
                "track_script {",
                "gateway_alive",
                "}",
                "}",
            ]
        );
        assert_eq!(
            block("vrrp_script gateway_alive {")[1],
            "script \"/srv/db/vip-g0/gateway-alive\"",
            "the track script lives in keepalived's own folder"
        );
        assert_eq!(
            block("vrrp_script gateway_alive {")[4],
            "fall 3",
            "a failover's moment without a primary moves no VIP"
        );
    }

    #[test]
    fn the_track_script_checks_the_recorded_haproxy() {
        let gateway = GatewayPaths::new(PathBuf::from("/srv/db/gateway-g0"));
        let check = render_check(&Tracked::gateway(&gateway));
        assert!(check.starts_with("#!/bin/sh\n"), "{check}");
        assert!(check.contains("'/srv/db/gateway-g0/haproxy.pid'"), "{check}");
        assert!(check.contains("grep -qaF -- '/srv/db/gateway-g0/haproxy.cfg' \"/proc/$pid/cmdline\""), "{check}");
        assert!(check.contains("python3 - '/srv/db/gateway-g0/admin.sock'"), "{check}");
    }

    /// A fake HAProxy admin socket answering every `show stat` with `csv`, until the test ends.
    fn fake_admin(socket: &Path, csv: &'static str) {
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line);
                let _ = std::io::Write::write_all(&mut conn, csv.as_bytes());
            }
        });
    }

    #[test]
    fn a_running_script_judges_a_live_process_and_a_writable_primary() {
        let dir = std::env::temp_dir().join(format!("pgplane-keepalived-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("x.cfg");
        let tracked = Tracked { pidfile: dir.join("x.pid"), config: config.clone(), socket: dir.join("up.sock") };
        let script = dir.join("check");
        let run = |tracked: &Tracked| {
            std::fs::write(&script, render_check(tracked)).unwrap();
            Command::new("sh").arg(&script).status().unwrap().success()
        };
        assert!(!run(&tracked), "no pid file");
        let mut child = Command::new("sh").args(["-c", "sleep 30"]).arg(&config).spawn().unwrap();
        std::fs::write(&tracked.pidfile, format!("pid {}\nstart 1\napplied x\n", child.id())).unwrap();
        assert!(!run(&tracked), "a live HAProxy without an admin socket");
        let head =
            "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n";
        fake_admin(&tracked.socket, Box::leak(format!("{head}postgres,FRONTEND,,,0,0,0,0,0,0,0,0,0,,,,,OPEN\npostgres,m0,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN\npostgres,m1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\npostgres,no-primary,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\n").into_boxed_str()));
        assert!(run(&tracked), "a live HAProxy that sees a primary UP");
        let down = Tracked { socket: dir.join("down.sock"), ..tracked.clone() };
        fake_admin(&down.socket, Box::leak(format!("{head}postgres,m0,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN\npostgres,m1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN 1/2\npostgres,no-primary,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\npostgres,BACKEND,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP\n").into_boxed_str()));
        assert!(!run(&down), "no member UP: only the parking backup and the backend line");
        let drained = Tracked { socket: dir.join("drain.sock"), ..tracked.clone() };
        fake_admin(
            &drained.socket,
            Box::leak(format!("{head}postgres,m0,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN\n").into_boxed_str()),
        );
        assert!(run(&drained), "a primary drained during a switchover still counts");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!run(&tracked), "a dead one");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_interface_of_loopback() {
        assert_eq!(interface_of("127.0.0.1").unwrap(), "lo");
        assert!(interface_of("192.0.2.99").is_err());
    }
}
