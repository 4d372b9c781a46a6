//! The PostgreSQL parameters tenants may change, with their types, bounds and whether a
//! change needs a restart. Anything not listed here is the platform's to set.

use crate::FieldError;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    /// An integer in `unit` (e.g. kB, ms), between `min` and `max`.
    Integer {
        min: i64,
        max: i64,
        unit: Option<&'static str>,
    },
    Real {
        min: f64,
        max: f64,
    },
    Bool,
    Enum {
        values: &'static [&'static str],
    },
}

/// One changeable parameter.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ParamDef {
    pub name: &'static str,
    #[serde(flatten)]
    pub kind: ParamKind,
    /// A change takes effect only after a restart.
    pub restart: bool,
    pub description: &'static str,
}

const fn int(
    name: &'static str,
    min: i64,
    max: i64,
    unit: Option<&'static str>,
    restart: bool,
    description: &'static str,
) -> ParamDef {
    ParamDef { name, kind: ParamKind::Integer { min, max, unit }, restart, description }
}

pub const PARAMETERS: &[ParamDef] = &[
    int("work_mem", 64, 2_097_152, Some("kB"), false, "Memory per sort or hash before spilling to disk"),
    int("maintenance_work_mem", 1024, 2_097_152, Some("kB"), false, "Memory for VACUUM, CREATE INDEX and the like"),
    int("statement_timeout", 0, 86_400_000, Some("ms"), false, "Cancel statements running longer (0: never)"),
    int("lock_timeout", 0, 86_400_000, Some("ms"), false, "Give up waiting for a lock after this long (0: never)"),
    int("idle_in_transaction_session_timeout", 0, 86_400_000, Some("ms"), false, "End sessions idle in a transaction"),
    int("log_min_duration_statement", -1, 86_400_000, Some("ms"), false, "Log statements slower than this (-1: off)"),
    int("default_statistics_target", 1, 10_000, None, false, "Detail of the planner's statistics"),
    int("max_parallel_workers_per_gather", 0, 64, None, false, "Parallel workers one query node may use"),
    int("effective_io_concurrency", 0, 1000, None, false, "Concurrent disk reads the planner assumes"),
    int("checkpoint_timeout", 30_000, 86_400_000, Some("ms"), false, "Longest time between checkpoints"),
    int("max_wal_size", 32, 1_048_576, Some("MB"), false, "WAL size that triggers a checkpoint"),
    int("max_locks_per_transaction", 10, 10_000, None, true, "Lock table size (needs a restart)"),
    int("max_prepared_transactions", 0, 1000, None, true, "Two-phase commit slots (needs a restart)"),
    ParamDef {
        name: "random_page_cost",
        kind: ParamKind::Real { min: 0.0, max: 1000.0 },
        restart: false,
        description: "Planner's cost of a random page read",
    },
    ParamDef { name: "jit", kind: ParamKind::Bool, restart: false, description: "Just-in-time compilation of queries" },
    ParamDef { name: "track_io_timing", kind: ParamKind::Bool, restart: false, description: "Time I/O in statistics" },
    ParamDef {
        name: "log_statement",
        kind: ParamKind::Enum { values: &["none", "ddl", "mod", "all"] },
        restart: false,
        description: "Which statements are logged",
    },
    ParamDef {
        name: "synchronous_commit",
        kind: ParamKind::Enum { values: &["on", "off", "local", "remote_write", "remote_apply"] },
        restart: false,
        description: "When a commit is acknowledged",
    },
];

pub fn find(name: &str) -> Option<&'static ParamDef> {
    PARAMETERS.iter().find(|p| p.name == name)
}

/// Checks a value (JSON number, boolean or string) and returns it as PostgreSQL writes it.
pub fn validate(name: &str, value: &Value) -> Result<String, FieldError> {
    let field = format!("parameters.{name}");
    let Some(def) = find(name) else {
        return Err(FieldError::new(field, "unknown", "not a parameter tenants may set; see GET /v1/parameters"));
    };
    let bad = |msg: String| FieldError::new(format!("parameters.{name}"), "invalid", msg);
    match def.kind {
        ParamKind::Integer { min, max, unit } => {
            let n = value.as_i64().or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            match n {
                Some(n) if (min..=max).contains(&n) => Ok(format!("{n}{}", unit.unwrap_or(""))),
                _ => Err(bad(format!(
                    "must be an integer from {min} to {max}{}",
                    unit.map(|u| format!(" ({u})")).unwrap_or_default()
                ))),
            }
        }
        ParamKind::Real { min, max } => match value.as_f64() {
            Some(x) if x >= min && x <= max => Ok(x.to_string()),
            _ => Err(bad(format!("must be a number from {min} to {max}"))),
        },
        ParamKind::Bool => match value.as_bool() {
            Some(b) => Ok(if b { "on" } else { "off" }.into()),
            None => Err(bad("must be true or false".into())),
        },
        ParamKind::Enum { values } => match value.as_str() {
            Some(s) if values.contains(&s) => Ok(s.to_string()),
            _ => Err(bad(format!("must be one of {}", values.join(", ")))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_checked_and_normalized() {
        assert_eq!(validate("work_mem", &json!(4096)).unwrap(), "4096kB");
        assert_eq!(validate("statement_timeout", &json!("30000")).unwrap(), "30000ms");
        assert_eq!(validate("jit", &json!(false)).unwrap(), "off");
        assert_eq!(validate("log_statement", &json!("ddl")).unwrap(), "ddl");
        assert_eq!(validate("random_page_cost", &json!(1.1)).unwrap(), "1.1");
        assert!(validate("work_mem", &json!(1)).is_err());
        assert!(validate("work_mem", &json!("64MB")).is_err());
        assert!(validate("log_statement", &json!("everything")).is_err());
        assert!(validate("shared_preload_libraries", &json!("x")).is_err());
        assert!(validate("jit", &json!("yes")).is_err());
    }
}
