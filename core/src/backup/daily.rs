//! Daily backups as a tenant sees them: whether a database takes them (its plan keeps daily
//! backups and the tenant left them on) and at which UTC hour (the tenant's `backup_hour`, or,
//! when the tenant leaves it to the platform, a stable hour derived from the database's id so
//! that the platform's databases spread their dumps over the day instead of all at midnight).

use crate::ids::DatabaseId;
use crate::model::Plan;

/// Whether `plan` has daily backups at all (Sandbox has none).
pub fn plan_has_daily(plan: &Plan) -> bool {
    plan.daily_backup_retention_days > 0
}

/// The hour the platform picks for a database whose tenant chose none: the low random bits of
/// its id (UUIDv7: the last 8 bytes are random), so it never changes and is uniform over the day.
pub fn platform_hour(database: DatabaseId) -> u8 {
    let bytes = database.as_uuid().into_bytes();
    let tail = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    (tail % 24) as u8
}

/// The hour the daily backup runs at, `None` when the database takes none: the plan keeps no
/// daily backups (`plan_daily`) or the tenant turned them off (`enabled`).
pub fn effective_hour(database: DatabaseId, chosen: Option<i32>, enabled: bool, plan_daily: bool) -> Option<u8> {
    if !(enabled && plan_daily) {
        return None;
    }
    Some(match chosen {
        Some(h) if (0..24).contains(&h) => h as u8,
        _ => platform_hour(database),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_hour_is_stable_and_spread() {
        let mut seen = [0u32; 24];
        for _ in 0..2400 {
            let id = DatabaseId::new();
            let h = platform_hour(id);
            assert_eq!(h, platform_hour(id));
            seen[h as usize] += 1;
        }
        // 100 expected per hour; every hour is used and none takes a quarter of them.
        assert!(seen.iter().all(|n| *n > 0 && *n < 600), "{seen:?}");
    }

    #[test]
    fn the_effective_hour() {
        let id = DatabaseId::new();
        assert_eq!(effective_hour(id, Some(3), true, true), Some(3));
        assert_eq!(effective_hour(id, None, true, true), Some(platform_hour(id)));
        assert_eq!(effective_hour(id, Some(3), false, true), None);
        assert_eq!(effective_hour(id, Some(3), true, false), None);
    }
}
