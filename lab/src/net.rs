//! The lab's network: one namespace per "host" (the control plane and three database hosts) and a
//! bridge inside a namespace of its own, joined by veth pairs, with addresses from a private /24
//! (`10.213.<n>.0/24`, `n` chosen per run) that exist only inside these namespaces; databases'
//! virtual IPs come from the same /24 (`.100`–`.109`). Nothing here touches the root namespace's
//! interfaces or routes and no namespace has a default route, so no packet can leave the machine.
//! Faults: nftables drops on a host's interface (everything, ARP included, as a cut cable), a slow
//! link on its interface, and a lost host (kill -9 of every process in it, its link down and its
//! addresses gone, as after a power cut). Dropping `Net` deletes every namespace.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (install nftables and iproute2: scripts/install-deps)"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A namespace of the lab: its name and its address on the lab's /24.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: String,
    /// The veth end inside the namespace.
    pub dev: String,
}

impl Host {
    /// Runs a command inside this namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", self.ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The pids of every process in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        run("ip", &["netns", "pids", &self.ns])
            .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).filter(|&p| p != std::process::id()).collect())
            .unwrap_or_default()
    }

    /// Drops every packet in and out of its interface (the host is cut off entirely; loopback
    /// still works).
    pub fn partition_all(&self) -> Result<()> {
        self.nft("")
    }

    /// Drops packets to and from the given addresses only.
    pub fn partition_from(&self, peers: &[&str]) -> Result<()> {
        self.nft(&format!("{{ {} }}", peers.join(", ")))
    }

    /// `peers` empty: every packet; else `{ a, b }`. The rules sit on the interface itself
    /// (netdev ingress and egress), where they also catch ARP and what packet sockets send: a
    /// cut-off keepalived's gratuitous ARPs for a VIP (sent on a packet socket, past the `inet`
    /// hooks) would otherwise draw the clients' traffic to the cut-off host, as no cut cable can.
    fn nft(&self, peers: &str) -> Result<()> {
        let (inp, out) = if peers.is_empty() {
            ("drop".to_string(), "drop".to_string())
        } else {
            (
                format!("ip saddr {peers} drop; arp saddr ip {peers} drop"),
                format!("ip daddr {peers} drop; arp daddr ip {peers} drop"),
            )
        };
        let dev = &self.dev;
        let rules = format!(
            "table netdev lab {{\n chain ingress {{ type filter hook ingress device \"{dev}\" priority 0; policy accept; {inp}; }}\n \
             chain egress {{ type filter hook egress device \"{dev}\" priority 0; policy accept; {out}; }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}.nft", self.ns));
        std::fs::write(&file, rules)?;
        self.exec("nft", &["-f", file.to_str().unwrap()])?;
        let _ = std::fs::remove_file(file);
        Ok(())
    }

    /// Removes the partition (harmless when there is none).
    pub fn heal(&self) {
        let _ = self.exec("nft", &["delete", "table", "netdev", "lab"]);
    }

    /// A slow, lossy link on this host's interface: `tc netem` delay and loss where the kernel has
    /// netem; where it has not (some kernels leave `sch_netem` out), the loss through nftables
    /// (`numgen random`) and a 1 Mbit/s token bucket instead. Returns what was applied.
    pub fn slow_link(&self, delay_ms: u32, loss_percent: u32) -> Result<String> {
        let (delay, loss) = (format!("{delay_ms}ms"), format!("{loss_percent}%"));
        let netem = ["qdisc", "add", "dev", &self.dev, "root", "netem", "delay", &delay, "loss", &loss];
        if self.exec("tc", &netem).is_ok() {
            return Ok(format!("netem delay {delay} loss {loss}"));
        }
        self.exec(
            "tc",
            &["qdisc", "add", "dev", &self.dev, "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"],
        )?;
        let rules = format!(
            "table inet labloss {{\n chain input {{ type filter hook input priority 0; numgen random mod 100 < {loss_percent} drop; }}\n \
             chain output {{ type filter hook output priority 0; numgen random mod 100 < {loss_percent} drop; }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-loss.nft", self.ns));
        std::fs::write(&file, rules)?;
        self.exec("nft", &["-f", file.to_str().unwrap()])?;
        let _ = std::fs::remove_file(file);
        Ok(format!("no netem in this kernel: tbf 1mbit (400 ms queue) and nftables loss {loss}"))
    }

    pub fn fast_link(&self) {
        let _ = self.exec("tc", &["qdisc", "del", "dev", &self.dev, "root"]);
        let _ = self.exec("nft", &["delete", "table", "inet", "labloss"]);
    }

    /// The host is lost: kill -9 of every process in it, its link down and its addresses gone
    /// (a VIP it held included, as after a power cut). Returns how many processes there were.
    pub fn lose(&self) -> Result<usize> {
        let killed = self.kill_all();
        self.exec("ip", &["link", "set", &self.dev, "down"])?;
        self.exec("ip", &["addr", "flush", "dev", &self.dev])?;
        Ok(killed)
    }

    /// The lost host is back (rebooted): its own address, its link up, no process yet.
    pub fn come_back(&self) -> Result<()> {
        self.exec("ip", &["addr", "add", &format!("{}/24", self.addr), "dev", &self.dev])?;
        self.exec("ip", &["link", "set", &self.dev, "up"])?;
        Ok(())
    }

    /// Whether `address` is on this host's interface (keepalived gave it the VIP).
    pub fn has_address(&self, address: &str) -> bool {
        self.exec("ip", &["-4", "-o", "addr", "show", "dev", &self.dev])
            .is_ok_and(|out| out.split_whitespace().any(|w| w.split('/').next() == Some(address)))
    }

    /// kill -9 of every process in the namespace; returns how many there were.
    pub fn kill_all(&self) -> usize {
        let mut killed = 0;
        for _ in 0..5 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            killed += pids.len();
            for pid in pids {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        killed
    }
}

/// The lab's namespaces; deleted (after killing what runs in them) when dropped.
pub struct Net {
    /// `10.213.<n>`
    pub prefix: String,
    /// The control plane (api, scheduler, their PostgreSQL, the clients) at `.1`.
    pub control: Host,
    /// The database hosts at `.11`, `.12`, `.13`, each with a member of the etcd cluster.
    pub hosts: Vec<Host>,
    switch: String,
}

impl Net {
    /// Makes the namespaces, the bridge and the links. `n` picks the /24 and the names; a run
    /// uses one that no other namespace of the machine uses yet.
    pub fn create() -> Result<Net> {
        let existing = run("ip", &["netns", "list"])?;
        let n = (1..250u32)
            .map(|i| (std::process::id() + i) % 250 + 1)
            .find(|n| !existing.contains(&format!("lab{n}-")))
            .context("no free lab number")?;
        let prefix = format!("10.213.{n}");
        let switch = format!("lab{n}-sw");
        let net = Net {
            prefix: prefix.clone(),
            control: Host { ns: format!("lab{n}-cp"), addr: format!("{prefix}.1"), dev: "eth0".into() },
            hosts: (1..=3)
                .map(|i| Host { ns: format!("lab{n}-h{i}"), addr: format!("{prefix}.1{i}"), dev: "eth0".into() })
                .collect(),
            switch: switch.clone(),
        };
        // Registered before anything is made, so a failure half-way still deletes what was made.
        run("ip", &["netns", "add", &switch])?;
        let sw = Host { ns: switch.clone(), addr: String::new(), dev: String::new() };
        sw.exec("ip", &["link", "add", "br0", "type", "bridge"])?;
        sw.exec("ip", &["link", "set", "br0", "up"])?;
        sw.exec("ip", &["link", "set", "lo", "up"])?;
        let all: Vec<Host> = std::iter::once(net.control.clone()).chain(net.hosts.clone()).collect();
        for (i, host) in all.iter().enumerate() {
            run("ip", &["netns", "add", &host.ns])?;
            let peer = format!("p{i}");
            // Made inside the switch's namespace, then one end moved into the host's.
            sw.exec("ip", &["link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &host.ns])?;
            sw.exec("ip", &["link", "set", &peer, "master", "br0", "up"])?;
            host.exec("ip", &["link", "set", "lo", "up"])?;
            host.exec("ip", &["addr", "add", &format!("{}/24", host.addr), "dev", "eth0"])?;
            host.exec("ip", &["link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// The scheduler's pool of virtual IPs (`--gateway-vips`): ten addresses of the lab's /24.
    pub fn vip_pool(&self) -> String {
        format!("{0}.100-{0}.109", self.prefix)
    }

    /// The host whose address is `addr`.
    pub fn host(&self, addr: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.addr == addr)
    }

    /// Moves the calling thread into the control plane's namespace: sockets it opens and
    /// processes and threads it starts afterwards live there. Call it on a thread of its own
    /// before building the async runtime.
    pub fn enter_control(&self) -> Result<()> {
        enter(&self.control.ns)
    }
}

#[allow(unsafe_code)]
fn enter(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    // SAFETY: setns on a valid namespace descriptor changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        let all: Vec<Host> = std::iter::once(self.control.clone()).chain(self.hosts.clone()).collect();
        for host in &all {
            host.kill_all();
        }
        for host in &all {
            let _ = run("ip", &["netns", "del", &host.ns]);
        }
        let _ = run("ip", &["netns", "del", &self.switch]);
    }
}

/// Whether this process may make namespaces (it runs as root).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
