//! `failover`: a Business database with synchronous replication; in each trial a client writes
//! through the gateway (one INSERT per new connection) while the leader's Patroni and
//! PostgreSQL are killed with -9. Measured: the write gap (last acknowledged write before →
//! first after), acknowledged writes lost, whether leadership moved (the agent restarts a
//! killed Patroni within seconds, which often takes its leader key back before it expires),
//! and the time until the cluster is whole again (the old member running, a synchronous
//! standby named in `/sync`). Trials run with the platform's Patroni timings and then with
//! others set through Patroni's REST API (PATCH /config, bench only). Where the gap goes: the
//! leader key is watched in etcd during each trial (kill → key gone → a new leader's key →
//! the first write through the gateway). `--idle` first watches each timing with no fault for a
//! while under writes (optionally with CPU burners) and counts leader changes: a timing that
//! demotes a healthy leader is no use however fast it fails over.

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

use crate::figures::{dur, footer, header, met, Summary, Table};
use crate::ha;
use crate::platform::Platform;
use crate::procs::{self, kill9};

#[derive(clap::Args)]
pub struct Args {
    /// Trials per timing.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Patroni ttl/loop_wait/retry_timeout to run the trials with, comma-separated. The first
    /// is the platform's (agent/src/patroni.rs); others are set through PATCH /config.
    #[arg(long, value_delimiter = ',', default_value = "4/1/1.5,5/1/2")]
    timings: Vec<String>,
    #[arg(long, default_value = "business-1")]
    plan: String,
    /// `restart`: the leader host's agent runs on and restarts Patroni (as deployed).
    /// `paused`: that agent is stopped (SIGSTOP) from the kill until writes resume, as if the
    /// host were lost, so leadership has to move; then it continues and restarts Patroni.
    #[arg(long, value_delimiter = ',', default_value = "restart,paused")]
    modes: Vec<Mode>,
    /// Seconds to watch each timing with no fault (a writer running) before its trials,
    /// counting leader changes (spurious failovers); 0 skips it.
    #[arg(long, default_value_t = 0)]
    idle: u64,
    /// Threads spinning on the CPU during `--idle` (a busy host).
    #[arg(long, default_value_t = 0)]
    burn: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Restart,
    Paused,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Restart => "agent restarts Patroni",
            Mode::Paused => "agent paused",
        }
    }
}

struct Trial {
    timings: String,
    mode: Mode,
    before: String,
    after: String,
    gap: Duration,
    failed: usize,
    acked: usize,
    lost: usize,
    /// Kill → the cluster whole again.
    heal: Duration,
    /// The leader had changed since the previous trial's cluster was whole (a spurious failover).
    idle_change: bool,
    /// Kill → the old leader's key gone from etcd (its lease expired), when seen.
    key_gone: Option<Duration>,
    /// Kill → another member's leader key, when seen.
    new_key: Option<Duration>,
    errors: Vec<String>,
}

/// What `--idle` saw for one timing.
struct Idle {
    timings: String,
    secs: u64,
    burn: usize,
    changes: usize,
    acked: usize,
    failed: usize,
}

pub async fn run(args: Args) -> Result<()> {
    header("failover: kill -9 of the leader's Patroni and PostgreSQL under writes");
    let p = Platform::start(2).await?;
    let result = measure(&args, &p).await;
    p.stop().await?;
    let (trials, idles) = result?;
    println!();
    println!(
        "{}, synchronous replication on; writer: one psql INSERT per new connection through the gateway \
         (verify-ca, connect timeout {} s), 25 ms pause after a failure",
        args.plan,
        crate::client::connect_timeout()
    );
    let mut t = Table::new(&[
        "trial",
        "ttl/loop/retry",
        "mode",
        "leader before → after",
        "moved",
        "write gap",
        "failed",
        "acked",
        "lost",
        "whole again",
        "key gone",
        "new key",
    ]);
    let opt = |d: Option<Duration>| d.map_or("-".into(), |d| dur(d.as_secs_f64()));
    for (i, tr) in trials.iter().enumerate() {
        let moved = if tr.before != tr.after { "yes" } else { "no (restarted)" };
        let idle = if tr.idle_change { " (leader had changed while idle)" } else { "" };
        t.row(vec![
            (i + 1).to_string(),
            tr.timings.clone(),
            tr.mode.name().into(),
            format!("{} → {}{idle}", tr.before, tr.after),
            moved.into(),
            dur(tr.gap.as_secs_f64()),
            tr.failed.to_string(),
            tr.acked.to_string(),
            tr.lost.to_string(),
            dur(tr.heal.as_secs_f64()),
            opt(tr.key_gone),
            opt(tr.new_key),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&[
        "ttl/loop/retry",
        "mode",
        "trials",
        "gap p50",
        "gap p90",
        "gap max",
        "leader moved",
        "whole again p50",
        "acked writes lost",
        "key gone p50",
        "new key p50",
        "new key → write p50",
        "FACTS.md (HAProxy, moved)",
    ]);
    let p50 = |v: Vec<Duration>| Summary::of_durations(&v).map_or("-".into(), |s| dur(s.p50));
    for timing in &args.timings {
        for &mode in &args.modes {
            let of: Vec<&Trial> = trials.iter().filter(|t| &t.timings == timing && t.mode == mode).collect();
            let gaps: Vec<Duration> = of.iter().map(|t| t.gap).collect();
            let Some(s) = Summary::of_durations(&gaps) else { continue };
            let moved = of.iter().filter(|t| t.before != t.after).count();
            let heal = Summary::of_durations(&of.iter().map(|t| t.heal).collect::<Vec<_>>());
            let lost: usize = of.iter().map(|t| t.lost).sum();
            let gone = p50(of.iter().filter_map(|t| t.key_gone).collect());
            let new = p50(of.iter().filter_map(|t| t.new_key).collect());
            let rest = p50(of.iter().filter_map(|t| t.new_key.map(|n| t.gap.saturating_sub(n))).collect());
            t.row(vec![
                timing.clone(),
                mode.name().into(),
                of.len().to_string(),
                dur(s.p50),
                dur(s.p90),
                dur(s.max),
                format!("{moved} of {}", of.len()),
                heal.map_or("-".into(), |h| dur(h.p50)),
                format!("{lost} (goal 0: {})", met(lost == 0)),
                gone,
                new,
                rest,
                match timing.as_str() {
                    "10/2/4" => "9.5–10.6 s".into(),
                    "5/1/2" => "5–6 s".into(),
                    "30/10/10" => "24–26 s".into(),
                    _ => "-".into(),
                },
            ]);
        }
    }
    t.print();
    let idle = trials.iter().filter(|t| t.idle_change).count();
    println!("leader changes while idle between trials (spurious failovers): {idle}");
    if !idles.is_empty() {
        println!();
        let mut t = Table::new(&[
            "ttl/loop/retry",
            "watched with no fault",
            "CPU burners",
            "leader changes",
            "writes acked",
            "writes failed",
        ]);
        for i in &idles {
            t.row(vec![
                i.timings.clone(),
                format!("{} s", i.secs),
                i.burn.to_string(),
                format!("{} (goal 0: {})", i.changes, met(i.changes == 0)),
                i.acked.to_string(),
                i.failed.to_string(),
            ]);
        }
        t.print();
    }
    println!(
        "note: shorter timings fail over sooner but also demote a healthy leader sooner: with ttl 4 and \
         retry_timeout 1.5 a leader that cannot renew its key for ~1.5–3 s (etcd slow or unreachable, an fsync or \
         CPU stall on a busy host, a long GC or swap pause in Patroni) loses it and its writes are cut; \
         with ttl 10 / retry_timeout 4 it takes a hiccup more than twice as long (failsafe mode keeps a leader whose \
         etcd is gone while every member still answers it)."
    );
    footer();
    Ok(())
}

type Timings = (f64, f64, f64);

/// `ttl/loop_wait/retry_timeout`; ttl and loop_wait whole seconds (etcd leases and Patroni's
/// loop are), retry_timeout may be a fraction (`4/1/1.5`).
fn parse(timing: &str) -> Result<Timings> {
    let v: Vec<f64> = timing.split('/').map(str::parse).collect::<Result<_, _>>().context("ttl/loop_wait/retry")?;
    match v[..] {
        [ttl, lw, rt] if ttl >= lw + 2.0 * rt && ttl.fract() == 0.0 && lw.fract() == 0.0 => Ok((ttl, lw, rt)),
        _ => bail!(
            "timings {timing:?}: want ttl/loop_wait/retry_timeout, ttl and loop_wait whole seconds, with ttl ≥ \
             loop_wait + 2 × retry_timeout"
        ),
    }
}

/// A number for Patroni's configuration: whole values as integers (etcd takes a lease's TTL
/// only as one).
fn number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 {
        serde_json::json!(v as i64)
    } else {
        serde_json::json!(v)
    }
}

fn same(a: Option<Timings>, b: Timings) -> bool {
    a.is_some_and(|a| (a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9 && (a.2 - b.2).abs() < 1e-9)
}

async fn measure(args: &Args, p: &Platform) -> Result<(Vec<Trial>, Vec<Idle>)> {
    let timings: Vec<(String, Timings)> =
        args.timings.iter().map(|t| Ok((t.clone(), parse(t)?))).collect::<Result<_>>()?;
    let (db, url, created) = ha::database(p, "ha", &args.plan, true).await?;
    println!("  {} created in {created:.2} s; synchronous replication on", args.plan);
    p.wait_healthy(&db, 2, true, Duration::from_secs(120)).await?;
    let mut next_id = 1;
    let mut trials = Vec::new();
    let mut last_leader: Option<String> = None;
    let mut idles = Vec::new();
    for (name, (ttl, lw, rt)) in timings {
        set_timings(p, &db, ttl, lw, rt).await?;
        if args.idle > 0 {
            let idle = watch_idle(p, &db, &url, &name, args.idle, args.burn, &mut next_id).await?;
            println!(
                "  {name}, no fault for {} s ({} CPU burners): {} leader change(s), {} writes acked, {} failed",
                idle.secs, idle.burn, idle.changes, idle.acked, idle.failed
            );
            idles.push(idle);
        }
        for (mode, i) in args.modes.iter().flat_map(|&m| (0..args.trials).map(move |i| (m, i))) {
            let tr = trial(p, &db, &url, &name, mode, &mut next_id, &mut last_leader).await?;
            let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
            println!(
                "  {name}, {}, trial {}: {} → {}, gap {:.2} s (key gone {}, new key {}), lost {}, whole again {:.1} s",
                mode.name(),
                i + 1,
                tr.before,
                tr.after,
                tr.gap.as_secs_f64(),
                secs(tr.key_gone),
                secs(tr.new_key),
                tr.lost,
                tr.heal.as_secs_f64()
            );
            for e in &tr.errors {
                println!("    error seen: {e}");
            }
            trials.push(tr);
        }
    }
    Ok((trials, idles))
}

/// Watches the database with no fault for `secs` while a writer runs (and `burn` threads spin
/// on the CPU): how many times the leader key changed hands.
async fn watch_idle(
    p: &Platform,
    db: &str,
    url: &str,
    timings: &str,
    secs: u64,
    burn: usize,
    next_id: &mut i64,
) -> Result<Idle> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    p.wait_healthy(db, 2, true, Duration::from_secs(180)).await?;
    let spin = Arc::new(AtomicBool::new(true));
    let burners: Vec<_> = (0..burn)
        .map(|_| {
            let spin = spin.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while spin.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let writer = crate::client::Writer::start(url.to_string(), ha::TABLE, *next_id, Duration::from_millis(25));
    let mut leader = p.dcs.cluster(db).await.leader;
    let mut changes = 0;
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = p.dcs.cluster(db).await.leader;
        if now != leader {
            println!("    leader {leader:?} → {now:?} with no fault");
            changes += usize::from(now.is_some());
            leader = now;
        }
    }
    let attempts = writer.stop().await;
    spin.store(false, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    *next_id = attempts.iter().map(|a| a.id + 1).max().unwrap_or(*next_id);
    let acked = attempts.iter().filter(|a| a.ok).count();
    Ok(Idle { timings: timings.to_string(), secs, burn, changes, acked, failed: attempts.len() - acked })
}

/// PATCH /config on a member's Patroni (authenticated, TLS checked against the database CA),
/// unless the DCS already holds these timings; waits until it does.
async fn set_timings(p: &Platform, db: &str, ttl: f64, lw: f64, rt: f64) -> Result<()> {
    if same(p.dcs.cluster(db).await.timings(), (ttl, lw, rt)) {
        return Ok(());
    }
    let access = p.patroni(db).await?;
    let (_, host, port) = access.members.first().context("no members")?;
    let patch = serde_json::json!({ "ttl": number(ttl), "loop_wait": number(lw), "retry_timeout": number(rt) });
    let api = pgplane_core::agent::PatroniApi {
        host: host.clone(),
        patroni_port: *port,
        ca_pem: access.ca_pem.clone(),
        restapi_password: access.password.clone(),
    };
    pgplane_agent::control::patch_config(&api, &patch).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !same(p.dcs.cluster(db).await.timings(), (ttl, lw, rt)) {
        if Instant::now() > deadline {
            bail!("Patroni's /config did not take ttl {ttl}, loop_wait {lw}, retry_timeout {rt}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every member applies it at its next loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

async fn trial(
    p: &Platform,
    db: &str,
    url: &str,
    timings: &str,
    mode: Mode,
    next_id: &mut i64,
    last_leader: &mut Option<String>,
) -> Result<Trial> {
    p.wait_healthy(db, 2, true, Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = p.dcs.cluster(db).await.leader.context("no leader")?;
    let idle_change = last_leader.as_ref().is_some_and(|l| l != &before);
    let dir = p.member_dir(db, &before).context("the leader's folder")?;
    let config = dir.join("patroni.yml").display().to_string();
    let killed_patroni = procs::pids_mentioning(&config);
    let killed_pm = procs::postmaster(&dir.join("data")).context("the leader's postmaster")?;
    if killed_patroni.is_empty() {
        bail!("no Patroni runs {config}");
    }
    let agent = p.agent_of(&dir).context("the leader's agent")?;
    let paused = (mode == Mode::Paused).then(|| Paused::new(agent));
    let kill = async {
        if let Some(p) = &paused {
            p.stop();
        }
        let t = Instant::now();
        let mut victims = killed_patroni.clone();
        victims.push(killed_pm);
        kill9(&victims);
        Ok((t, t))
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let window = async {
        let r = ha::around(url, next_id, Duration::from_secs(1), Duration::from_secs(120), kill).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    };
    let (windowed, (gone_at, new_at)) = tokio::join!(window, watch_key(p, db, &before, &done));
    drop(paused);
    let (window, killed_at) = windowed?;
    let since_kill = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(killed_at));
    let after = p.dcs.cluster(db).await.leader.unwrap_or_else(|| "none".into());
    // Whole again: the killed member runs a new Patroni and postmaster, and the keys say two
    // running members with a leader and a synchronous standby.
    let deadline = Instant::now() + Duration::from_secs(180);
    let heal = loop {
        let pm = procs::postmaster(&dir.join("data"));
        let patroni = procs::pids_mentioning(&config);
        let restarted = pm.is_some_and(|pm| pm != killed_pm)
            && !patroni.is_empty()
            && patroni.iter().all(|pid| !killed_patroni.contains(pid));
        if restarted && p.dcs.cluster(db).await.healthy(2, true) {
            break killed_at.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the cluster was not whole again within 180 s: {:?}\n{}", p.dcs.cluster(db).await, p.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    *last_leader = p.dcs.cluster(db).await.leader;
    Ok(Trial {
        timings: timings.to_string(),
        mode,
        before,
        after,
        gap: window.gap.gap,
        failed: window.gap.failed,
        acked: window.gap.acked,
        lost: window.lost,
        heal,
        idle_change,
        key_gone: since_kill(gone_at),
        new_key: since_kill(new_at),
        errors: window.gap.errors,
    })
}

/// Polls the leader key every 20 ms until another member holds it or `done`: when `before`'s
/// key was first seen gone, and when another member's first appeared.
async fn watch_key(
    p: &Platform,
    db: &str,
    before: &str,
    done: &std::sync::atomic::AtomicBool,
) -> (Option<Instant>, Option<Instant>) {
    let mut gone = None;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let leader = p.dcs.cluster(db).await.leader;
        let now = Instant::now();
        if leader.as_deref() != Some(before) {
            gone.get_or_insert(now);
            if leader.is_some() {
                return (gone, Some(now));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (gone, None)
}

/// An agent process held with SIGSTOP; SIGCONT when dropped.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Self {
        Paused(pid)
    }

    fn stop(&self) {
        procs::signal(self.0, "STOP");
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        procs::signal(self.0, "CONT");
    }
}
