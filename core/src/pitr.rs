//! Point-in-time recovery as pure logic, shared by the agent (which runs pgBackRest) and, later,
//! the API and the workflows: the stanza a database's WAL goes to, how a member spec says "PITR
//! on", restore targets (a time to the second UTC, an LSN, a named restore point), the timeline
//! history that decides which backup can reach a target, and the restorable window with the
//! archive's health as the API will show them.
//!
//! A backup can start a restore onto timeline `N` when it was taken on `N`, or on an ancestor of
//! `N` and ended before `N`'s lineage left that ancestor: after an in-place restore (a new
//! timeline branching in the past), a backup of the old timeline taken after the branch point
//! cannot replay onto the new one, and pgBackRest's own choice (newest backup that ended before
//! the target, whatever its timeline) would pick it.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::DatabaseId;

/// The pgBackRest stanza of a database: one per database, named by its id, so a fork (another
/// id) never writes into its source's stanza nor its repository folder.
pub fn stanza_name(database: DatabaseId) -> String {
    format!("db-{database}")
}

/// How a member spec says "PITR on": present on members of plans with PITR. The agent renders
/// the stanza's pgBackRest configuration (its repository from the agent's own storage
/// configuration, under a folder of this database) and PostgreSQL's archiving parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PitrSpec {
    /// `stanza_name` of the database whose WAL this member archives.
    pub stanza: String,
    /// The plan's `pitr_window_days`: retention keeps full backups covering that many days.
    pub window_days: u32,
}

/// A WAL position (`pg_lsn`), written `X/Y` in hexadecimal as PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "0/3000060")]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an LSN (two hexadecimal numbers such as 0/3000060)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

/// The longest restore point name PostgreSQL keeps (`MAXFNAMELEN` - 1).
pub const RESTORE_POINT_NAME_MAX: usize = 63;

/// Checks a restore point name: 1–63 printable ASCII characters (it travels on pgBackRest's and
/// PostgreSQL's command lines and configuration files).
pub fn restore_point_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > RESTORE_POINT_NAME_MAX {
        return Err(format!("a restore point name has 1 to {RESTORE_POINT_NAME_MAX} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return Err("a restore point name uses letters, digits and - _ . : only".into());
    }
    Ok(())
}

/// Where a restore stops. The state restored includes every transaction committed at or before
/// the target and none after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RestoreTarget {
    /// A time to the second (UTC); a fraction is refused rather than rounded.
    Time { time: DateTime<Utc> },
    /// A WAL position.
    Lsn { lsn: Lsn },
    /// A restore point made with `pg_create_restore_point`, and the LSN it returned (recorded
    /// when it was made: it chooses the backup, which pgBackRest cannot do for a name).
    Name { name: String, lsn: Lsn },
}

impl RestoreTarget {
    /// Refuses a time with a fraction of a second and an invalid restore point name.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            RestoreTarget::Time { time } if time.trunc_subsecs(0) != *time => {
                Err("a restore time is given to the second".into())
            }
            RestoreTarget::Name { name, .. } => restore_point_name(name),
            _ => Ok(()),
        }
    }
}

/// One line of a timeline history file: the lineage left timeline `parent` at `switch_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSwitch {
    pub parent: u32,
    pub switch_lsn: Lsn,
}

/// Parses a timeline history file (`0000000N.history`): `parent<TAB>lsn<TAB>reason` lines,
/// oldest first; comments and blank lines are skipped.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut switches = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let parent = fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| format!("bad history line {line:?}"))?;
        let switch_lsn = fields.next().ok_or_else(|| format!("bad history line {line:?}"))?.parse()?;
        switches.push(TimelineSwitch { parent, switch_lsn });
    }
    Ok(switches)
}

/// The timeline of a WAL segment file name (its first 8 hexadecimal digits).
pub fn segment_timeline(segment: &str) -> Option<u32> {
    segment.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok())
}

/// Whether a backup taken on `timeline` and consistent at `stop_lsn` can be replayed onto
/// `target_timeline`, whose ancestry is `history` (its history file; empty for timeline 1).
pub fn reaches(timeline: u32, stop_lsn: Lsn, target_timeline: u32, history: &[TimelineSwitch]) -> bool {
    timeline == target_timeline || history.iter().any(|s| s.parent == timeline && stop_lsn <= s.switch_lsn)
}

/// When the database began writing on a timeline: its creation (timeline 1), each promotion
/// after a failover or switchover, each in-place restore. The platform records them as it
/// observes them (Patroni's `/cluster` shows each member's timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimelineStart {
    pub timeline: u32,
    pub started_at: DateTime<Utc>,
}

/// The timeline the database was live on at `time`: the last one started at or before it. A
/// restore to `time` follows it (`--target-timeline`): after an in-place restore the newest
/// timeline branched in the past, and the database as it was before that restore lies on the
/// older one.
pub fn timeline_at(starts: &[TimelineStart], time: DateTime<Utc>) -> Option<u32> {
    starts.iter().filter(|s| s.started_at <= time).max_by_key(|s| (s.started_at, s.timeline)).map(|s| s.timeline)
}

/// A physical backup in a stanza's repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PitrBackup {
    /// pgBackRest's label (`20261129-104512F`).
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    pub started_at: DateTime<Utc>,
    /// When pgBackRest recorded its end (whole seconds, rounded down): the first second a time
    /// target can use it is the next one.
    pub stopped_at: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// The database's size as backed up, and what the repository holds for it (compressed).
    pub size: u64,
    pub repository_size: u64,
}

/// The newest backup a restore to `target` on `target_timeline` can start from, if any: it ended
/// strictly before the target (a time target: at least one second before, since stop times are
/// rounded down), and its timeline leads to the target's.
pub fn choose_backup<'a>(
    backups: &'a [PitrBackup],
    target: &RestoreTarget,
    target_timeline: u32,
    history: &[TimelineSwitch],
) -> Option<&'a PitrBackup> {
    let mut candidates: Vec<&PitrBackup> = backups
        .iter()
        .filter(|b| reaches(b.timeline, b.stop_lsn, target_timeline, history))
        .filter(|b| match target {
            RestoreTarget::Time { time } => b.stopped_at + Duration::seconds(1) <= *time,
            RestoreTarget::Lsn { lsn } | RestoreTarget::Name { lsn, .. } => b.stop_lsn <= *lsn,
        })
        .collect();
    candidates.sort_by_key(|b| (b.stopped_at, b.stop_lsn));
    candidates.pop()
}

/// How WAL archiving fares on the member that leads (from `pg_stat_archiver` and its WAL folder).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveHealth {
    /// The newest segment the repository holds.
    pub last_archived_wal: Option<String>,
    pub last_archived_at: Option<DateTime<Utc>>,
    pub last_failed_wal: Option<String>,
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Completed segments waiting for the archiver (`archive_status/*.ready`), and their bytes.
    pub pending_segments: u64,
    pub pending_bytes: u64,
}

impl ArchiveHealth {
    /// Failing: the last attempt failed after the last success.
    pub fn failing(&self) -> bool {
        match (self.last_failed_at, self.last_archived_at) {
            (Some(failed), Some(done)) => failed > done,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// How long the member's disk holds out at `wal_bytes_per_second` with nothing archived:
    /// the free bytes over the rate (none when no WAL is written).
    pub fn time_left(free_bytes: u64, wal_bytes_per_second: f64) -> Option<Duration> {
        (wal_bytes_per_second > 0.0).then(|| Duration::seconds((free_bytes as f64 / wal_bytes_per_second) as i64))
    }
}

/// What a restore can reach: from `earliest` to `latest` (both whole seconds, UTC), the backups
/// behind it, and the archive's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PitrWindow {
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub backups: Vec<PitrBackup>,
    pub archive: ArchiveHealth,
}

impl PitrWindow {
    /// The window of `backups` and `archive` on a plan keeping `window_days`, at `now`: it opens
    /// one second after the oldest backup ended, or `window_days` ago when that is later
    /// (retention keeps one backup older than the window, which the API does not promise), and
    /// closes at the last archived segment's time.
    pub fn new(backups: Vec<PitrBackup>, archive: ArchiveHealth, window_days: u32, now: DateTime<Utc>) -> Self {
        let oldest = backups.iter().map(|b| b.stopped_at + Duration::seconds(1)).min();
        let floor = (now - Duration::days(window_days.into())).trunc_subsecs(0) + Duration::seconds(1);
        let earliest = oldest.map(|o| o.max(floor));
        let latest = archive.last_archived_at.map(|t| t.trunc_subsecs(0)).filter(|l| earliest.is_some_and(|e| *l >= e));
        PitrWindow { earliest, latest: latest.or(earliest), backups, archive }
    }

    /// Whether a time target lies in the window; the error states the window.
    pub fn admits(&self, time: DateTime<Utc>) -> Result<(), String> {
        match (self.earliest, self.latest) {
            (Some(e), Some(l)) if time >= e && time <= l => Ok(()),
            (Some(e), Some(l)) => Err(format!(
                "{} is outside the restorable window, from {} to {}",
                time.to_rfc3339(),
                e.to_rfc3339(),
                l.to_rfc3339()
            )),
            _ => Err("nothing is restorable yet: the first full backup has not completed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn backup(label: &str, timeline: u32, stop: i64, stop_lsn: u64) -> PitrBackup {
        PitrBackup {
            label: label.into(),
            kind: "full".into(),
            started_at: at(stop - 5),
            stopped_at: at(stop),
            start_lsn: Lsn(stop_lsn - 100),
            stop_lsn: Lsn(stop_lsn),
            timeline,
            size: 1,
            repository_size: 1,
        }
    }

    #[test]
    fn lsns_parse_and_print_as_postgres_does() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/3000060".parse::<Lsn>().unwrap().to_string(), "0/3000060");
        for bad in ["", "0", "0/", "x/1", "0/123456789", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Lsn(0x3000060)).unwrap(), "\"0/3000060\"");
    }

    #[test]
    fn targets_are_whole_seconds_and_names_are_plain() {
        assert!(RestoreTarget::Time { time: at(1) }.validate().is_ok());
        let fraction = at(1) + Duration::milliseconds(500);
        assert!(RestoreTarget::Time { time: fraction }.validate().is_err());
        assert!(RestoreTarget::Name { name: "before-migration".into(), lsn: Lsn(1) }.validate().is_ok());
        assert!(RestoreTarget::Name { name: "a'b".into(), lsn: Lsn(1) }.validate().is_err());
        assert!(RestoreTarget::Name { name: "x".repeat(64), lsn: Lsn(1) }.validate().is_err());
        let json = serde_json::to_value(RestoreTarget::Lsn { lsn: Lsn(0x10) }).unwrap();
        assert_eq!(json, serde_json::json!({"type": "lsn", "lsn": "0/10"}));
    }

    #[test]
    fn the_live_timeline_at_a_time_is_the_last_started() {
        let starts = [
            TimelineStart { timeline: 1, started_at: at(0) },
            // An in-place restore at 100 to a time before it, then one back at 200.
            TimelineStart { timeline: 2, started_at: at(100) },
            TimelineStart { timeline: 3, started_at: at(200) },
        ];
        assert_eq!(timeline_at(&starts, at(50)), Some(1));
        assert_eq!(timeline_at(&starts, at(100)), Some(2));
        assert_eq!(timeline_at(&starts, at(150)), Some(2));
        assert_eq!(timeline_at(&starts, at(250)), Some(3));
        assert_eq!(timeline_at(&starts, at(-1)), None);
    }

    #[test]
    fn history_files_parse() {
        let h = parse_history(
            "1\t0/3000090\tbefore 2026-11-29 10:00:05+00\n\n2\t0/5000000\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(
            h,
            vec![
                TimelineSwitch { parent: 1, switch_lsn: Lsn(0x3000090) },
                TimelineSwitch { parent: 2, switch_lsn: Lsn(0x5000000) },
            ]
        );
        assert_eq!(segment_timeline("000000030000000000000005"), Some(3));
    }

    #[test]
    fn the_backup_chosen_ended_before_the_target_on_its_lineage() {
        let backups = vec![backup("a", 1, 100, 0x1000), backup("b", 1, 200, 0x3000), backup("c", 2, 300, 0x5000)];
        // On timeline 1: the newest that ended a whole second before.
        let t = |s| RestoreTarget::Time { time: at(s) };
        assert_eq!(choose_backup(&backups, &t(250), 1, &[]).unwrap().label, "b");
        assert_eq!(choose_backup(&backups, &t(201), 1, &[]).unwrap().label, "b");
        // At a backup's recorded end, the one before serves.
        assert_eq!(choose_backup(&backups, &t(200), 1, &[]).unwrap().label, "a");
        assert!(choose_backup(&backups, &t(100), 1, &[]).is_none());
        // Timeline 2 left timeline 1 at 0/2000 (an in-place restore to before b): b cannot
        // replay onto it, a can, and c is on it.
        let history = [TimelineSwitch { parent: 1, switch_lsn: Lsn(0x2000) }];
        assert_eq!(choose_backup(&backups, &t(250), 2, &history).unwrap().label, "a");
        assert_eq!(choose_backup(&backups, &t(400), 2, &history).unwrap().label, "c");
        // An LSN target takes a backup that ended at it.
        let l = RestoreTarget::Lsn { lsn: Lsn(0x3000) };
        assert_eq!(choose_backup(&backups, &l, 1, &[]).unwrap().label, "b");
    }

    #[test]
    fn the_window_opens_after_the_oldest_backup_within_the_plan() {
        let archive = ArchiveHealth { last_archived_at: Some(at(500)), ..Default::default() };
        let w = PitrWindow::new(vec![backup("a", 1, 100, 0x1000)], archive.clone(), 7, at(600));
        assert_eq!((w.earliest, w.latest), (Some(at(101)), Some(at(500))));
        assert!(w.admits(at(101)).is_ok() && w.admits(at(500)).is_ok());
        let refused = w.admits(at(100)).unwrap_err();
        assert!(refused.contains("outside the restorable window"), "{refused}");
        // A backup older than the plan's window: the window starts window_days ago.
        let w = PitrWindow::new(vec![backup("a", 1, 100, 0x1000)], archive, 0, at(400));
        assert_eq!(w.earliest, Some(at(401)));
        assert_eq!(w.latest, Some(at(500)));
        let empty = PitrWindow::new(vec![], ArchiveHealth::default(), 7, at(0));
        assert!(empty.admits(at(0)).is_err());
    }

    #[test]
    fn archive_health_says_failing_and_time_left() {
        let mut h = ArchiveHealth { last_archived_at: Some(at(10)), last_failed_at: Some(at(5)), ..Default::default() };
        assert!(!h.failing());
        h.last_failed_at = Some(at(20));
        assert!(h.failing());
        assert_eq!(ArchiveHealth::time_left(1_000, 10.0), Some(Duration::seconds(100)));
        assert_eq!(ArchiveHealth::time_left(1_000, 0.0), None);
    }
}
