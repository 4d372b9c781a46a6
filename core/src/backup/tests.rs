//! Quotas and retention at their edges: UTC day boundaries, exactly at the caps, failed
//! backups, and the tiers of retention over a year of daily backups.

use super::*;
use chrono::TimeZone;

fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
}

fn backup(method: BackupMethod, status: BackupStatus, started_at: DateTime<Utc>) -> BackupFacts {
    BackupFacts { id: BackupId::new(), method, status, started_at }
}

fn manual(started_at: DateTime<Utc>) -> BackupFacts {
    backup(BackupMethod::Manual, BackupStatus::Done, started_at)
}

fn scheduled(started_at: DateTime<Utc>) -> BackupFacts {
    backup(BackupMethod::Scheduled, BackupStatus::Done, started_at)
}

const LIMITS: BackupLimits =
    BackupLimits { manual_total: 3, manual_per_day: 2, daily_days: 7, weekly_weeks: 4, monthly_months: 3 };

#[test]
fn an_empty_database_may_back_up_now() {
    let now = at(2026, 11, 29, 10, 0, 0);
    let q = quota(&LIMITS, &[], now);
    assert_eq!((q.used, q.remaining_today, q.next_allowed_at, q.next_evicts), (0, 2, Some(now), None));
    assert_eq!(admit_manual(&LIMITS, &[], now), Ok(None));
}

#[test]
fn exactly_at_the_daily_cap_the_next_is_allowed_at_utc_midnight() {
    let now = at(2026, 11, 29, 23, 59, 59);
    let backups = [manual(at(2026, 11, 29, 0, 0, 0)), manual(at(2026, 11, 29, 12, 0, 0))];
    let q = quota(&LIMITS, &backups, now);
    assert_eq!(q.remaining_today, 0);
    assert_eq!(q.next_allowed_at, Some(at(2026, 11, 30, 0, 0, 0)));
    assert_eq!(
        admit_manual(&LIMITS, &backups, now),
        Err(Refusal::DailyCap { next_allowed_at: at(2026, 11, 30, 0, 0, 0) })
    );
    // One second later it is another UTC day.
    let q = quota(&LIMITS, &backups, at(2026, 11, 30, 0, 0, 0));
    assert_eq!(q.remaining_today, 2);
}

#[test]
fn yesterdays_last_second_does_not_count_today() {
    let backups = [manual(at(2026, 11, 28, 23, 59, 59)), manual(at(2026, 11, 28, 23, 59, 59))];
    let q = quota(&LIMITS, &backups, at(2026, 11, 29, 0, 0, 0));
    assert_eq!((q.used, q.remaining_today), (2, 2));
}

#[test]
fn at_the_total_the_next_evicts_the_oldest_done_manual_backup() {
    let oldest = manual(at(2026, 11, 20, 8, 0, 0));
    let backups = [
        manual(at(2026, 11, 25, 8, 0, 0)),
        oldest,
        backup(BackupMethod::Scheduled, BackupStatus::Done, at(2026, 11, 1, 2, 0, 0)),
        manual(at(2026, 11, 27, 8, 0, 0)),
    ];
    let now = at(2026, 11, 29, 9, 0, 0);
    let q = quota(&LIMITS, &backups, now);
    assert_eq!(q.used, 3, "scheduled backups are not counted");
    assert_eq!(q.next_evicts, Some(oldest.id));
    assert_eq!(admit_manual(&LIMITS, &backups, now), Ok(Some(oldest.id)));
    // One below the total evicts nothing.
    let q = quota(&LIMITS, &backups[..2], now);
    assert_eq!(q.next_evicts, None);
}

#[test]
fn failed_backups_count_against_nothing_and_running_ones_are_not_evicted() {
    let now = at(2026, 11, 29, 9, 0, 0);
    let running = backup(BackupMethod::Manual, BackupStatus::Running, at(2026, 11, 1, 0, 0, 0));
    let backups = [
        backup(BackupMethod::Manual, BackupStatus::Error, at(2026, 11, 29, 1, 0, 0)),
        backup(BackupMethod::Manual, BackupStatus::Error, at(2026, 11, 29, 2, 0, 0)),
        running,
        manual(at(2026, 11, 10, 0, 0, 0)),
        manual(at(2026, 11, 11, 0, 0, 0)),
    ];
    let q = quota(&LIMITS, &backups, now);
    assert_eq!((q.used, q.remaining_today), (3, 2));
    assert_ne!(q.next_evicts, Some(running.id));
    assert_eq!(q.next_evicts, Some(backups[3].id));
}

#[test]
fn a_plan_without_manual_backups_refuses_them() {
    let none = BackupLimits { manual_total: 0, manual_per_day: 0, ..LIMITS };
    let q = quota(&none, &[], at(2026, 11, 29, 9, 0, 0));
    assert_eq!((q.remaining_today, q.next_allowed_at), (0, None));
    assert_eq!(admit_manual(&none, &[], at(2026, 11, 29, 9, 0, 0)), Err(Refusal::NotInPlan));
}

#[test]
fn retention_keeps_the_newest_of_each_day_within_the_window() {
    let now = at(2026, 11, 29, 3, 0, 0);
    let daily_only = BackupLimits { weekly_weeks: 0, monthly_months: 0, ..LIMITS };
    // Two backups on the 29th (a retry), one per day before.
    let mut backups: Vec<BackupFacts> = (0..10).map(|d| scheduled(at(2026, 11, 29 - d, 2, 0, 0))).collect();
    let retry = scheduled(at(2026, 11, 29, 2, 30, 0));
    backups.push(retry);
    let deletes = retention_deletes(&daily_only, &backups, now);
    // Kept: the 29th's newest (the retry), 28th … 23rd (7 days); deleted: the 29th's first run
    // and the 22nd, 21st, 20th.
    let expected: Vec<BackupId> = vec![backups[9].id, backups[8].id, backups[7].id, backups[0].id];
    assert_eq!(deletes, expected);
    assert!(!deletes.contains(&retry.id));
}

#[test]
fn retention_tiers_over_a_year_of_daily_backups() {
    let now = at(2026, 11, 29, 3, 0, 0); // a Sunday
    let backups: Vec<BackupFacts> =
        (0..365).map(|d| scheduled(at(2026, 11, 29, 2, 0, 0) - Duration::days(d))).collect();
    let deletes = retention_deletes(&LIMITS, &backups, now);
    let kept: Vec<NaiveDate> =
        backups.iter().filter(|b| !deletes.contains(&b.id)).map(|b| b.started_at.date_naive()).collect();
    let d = |m: u32, day: u32| NaiveDate::from_ymd_opt(2026, m, day).unwrap();
    // 7 days (23rd–29th), the Sundays ending this and the three weeks before (29th, 22nd,
    // 15th, 8th), the last day of November (29th), October and September.
    let mut expected = vec![d(9, 30), d(10, 31), d(11, 8), d(11, 15)];
    expected.extend((22..=29).map(|day| d(11, day)));
    assert_eq!(kept, expected.into_iter().rev().collect::<Vec<_>>());
    assert_eq!(deletes.len(), 365 - 12);
}

#[test]
fn retention_never_deletes_the_last_good_backup() {
    let nothing = BackupLimits { daily_days: 0, weekly_weeks: 0, monthly_months: 0, ..LIMITS };
    let old = scheduled(at(2025, 1, 1, 2, 0, 0));
    let older = scheduled(at(2024, 1, 1, 2, 0, 0));
    let failed = backup(BackupMethod::Scheduled, BackupStatus::Error, at(2026, 11, 29, 2, 0, 0));
    let deletes = retention_deletes(&nothing, &[failed, old, older], at(2026, 11, 29, 3, 0, 0));
    assert_eq!(deletes, vec![older.id]);
}

#[test]
fn retention_ignores_manual_backups() {
    let m = manual(at(2020, 1, 1, 0, 0, 0));
    assert!(
        retention_deletes(&LIMITS, &[m, scheduled(at(2026, 11, 29, 2, 0, 0))], at(2026, 11, 29, 3, 0, 0)).is_empty()
    );
}

#[test]
fn once_the_new_one_succeeded_the_oldest_done_manual_beyond_the_total_goes() {
    let l = BackupLimits { manual_per_day: 10, ..LIMITS };
    let old = manual(at(2026, 11, 1, 8, 0, 0));
    let mid = manual(at(2026, 11, 2, 8, 0, 0));
    let young = manual(at(2026, 11, 3, 8, 0, 0));
    let new = manual(at(2026, 11, 4, 8, 0, 0));
    let daily = scheduled(at(2026, 10, 1, 8, 0, 0));
    let all = [daily, young, old, mid, new];
    assert_eq!(evictions(&l, &all, new.id), vec![old.id]);
    // Under the total nothing goes; the new one is never evicted.
    assert!(evictions(&l, &all[..4], new.id).is_empty());
    assert!(evictions(&BackupLimits { manual_total: 1, ..LIMITS }, &[new], new.id).is_empty());
}
