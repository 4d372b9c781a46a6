//! The side-by-side table and the goals.

use crate::api::ms;
use crate::loadgen::Figures;

pub struct Goals {
    /// pgplane's p99 at the fixed rate, in seconds, at most.
    pub p99_at_rate: f64,
    /// pgplane's saturated throughput as a share of the minimal's, at least.
    pub throughput_share: f64,
}

/// `results`: (endpoint, saturated, fixed-rate), pgplane first, minimal second.
pub fn print(rate: u32, results: &[(&str, Figures, Figures)], goals: &Goals) {
    println!();
    let head = [
        "endpoint".to_string(),
        "rps saturated".into(),
        "p50 sat.".into(),
        "p99 sat.".into(),
        format!("p50 @{rate}/s"),
        format!("p99 @{rate}/s"),
        format!("p99.9 @{rate}/s"),
        "achieved rate".into(),
    ];
    let rows: Vec<[String; 8]> = results
        .iter()
        .map(|(name, sat, fix)| {
            [
                name.to_string(),
                format!("{:.0}", sat.requests_per_sec),
                ms(sat.p50),
                ms(sat.p99),
                ms(fix.p50),
                ms(fix.p99),
                fix.p999.map_or("-".into(), ms),
                format!("{:.0}/s", fix.requests_per_sec),
            ]
        })
        .collect();
    let widths: Vec<usize> =
        (0..head.len()).map(|i| rows.iter().map(|r| r[i].len()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    line(&head);
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for r in &rows {
        line(r);
    }
    let (Some(pgplane), Some(minimal)) = (results.first(), results.get(1)) else { return };
    let share = pgplane.1.requests_per_sec / minimal.1.requests_per_sec;
    println!();
    println!("throughput ratio pgplane/minimal: {share:.2} ({:.0}%)", share * 100.0);
    println!("goals for pgplane:");
    let met = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "  p99 ≤ {} at {rate} requests/s: {} → {}",
        ms(goals.p99_at_rate),
        ms(pgplane.2.p99),
        met(pgplane.2.p99 <= goals.p99_at_rate)
    );
    println!(
        "  saturated throughput ≥ {:.0}% of the minimal's: {:.0}% → {}",
        goals.throughput_share * 100.0,
        share * 100.0,
        met(share >= goals.throughput_share)
    );
}
