//! What the platform benchmarks print: percentiles of a sample, durations in readable units,
//! a plain Markdown table, goals marked met / NOT MET, and the load average around a run.

use std::time::Duration;

/// Percentiles of a sample (nearest rank), in the sample's unit.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Summary { n: v.len(), p50: at(0.50), p90: at(0.90), p99: at(0.99), max: v[v.len() - 1] })
    }

    pub fn of_durations(values: &[Duration]) -> Option<Summary> {
        Summary::of(&values.iter().map(Duration::as_secs_f64).collect::<Vec<_>>())
    }
}

/// Seconds as milliseconds with two decimals.
pub fn ms(secs: f64) -> String {
    format!("{:.2} ms", secs * 1e3)
}

/// Seconds with two decimals (or milliseconds under one second).
pub fn dur(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// A Markdown table; cells that start like a number are right-aligned.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table { head: head.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.head.len();
        let width = |i: usize| {
            self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).chain([self.head[i].len()]).max()
        };
        let widths: Vec<usize> = (0..cols).map(|i| width(i).unwrap_or(0)).collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = (0..cols)
                .map(|i| {
                    let c = cells.get(i).map(String::as_str).unwrap_or("");
                    let numeric = c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-' || ch == '≤' || ch == '≥');
                    let pad = widths[i].saturating_sub(c.chars().count());
                    if numeric && i > 0 {
                        format!("{}{c}", " ".repeat(pad))
                    } else {
                        format!("{c}{}", " ".repeat(pad))
                    }
                })
                .collect();
            println!("| {} |", parts.join(" | "));
        };
        line(&self.head);
        println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
        for r in &self.rows {
            line(r);
        }
    }
}

/// Busy and total jiffies of all CPUs, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

pub fn cpu_times() -> CpuTimes {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).unwrap_or(&0) + v.get(4).unwrap_or(&0);
    CpuTimes { busy: total.saturating_sub(idle), total }
}

/// How busy the whole machine was between two readings, 0–100%.
pub fn busy_percent(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    after.busy.saturating_sub(before.busy) as f64 * 100.0 / total as f64
}

/// `uptime`'s line (load averages over 1, 5 and 15 minutes), for the record.
pub fn uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("load average: {}", crate::loadavg()))
}

/// Prints a benchmark's header with the load before it.
pub fn header(title: &str) {
    println!("== {title} ==");
    println!("uptime before: {}", uptime());
}

pub fn footer() {
    println!("uptime after:  {}", uptime());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.n, s.p50, s.p90, s.p99, s.max), (100, 50.0, 90.0, 99.0, 100.0));
        let one = Summary::of(&[3.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (3.0, 3.0, 3.0));
        assert!(Summary::of(&[]).is_none());
    }
}
