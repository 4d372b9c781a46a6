//! Input rules shared by the API and the CLI.

use crate::FieldError;
use std::net::IpAddr;

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

pub fn email(field: &str, value: &str) -> Result<(), FieldError> {
    let parts: Vec<&str> = value.split('@').collect();
    let ok = value.len() <= 254
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
    fn display_names() {
        assert!(display_name("n", "Acme Corp", 100).is_ok());
        assert!(display_name("n", "  ", 100).is_err());
        assert!(display_name("n", "a\nb", 100).is_err());
        assert!(display_name("n", &"x".repeat(101), 100).is_err());
    }
}
