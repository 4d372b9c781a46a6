//! Input rules shared by the API and the CLI. Each rule has its schema beside it
//! (`*_schema`, used as `#[schema(schema_with = validate::…_schema)]`), so that the OpenAPI
//! document accepts exactly the values the rule accepts.

use crate::FieldError;
use std::net::IpAddr;
use utoipa::openapi::schema::{Schema, Type};
use utoipa::openapi::{ObjectBuilder, RefOr};

/// Longest display name (tenants, users, tokens), in characters.
pub const DISPLAY_NAME_MAX: usize = 100;
/// Longest email address, in characters.
pub const EMAIL_MAX: usize = 254;

/// Regex class body: what `char::is_control` refuses (Unicode Cc).
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// Regex class body: Unicode White_Space outside `CONTROL` (what `str::trim` and
/// `char::is_whitespace` see besides control characters).
const BLANK: &str = r"\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

fn string_schema(description: &str, pattern: String, max_length: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(max_length))
        .pattern(Some(pattern))
        .into()
}

/// The schema of `slug_name`.
pub fn slug_name_schema() -> RefOr<Schema> {
    string_schema(
        "Lowercase letters, digits and '-', starting with a letter and not ending with '-' (a DNS label).",
        "^[a-z]([a-z0-9-]*[a-z0-9])?$".into(),
        63,
    )
}

/// The schema of `display_name` with `DISPLAY_NAME_MAX`.
pub fn display_name_schema() -> RefOr<Schema> {
    string_schema(
        "Printable characters (no control characters), not only spaces.",
        format!("^[^{CONTROL}]*[^{CONTROL}{BLANK}][^{CONTROL}]*$"),
        DISPLAY_NAME_MAX,
    )
}

/// The schema of `email`: surrounding white space is allowed (the address is trimmed).
pub fn email_schema() -> RefOr<Schema> {
    let c = format!("{CONTROL}{BLANK}@");
    let space = format!(r"[\t-\r\x85{BLANK}]*");
    string_schema(
        "An email address: one '@', no spaces inside, a domain with a dot inside.",
        format!(r"^{space}[^{c}]+@[^{c}.][^{c}]*\.[^{c}]*[^{c}.]{space}$"),
        EMAIL_MAX,
    )
}

/// The PostgreSQL superuser the platform runs each database with; never given to tenants.
pub const SUPERUSER_ROLE: &str = "postgres";
/// The role members stream replication with.
pub const REPLICATION_ROLE: &str = "replicator";
/// The user of Patroni's REST API.
pub const RESTAPI_USER: &str = "patroni";

/// Names a database may not take: a database's name is also its tenant's role and PostgreSQL
/// database, so it must not be a role or database the platform makes (the superuser, the
/// replication role, Patroni's REST user, the template databases) nor one PostgreSQL reserves.
/// Names starting with `pg_` are refused too (see `database_name`).
pub const RESERVED_DATABASE_NAMES: &[&str] = &[
    SUPERUSER_ROLE,
    REPLICATION_ROLE,
    RESTAPI_USER,
    "template0",
    "template1",
    "pgplane",
    "pgbackrest",
    "public",
    "none",
    "current_role",
    "current_user",
    "session_user",
];

/// True for a role or database name the platform or PostgreSQL keeps for itself.
pub fn is_reserved_name(value: &str) -> bool {
    value.starts_with("pg_") || RESERVED_DATABASE_NAMES.contains(&value)
}

/// A database's name: a DNS label (`slug_name`) that no platform role or database uses.
pub fn database_name(field: &str, value: &str) -> Result<(), FieldError> {
    slug_name(field, value)?;
    if is_reserved_name(value) {
        return Err(FieldError::new(
            field,
            "reserved",
            format!("{value:?} is a name the platform uses; choose another"),
        ));
    }
    Ok(())
}

/// At most this many entries in a database's IP allowlist (the OpenAPI document says so too:
/// `UpdateDatabaseSettings::allowed_cidrs`).
pub const MAX_ALLOWED_CIDRS: usize = 64;

/// An IP allowlist: IPv4 or IPv6 networks (`203.0.113.0/24`, `2001:db8::/32`; a bare address
/// is one host). Returns them normalized (host bits cleared, `/32` or `/128` written out),
/// without duplicates, in the order given.
pub fn cidrs(field: &str, values: &[String]) -> Result<Vec<String>, FieldError> {
    if values.len() > MAX_ALLOWED_CIDRS {
        return Err(FieldError::new(field, "too_many", format!("at most {MAX_ALLOWED_CIDRS} networks")));
    }
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let n = cidr(v).ok_or_else(|| {
            FieldError::new(field, "invalid", format!("{v:?} is not an IPv4 or IPv6 network such as 203.0.113.0/24"))
        })?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// One network, normalized; None when it is not one.
fn cidr(value: &str) -> Option<String> {
    let (addr, len) = match value.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (value, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && l.len() <= 3 => l.parse().ok()?,
        Some(_) => return None,
        None => max,
    };
    if len > max {
        return None;
    }
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    Some(format!("{network}/{len}"))
}

/// Names of apps and databases: a DNS label (they end up in host names and process names).
pub fn slug_name(field: &str, value: &str) -> Result<(), FieldError> {
    let ok_chars = value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.is_empty() {
        return Err(FieldError::new(field, "required", "must not be empty"));
    }
    if value.len() > 63 {
        return Err(FieldError::new(field, "too_long", "must be at most 63 characters"));
    }
    let first = value.as_bytes()[0];
    let last = value.as_bytes()[value.len() - 1];
    if !ok_chars || !first.is_ascii_lowercase() || last == b'-' {
        return Err(FieldError::new(
            field,
            "invalid",
            "must be lowercase letters, digits and '-', start with a letter and not end with '-'",
        ));
    }
    Ok(())
}

/// Display names (tenants, tokens, users): 1 to `max` printable characters.
pub fn display_name(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(FieldError::new(field, "required", "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(FieldError::new(field, "too_long", format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "invalid", "must not contain control characters"));
    }
    Ok(())
}

/// An email address; white space around it is ignored (the store trims it), but counts
/// towards the length.
pub fn email(field: &str, value: &str) -> Result<(), FieldError> {
    let long = value.chars().count() > EMAIL_MAX;
    let value = value.trim();
    let parts: Vec<&str> = value.split('@').collect();
    let ok = !long
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !parts[1].starts_with('.')
        && !parts[1].ends_with('.')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, "invalid", "must be an email address"))
    }
}

/// Deserializes an optional integer as JSON Schema reads one: `3` and `3.0` alike. Use with
/// `#[serde(default, deserialize_with = "…")]` on `Option<i32>` / `Option<u32>` body fields.
pub fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::{Deserialize, Error, Unexpected};
    let Some(n) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    let whole = n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64));
    let expected = &"an integer in range";
    match whole {
        Some(i) => T::try_from(i).map(Some).map_err(|_| D::Error::invalid_value(Unexpected::Signed(i), expected)),
        None => Err(D::Error::invalid_type(Unexpected::Other(&n.to_string()), expected)),
    }
}

/// Like `integer`, for a field where `null` means something (e.g. "let the platform choose"):
/// absent is `None` (with `#[serde(default)]`), `null` is `Some(None)`.
pub fn nullable_integer<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    integer(deserializer).map(Some)
}

pub fn hour(field: &str, value: i32) -> Result<(), FieldError> {
    if (0..24).contains(&value) {
        Ok(())
    } else {
        Err(FieldError::new(field, "out_of_range", "must be an hour between 0 and 23 (UTC)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "web", "my-app-2", &"a".repeat(63)] {
            assert!(slug_name("n", ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "1abc", "abc-", "a_b", "é", &"a".repeat(64), "a b"] {
            assert!(slug_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_names_the_platform_uses_are_reserved() {
        for reserved in ["postgres", "template0", "template1", "replicator", "patroni", "public"] {
            assert_eq!(database_name("name", reserved).unwrap_err().code, "reserved", "{reserved}");
        }
        assert_eq!(database_name("name", "pg_stat").unwrap_err().code, "invalid", "not a slug anyway");
        for ok in ["main", "postgres2", "pg", "my-postgres"] {
            assert!(database_name("name", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn cidrs_are_checked_and_normalized() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            cidrs("c", &list(&["10.1.2.3/8", "192.0.2.7", "2001:db8::1/32", "::1", "0.0.0.0/0", "10.0.0.0/8"]))
                .unwrap(),
            list(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128", "0.0.0.0/0"])
        );
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "::/129", "10.0.0.0/", "10.0.0.0/+8", "host.example", "1.2.3.4/8/8"]
        {
            assert_eq!(cidrs("c", &list(&[bad])).unwrap_err().code, "invalid", "{bad}");
        }
        assert_eq!(cidrs("c", &vec!["10.0.0.0/8".to_string(); MAX_ALLOWED_CIDRS + 1]).unwrap_err().code, "too_many");
    }

    #[test]
    fn emails() {
        assert!(email("e", "a@b.io").is_ok());
        for bad in ["", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@.io"] {
            assert!(email("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_as_json_schema_reads_them() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "integer")]
            n: Option<u32>,
        }
        let n = |s: &str| serde_json::from_str::<T>(s).map(|t| t.n).ok();
        assert_eq!(n(r#"{"n": 3}"#), Some(Some(3)));
        assert_eq!(n(r#"{"n": 3.0}"#), Some(Some(3)));
        assert_eq!(n(r#"{"n": null}"#), Some(None));
        assert_eq!(n("{}"), Some(None));
        assert_eq!(n(r#"{"n": 3.5}"#), None);
        assert_eq!(n(r#"{"n": -1}"#), None);
        assert_eq!(n(r#"{"n": "3"}"#), None);
    }

    #[test]
    fn nullable_integers_tell_null_from_absent() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "nullable_integer")]
            n: Option<Option<u8>>,
        }
        let n = |s: &str| serde_json::from_str::<T>(s).map(|t| t.n).ok();
        assert_eq!(n(r#"{"n": 3}"#), Some(Some(Some(3))));
        assert_eq!(n(r#"{"n": null}"#), Some(Some(None)));
        assert_eq!(n("{}"), Some(None));
        assert_eq!(n(r#"{"n": "3"}"#), None);
    }

    #[test]
    fn display_names() {
        assert!(display_name("n", "Acme Corp", 100).is_ok());
        assert!(display_name("n", "  ", 100).is_err());
        assert!(display_name("n", "a\nb", 100).is_err());
        assert!(display_name("n", &"x".repeat(101), 100).is_err());
    }
}
