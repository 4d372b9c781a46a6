//! Backup quotas and retention as pure functions of a plan's limits, the database's backups and
//! the time (UTC): how many manual backups are used and remain today, when the next one is
//! allowed, which one the next evicts (the oldest finished manual one, deleted only after the new
//! one succeeded), and which scheduled backups the daily/weekly/monthly retention deletes.
//! Failed backups hold no object and count against nothing. Also the backup as a tenant sees
//! it (`Backup`) and how a restore is asked for (`RestoreRequest`).

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{AppId, BackupId, DatabaseId, OperationId};
use crate::model::Plan;
use crate::page_of;

/// How a backup was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupMethod {
    /// Asked for by the tenant; counted in the manual quota.
    Manual,
    /// Taken by the daily timer; kept by retention, not counted in the quota.
    Scheduled,
}

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    Pending,
    Running,
    Done,
    Error,
}

/// The text form of a few-valued enum (stored as `text`, sent as snake_case JSON).
macro_rules! text_form {
    ($name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$variant),)+ other => Err(format!("unknown {} {other:?}", stringify!($name))) }
            }
        }
    };
}

text_form!(BackupMethod { Manual = "manual", Scheduled = "scheduled" });
text_form!(BackupStatus { Pending = "pending", Running = "running", Done = "done", Error = "error" });

/// How the last verified restore of a backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupVerification {
    /// Restored into a scratch server: every table read back, every row count as at dump time.
    Passed,
    /// The restore failed or a count differed; `verification_detail` says what.
    Failed,
}
text_form!(BackupVerification { Passed = "passed", Failed = "failed" });

/// A logical backup (`pg_dump -Fc`) of a database, as its tenant sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    pub id: BackupId,
    pub database_id: DatabaseId,
    pub method: BackupMethod,
    pub status: BackupStatus,
    /// Why it failed, when `status` is `error`.
    pub error: Option<String>,
    /// The operation (kind `backup`) that takes it.
    pub operation_id: Option<OperationId>,
    /// The member it was taken on (a Business database's follower when it streams).
    pub member: Option<String>,
    /// The PostgreSQL version of the server dumped, e.g. `15.14`.
    pub postgres_version: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Size of the dump in bytes, once done.
    pub size_bytes: Option<i64>,
    /// SHA-256 of the dump (lowercase hex), once done.
    pub sha256: Option<String>,
    /// When a restore of it into a scratch server was last checked.
    pub verified_at: Option<DateTime<Utc>>,
    pub verification: Option<BackupVerification>,
    /// What differed, when the verification failed.
    pub verification_detail: Option<String>,
}
page_of!(BackupPage, Backup);

/// Where a backup is restored to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "target", rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreRequest {
    /// Replace the content of the database the backup was taken of, or of `database_id` (another
    /// database of the same tenant). The connection URL is unchanged; followers catch up through
    /// replication.
    InPlace {
        #[serde(default)]
        database_id: Option<DatabaseId>,
    },
    /// Order a new database on `plan` (in `app_id`, by default the backup's database's app) and
    /// restore the backup into it. Its version is the backup's database's.
    NewDatabase {
        name: String,
        plan: String,
        #[serde(default)]
        app_id: Option<AppId>,
    },
}

/// What quotas and retention need to know of one existing backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: BackupId,
    pub method: BackupMethod,
    pub status: BackupStatus,
    pub started_at: DateTime<Utc>,
}

/// A plan's backup limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupLimits {
    /// Manual backups kept at once; the next one beyond evicts the oldest.
    pub manual_total: u32,
    /// Manual backups that may be started per UTC day.
    pub manual_per_day: u32,
    /// Days whose newest scheduled backup is kept (0: no daily backups).
    pub daily_days: u32,
    /// ISO weeks whose newest scheduled backup is kept.
    pub weekly_weeks: u32,
    /// Months whose newest scheduled backup is kept.
    pub monthly_months: u32,
}

impl BackupLimits {
    /// The limits of a plan.
    pub fn of(plan: &Plan) -> Self {
        let n = |v: i32| v.max(0) as u32;
        BackupLimits {
            manual_total: n(plan.backup_quota_total),
            manual_per_day: n(plan.backup_quota_per_day),
            daily_days: n(plan.daily_backup_retention_days),
            weekly_weeks: n(plan.backup_retention_weeks),
            monthly_months: n(plan.backup_retention_months),
        }
    }
}

/// The manual quota as a tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupQuota {
    pub max_total: u32,
    pub max_per_day: u32,
    /// Manual backups kept now (pending, running and done).
    pub used: u32,
    /// Manual backups that may still be started today (UTC).
    pub remaining_today: u32,
    /// When the next manual backup may start: now when one remains today, else the next UTC
    /// midnight; absent when the plan allows no manual backups.
    pub next_allowed_at: Option<DateTime<Utc>>,
    /// The backup the next manual one deletes once it succeeded (the total is reached).
    pub next_evicts: Option<BackupId>,
}

fn counts(status: BackupStatus) -> bool {
    status != BackupStatus::Error
}

fn midnight_after(day: NaiveDate) -> DateTime<Utc> {
    (day + Duration::days(1)).and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// The manual quota at `now`.
pub fn quota(limits: &BackupLimits, backups: &[BackupFacts], now: DateTime<Utc>) -> BackupQuota {
    let manual: Vec<&BackupFacts> =
        backups.iter().filter(|b| b.method == BackupMethod::Manual && counts(b.status)).collect();
    let today = now.date_naive();
    let today_count = manual.iter().filter(|b| b.started_at.date_naive() == today).count() as u32;
    let remaining_today = if limits.manual_total == 0 { 0 } else { limits.manual_per_day.saturating_sub(today_count) };
    let next_allowed_at = if limits.manual_total == 0 || limits.manual_per_day == 0 {
        None
    } else if remaining_today > 0 {
        Some(now)
    } else {
        Some(midnight_after(today))
    };
    let used = manual.len() as u32;
    let next_evicts = if limits.manual_total > 0 && used >= limits.manual_total {
        manual.iter().filter(|b| b.status == BackupStatus::Done).min_by_key(|b| (b.started_at, b.id.0)).map(|b| b.id)
    } else {
        None
    };
    BackupQuota {
        max_total: limits.manual_total,
        max_per_day: limits.manual_per_day,
        used,
        remaining_today,
        next_allowed_at,
        next_evicts,
    }
}

/// Why a manual backup may not start at `now`, with when it may, or `Ok` with the backup it
/// will evict once it succeeded.
pub fn admit_manual(
    limits: &BackupLimits,
    backups: &[BackupFacts],
    now: DateTime<Utc>,
) -> Result<Option<BackupId>, Refusal> {
    let q = quota(limits, backups, now);
    match q.next_allowed_at {
        None => Err(Refusal::NotInPlan),
        Some(_) if q.remaining_today == 0 => {
            Err(Refusal::DailyCap { next_allowed_at: midnight_after(now.date_naive()) })
        }
        Some(_) => Ok(q.next_evicts),
    }
}

/// The manual backups to delete now that manual backup `new` succeeded: the oldest finished
/// ones beyond the plan's total (never `new` itself), oldest first.
pub fn evictions(limits: &BackupLimits, backups: &[BackupFacts], new: BackupId) -> Vec<BackupId> {
    let mut manual: Vec<&BackupFacts> =
        backups.iter().filter(|b| b.method == BackupMethod::Manual && counts(b.status)).collect();
    let over = manual.len().saturating_sub(limits.manual_total.max(1) as usize);
    manual.sort_by_key(|b| (b.started_at, b.id.0));
    manual.into_iter().filter(|b| b.id != new && b.status == BackupStatus::Done).take(over).map(|b| b.id).collect()
}

/// Why a manual backup is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The plan allows no manual backups.
    NotInPlan,
    /// Today's manual backups are used up.
    DailyCap { next_allowed_at: DateTime<Utc> },
}

/// The finished scheduled backups retention deletes at `now`: kept are the newest of each of
/// the last `daily_days` UTC days, of each of the last `weekly_weeks` ISO weeks and of each of
/// the last `monthly_months` months (today, this week and this month count as the first), and
/// always the newest one (the last good backup is never deleted by retention). Oldest first.
pub fn retention_deletes(limits: &BackupLimits, backups: &[BackupFacts], now: DateTime<Utc>) -> Vec<BackupId> {
    let mut done: Vec<&BackupFacts> = backups
        .iter()
        .filter(|b| b.method == BackupMethod::Scheduled && b.status == BackupStatus::Done && b.started_at <= now)
        .collect();
    // Newest first, so the first seen of a period is the one it keeps.
    done.sort_by_key(|b| std::cmp::Reverse((b.started_at, b.id.0)));
    let today = now.date_naive();
    let day_index = |d: NaiveDate| (today - d).num_days();
    let week_start = |d: NaiveDate| d - Duration::days(d.weekday().num_days_from_monday() as i64);
    let week_index = |d: NaiveDate| (week_start(today) - week_start(d)).num_days() / 7;
    let month_index =
        |d: NaiveDate| (today.year() as i64 * 12 + today.month0() as i64) - (d.year() as i64 * 12 + d.month0() as i64);
    let mut kept_days = std::collections::HashSet::new();
    let mut kept_weeks = std::collections::HashSet::new();
    let mut kept_months = std::collections::HashSet::new();
    let mut deletes = Vec::new();
    for (position, b) in done.iter().enumerate() {
        let d = b.started_at.date_naive();
        let mut keep = position == 0;
        let (day, week, month) = (day_index(d), week_index(d), month_index(d));
        if day < limits.daily_days as i64 && kept_days.insert(day) {
            keep = true;
        }
        if week < limits.weekly_weeks as i64 && kept_weeks.insert(week) {
            keep = true;
        }
        if month < limits.monthly_months as i64 && kept_months.insert(month) {
            keep = true;
        }
        if !keep {
            deletes.push(b.id);
        }
    }
    deletes.reverse();
    deletes
}

#[cfg(test)]
mod tests;
