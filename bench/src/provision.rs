//! `provision`: POST /v1/apps/{id}/databases → the first successful query over
//! `sslmode=verify-ca` through the gateway, for a Starter plan (one agent's worth) and a
//! Business plan (two agents), deleting between trials; where the time goes, from the job
//! tables; and the resident memory of the api, scheduler and agent processes.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::client::psql;
use crate::figures::{dur, footer, header, met, Summary, Table};
use crate::platform::Platform;
use crate::procs::{self, mb};

#[derive(clap::Args)]
pub struct Args {
    /// Starter trials.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long, default_value = "starter-1")]
    plan: String,
    /// Business trials (two members on two agents, two gateways).
    #[arg(long, default_value_t = 3)]
    business_trials: usize,
    #[arg(long, default_value = "business-1")]
    business_plan: String,
}

/// One provisioning, in seconds from the POST.
struct Trial {
    done: f64,
    first_query: f64,
    delete: f64,
    /// (phase, waited in the queue, ran, finished at — seconds from the operation's creation).
    phases: Vec<(String, f64, f64, f64)>,
    /// Failed attempts: (job, error).
    retries: Vec<(String, String)>,
    /// When the POST was sent, and the first member's Patroni log.
    posted: chrono::DateTime<chrono::Utc>,
    patroni_log: String,
}

pub async fn run(args: Args) -> Result<()> {
    header("provision: POST → first query through the gateway over verify-ca");
    let p = Platform::start(2).await?;
    let result = measure(&args, &p).await;
    let memory = p.memory();
    p.stop().await?;
    let (starter, business, data_plane) = result?;
    println!();
    println!(
        "platform: control-plane PostgreSQL (fsync on), etcd, and `pgplane api`, `pgplane scheduler`, 2 × `pgplane \
         agent` as separate processes on 127.0.0.1; polling the operation every 25 ms, then psql every 20 ms"
    );
    let mut t = Table::new(&["figure", "n", "p50", "p90", "max", "goal"]);
    for (plan, trials) in [(&args.plan, &starter), (&args.business_plan, &business)] {
        let figures: [(&str, Vec<f64>); 3] = [
            ("POST → operation done", trials.iter().map(|t| t.done).collect()),
            ("POST → first query (verify-ca, gateway)", trials.iter().map(|t| t.first_query).collect()),
            ("DELETE → operation done", trials.iter().map(|t| t.delete).collect()),
        ];
        for (what, values) in figures {
            let Some(s) = Summary::of(&values) else { continue };
            let goal = if what.starts_with("POST → first") && plan == &args.plan {
                format!("p50 ≤ 3 s: {}", met(s.p50 <= 3.0))
            } else {
                "-".into()
            };
            t.row(vec![format!("{plan}: {what}"), s.n.to_string(), dur(s.p50), dur(s.p90), dur(s.max), goal]);
        }
    }
    t.print();
    for (plan, trials) in [(&args.plan, &starter), (&args.business_plan, &business)] {
        print_phases(plan, trials);
    }
    println!();
    println!("resident memory of the control-plane processes at the end (after all trials):");
    let mut t = Table::new(&["process", "pid", "VmRSS", "VmHWM (peak)"]);
    for (name, pid, rss, hwm) in memory {
        t.row(vec![format!("pgplane {name}"), pid.to_string(), mb(rss), mb(hwm)]);
    }
    t.print();
    if !data_plane.is_empty() {
        println!();
        println!("for scale, the data plane of the last {} database (not part of the goal):", args.business_plan);
        let mut t = Table::new(&["process", "count", "VmRSS each"]);
        for (kind, rss) in data_plane {
            t.row(vec![kind, rss.len().to_string(), rss.iter().map(|k| mb(*k)).collect::<Vec<_>>().join(", ")]);
        }
        t.print();
    }
    footer();
    Ok(())
}

type DataPlane = BTreeMap<String, Vec<u64>>;

async fn measure(args: &Args, p: &Platform) -> Result<(Vec<Trial>, Vec<Trial>, DataPlane)> {
    let mut starter = Vec::new();
    for i in 0..args.trials {
        let t = trial(p, &format!("s{i}"), &args.plan, None).await?;
        if i == 0 {
            print_patroni_log(&t);
        }
        println!("  {} trial {}: done {:.2} s, first query {:.2} s", args.plan, i + 1, t.done, t.first_query);
        starter.push(t);
    }
    let mut business = Vec::new();
    let mut data_plane = DataPlane::new();
    for i in 0..args.business_trials {
        let last = i + 1 == args.business_trials;
        let t = trial(p, &format!("b{i}"), &args.business_plan, last.then_some(&mut data_plane)).await?;
        println!("  {} trial {}: done {:.2} s, first query {:.2} s", args.business_plan, i + 1, t.done, t.first_query);
        business.push(t);
    }
    Ok((starter, business, data_plane))
}

async fn trial(p: &Platform, name: &str, plan: &str, data_plane: Option<&mut DataPlane>) -> Result<Trial> {
    let t = Instant::now();
    let posted = chrono::Utc::now();
    let (db, op) = p.create_database(name, plan).await?;
    p.wait_operation(&op, Duration::from_secs(300)).await?;
    let done = t.elapsed().as_secs_f64();
    let url = p.url(&db).await?;
    loop {
        if psql(&url, "SELECT 1").await.as_deref() == Ok("1") {
            break;
        }
        if t.elapsed() > Duration::from_secs(done as u64 + 60) {
            bail!("{name}: no successful query within 60 s of its operation: {:?}", psql(&url, "SELECT 1").await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_query = t.elapsed().as_secs_f64();
    let (phases, retries) = phases(p, op["id"].as_str().unwrap_or_default()).await?;
    if let Some(dp) = data_plane {
        for root in &p.roots {
            for pid in pgplane_agent::process::processes_under(&root.join(&db)) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let kind = match comm.trim() {
                    "postgres" => "postmaster",
                    "haproxy" => "haproxy (gateway)",
                    _ => "patroni (python)",
                };
                if let Some((rss, _)) = procs::memory_kb(pid) {
                    dp.entry(kind.to_string()).or_default().push(rss);
                }
            }
        }
    }
    let patroni_log =
        p.member_dir(&db, "m0").and_then(|d| std::fs::read_to_string(d.join("patroni.log")).ok()).unwrap_or_default();
    let delete = p.delete_database(&db).await?.as_secs_f64();
    Ok(Trial { done, first_query, delete, phases, retries, posted, patroni_log })
}

/// The operation's jobs in order: scheduler steps and agent tasks, with their last attempt's
/// queue wait (job created → claimed; after a failed attempt this includes its backoff) and
/// run time, from `jobs` and `job_attempts` (the control plane's clock); and failed attempts.
/// Times are PostgreSQL's `now()`, the start of each transaction: a scheduler step's own work
/// shows in the queue wait of the jobs it enqueues.
/// queue, kind, step, waited, ran, finished at, failed attempts.
type PhaseRow = (String, String, String, f64, f64, f64, Option<String>);

pub async fn phases(p: &Platform, op: &str) -> Result<(Vec<(String, f64, f64, f64)>, Vec<(String, String)>)> {
    let id: uuid::Uuid = op.parse()?;
    let rows: Vec<PhaseRow> = sqlx::query_as(
        "SELECT j.queue, j.kind, COALESCE(j.payload->>'step', 'start'), \
            EXTRACT(EPOCH FROM a.started_at - j.created_at)::float8, \
            EXTRACT(EPOCH FROM a.finished_at - a.started_at)::float8, \
            EXTRACT(EPOCH FROM a.finished_at - o.created_at)::float8, \
            (SELECT string_agg(f.attempt || ': ' || COALESCE(f.error, f.outcome, '?'), '; ' ORDER BY f.attempt) \
             FROM job_attempts f WHERE f.job_id = j.id AND f.attempt < j.attempts) \
         FROM jobs j JOIN operations o ON o.id = j.operation_id \
         JOIN job_attempts a ON a.job_id = j.id AND a.attempt = j.attempts \
         WHERE j.operation_id = $1 AND a.finished_at IS NOT NULL ORDER BY a.finished_at",
    )
    .bind(id)
    .fetch_all(p.store.pool())
    .await?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut retries = Vec::new();
    let phases = rows
        .into_iter()
        .map(|(queue, kind, step, waited, ran, at, failed)| {
            let base =
                if queue.starts_with("agent:") { format!("agent {kind}") } else { format!("scheduler step {step}") };
            let n = seen.entry(base.clone()).or_default();
            *n += 1;
            let label = if *n > 1 { format!("{base} #{n}") } else { base };
            if let Some(f) = failed {
                retries.push((label.clone(), f));
            }
            (label, waited, ran, at)
        })
        .collect();
    Ok((phases, retries))
}

/// Medians per phase over the trials, in the order of the first trial.
fn print_phases(plan: &str, trials: &[Trial]) {
    let Some(first) = trials.first() else { return };
    println!();
    println!("where the time goes, {plan} (medians over {} trials; job queue wait = created → claimed):", trials.len());
    let mut t = Table::new(&["job", "queue wait", "ran", "finished at (from operation created)"]);
    for (label, ..) in &first.phases {
        let pick = |f: fn(&(String, f64, f64, f64)) -> f64| {
            let v: Vec<f64> = trials.iter().filter_map(|t| t.phases.iter().find(|p| &p.0 == label).map(f)).collect();
            Summary::of(&v).map_or("-".into(), |s| dur(s.p50))
        };
        t.row(vec![label.clone(), pick(|p| p.1), pick(|p| p.2), pick(|p| p.3)]);
    }
    let mut retried: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (job, error) in trials.iter().flat_map(|t| &t.retries) {
        let e = retried.entry(job.as_str()).or_insert((0, error.as_str()));
        e.0 += 1;
    }
    let tail: Vec<f64> = trials.iter().map(|t| t.first_query - t.done).collect();
    if let Some(s) = Summary::of(&tail) {
        t.row(vec!["operation seen done → first successful psql".into(), "-".into(), dur(s.p50), "-".into()]);
    }
    t.print();
    for (job, (n, error)) in retried {
        println!("  {job} failed an attempt and was retried in {n} of {} trials; e.g. {error}", trials.len());
    }
}

/// Patroni's log of the first trial's member, its timed lines only, timed from the POST
/// (Patroni writes local time, UTC here, with milliseconds; initdb's output has no time).
fn print_patroni_log(t: &Trial) {
    println!("  Patroni's log of that first member (s after the POST; operation done at {:.2} s):", t.done);
    let timed = t.patroni_log.lines().filter_map(|line| {
        let stamp = line.get(..23)?.replace('.', ",");
        let at = chrono::NaiveDateTime::parse_from_str(&stamp, "%Y-%m-%d %H:%M:%S,%3f").ok()?;
        Some(((at.and_utc() - t.posted).num_milliseconds() as f64 / 1000.0, line[23..].trim()))
    });
    for (offset, text) in timed.take(30) {
        println!("    {offset:>6.2} s {text}");
    }
}
