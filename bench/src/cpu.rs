//! How much CPU the rest of the machine took during a run: total busy time from /proc/stat
//! minus this process (its threads and its reaped children, the load generator) and the
//! private PostgreSQL's processes. A compiler running meanwhile shows up here, and then the
//! figures of that run are disturbed.

use std::fs;

#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Jiffies of all CPUs, busy and idle.
    total: u64,
    /// Busy jiffies of all CPUs.
    busy: u64,
    /// Jiffies of this process, its waited-for children and the private PostgreSQL.
    ours: u64,
}

/// CPU time of processes other than ours, as a share of the machine's capacity.
pub fn other_share(before: &Snapshot, after: &Snapshot) -> f64 {
    let total = after.total.saturating_sub(before.total);
    let busy = after.busy.saturating_sub(before.busy);
    let ours = after.ours.saturating_sub(before.ours);
    if total == 0 {
        return 0.0;
    }
    busy.saturating_sub(ours) as f64 / total as f64
}

/// `postgres`: the postmaster's PID when we started PostgreSQL ourselves (its backends are
/// its children); an external server counts as "other".
pub fn snapshot(postgres: Option<u32>) -> Snapshot {
    let (total, busy) = machine().unwrap_or_default();
    let mut ours = process_times("self", true).unwrap_or(0);
    if let Some(pm) = postgres {
        ours += process_times(&pm.to_string(), true).unwrap_or(0);
        for pid in children_of(pm) {
            ours += process_times(&pid.to_string(), false).unwrap_or(0);
        }
    }
    Snapshot { total, busy, ours }
}

/// (all, busy) jiffies from the first line of /proc/stat.
fn machine() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total, total - idle))
}

/// utime + stime (+ cutime + cstime) of a process, in jiffies.
fn process_times(pid: &str, with_children: bool) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let own = f.get(11)? + f.get(12)?;
    Some(if with_children { own + f.get(13)? + f.get(14)? } else { own })
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s[s.rfind(')')? + 2..].split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let a = snapshot(None);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = snapshot(None);
        assert!(b.total > a.total && b.busy >= a.busy && b.ours >= a.ours);
        let share = other_share(&a, &b);
        assert!((0.0..=1.0).contains(&share));
    }
}
