//! Durable timers: what a clock starts (daily backups, retention sweeps, metering). A timer's
//! `Schedule` says when it is due; the next due time is always computed from the moment it
//! fires, never from the slot it missed, so a scheduler that was down for three days fires a
//! daily timer once when it comes back, not three times.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{DatabaseId, JobId};
use crate::page_of;

/// When a timer is due. All times are UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Every day at `hour`:00.
    Daily { hour: u8 },
    /// Every week on `weekday` (0 = Monday … 6 = Sunday) at `hour`:00.
    Weekly { weekday: u8, hour: u8 },
    /// Once, at `at`.
    Once { at: DateTime<Utc> },
    /// Every `minutes` minutes after the last firing (the first, that long after the timer
    /// was made).
    Every { minutes: u32 },
}

impl Schedule {
    /// The kind as stored and shown: `daily`, `weekly`, `once`, `every`.
    pub fn kind(&self) -> &'static str {
        match self {
            Schedule::Daily { .. } => "daily",
            Schedule::Weekly { .. } => "weekly",
            Schedule::Once { .. } => "once",
            Schedule::Every { .. } => "every",
        }
    }

    /// Why this schedule is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Schedule::Daily { hour } | Schedule::Weekly { hour, .. } if hour > 23 => {
                Err(format!("hour {hour} is not between 0 and 23"))
            }
            Schedule::Weekly { weekday, .. } if weekday > 6 => {
                Err(format!("weekday {weekday} is not between 0 (Monday) and 6 (Sunday)"))
            }
            Schedule::Every { minutes: 0 } => Err("a period of 0 minutes".into()),
            _ => Ok(()),
        }
    }

    /// The first due time of a new timer created at `now` (a `once` timer in the past is due
    /// at once).
    pub fn first(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match *self {
            Schedule::Once { at } => Some(at),
            _ => self.after(now),
        }
    }

    /// The next due time strictly after `now`; `None` when the timer never fires again (a
    /// `once` timer that fired).
    pub fn after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match *self {
            Schedule::Daily { hour } => {
                let today = at_hour(now, hour);
                Some(if today > now { today } else { today + Duration::days(1) })
            }
            Schedule::Weekly { weekday, hour } => {
                let ahead = (i64::from(weekday) - i64::from(now.weekday().num_days_from_monday())).rem_euclid(7);
                let slot = at_hour(now, hour) + Duration::days(ahead);
                Some(if slot > now { slot } else { slot + Duration::days(7) })
            }
            Schedule::Once { .. } => None,
            Schedule::Every { minutes } => Some(now + Duration::minutes(i64::from(minutes.max(1)))),
        }
    }
}

/// `now`'s day at `hour`:00:00.
fn at_hour(now: DateTime<Utc>, hour: u8) -> DateTime<Utc> {
    let midnight = now
        - Duration::seconds(i64::from(now.num_seconds_from_midnight()))
        - Duration::nanoseconds(i64::from(now.nanosecond()));
    midnight + Duration::hours(i64::from(hour.min(23)))
}

/// A timer as platform operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Timer {
    pub id: uuid::Uuid,
    /// Unique: `retention`, `backup:<database id>`, …
    pub name: String,
    /// `daily`, `weekly`, `once` or `every`.
    pub kind: String,
    pub schedule: Schedule,
    /// The database the timer is for, if any.
    pub database_id: Option<DatabaseId>,
    /// The kind of job each firing enqueues.
    pub job_kind: String,
    /// When it fires next; absent once a `once` timer fired.
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The job its last firing enqueued (absent once the retention sweep removed it).
    pub last_job_id: Option<JobId>,
    pub created_at: DateTime<Utc>,
}
page_of!(TimerPage, Timer);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn daily_is_the_next_hour_slot_strictly_after_now() {
        let s = Schedule::Daily { hour: 3 };
        assert_eq!(s.after(t("2026-11-30T02:59:59Z")), Some(t("2026-11-30T03:00:00Z")));
        assert_eq!(s.after(t("2026-11-30T03:00:00Z")), Some(t("2026-12-01T03:00:00Z")));
        // Three days late: the next slot from now, not the three missed ones.
        assert_eq!(s.after(t("2026-12-03T03:00:00.5Z")), Some(t("2026-12-04T03:00:00Z")));
    }

    #[test]
    fn weekly_every_and_once() {
        // 2026-11-30 is a Monday.
        let w = Schedule::Weekly { weekday: 6, hour: 1 };
        assert_eq!(w.after(t("2026-11-30T12:00:00Z")), Some(t("2026-12-06T01:00:00Z")));
        assert_eq!(w.after(t("2026-12-06T01:00:00Z")), Some(t("2026-12-13T01:00:00Z")));
        let m = Schedule::Weekly { weekday: 0, hour: 13 };
        assert_eq!(m.after(t("2026-11-30T12:00:00Z")), Some(t("2026-11-30T13:00:00Z")));
        let e = Schedule::Every { minutes: 15 };
        assert_eq!(e.first(t("2026-11-30T12:07:00Z")), Some(t("2026-11-30T12:22:00Z")));
        // Late by an hour: the next one a period after this firing, not the four missed.
        assert_eq!(e.after(t("2026-11-30T13:22:30Z")), Some(t("2026-11-30T13:37:30Z")));
        let o = Schedule::Once { at: t("2026-11-30T12:00:00Z") };
        assert_eq!(o.first(t("2026-12-01T00:00:00Z")), Some(t("2026-11-30T12:00:00Z")));
        assert_eq!(o.after(t("2026-12-01T00:00:00Z")), None);
        assert!(Schedule::Daily { hour: 24 }.check().is_err());
        assert!(Schedule::Weekly { weekday: 7, hour: 0 }.check().is_err());
        assert!(Schedule::Every { minutes: 0 }.check().is_err());
    }

    #[test]
    fn schedules_are_tagged_on_the_wire() {
        let s = serde_json::to_value(Schedule::Weekly { weekday: 2, hour: 4 }).unwrap();
        assert_eq!(s, serde_json::json!({ "kind": "weekly", "weekday": 2, "hour": 4 }));
    }
}
