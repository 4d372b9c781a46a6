//! Input rules shared by the API and the CLI.

use crate::FieldError;

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
