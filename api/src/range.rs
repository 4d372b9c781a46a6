//! The `Range` request header (RFC 9110 §14) for downloads: one byte range, in any of its three
//! forms (`bytes=a-b`, `bytes=a-`, `bytes=-n`). A header the server may ignore (another unit,
//! several ranges, bad syntax, an `If-Range` that no longer matches) asks for the whole object.

use std::ops::Range;

/// What a request asks of an object of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole object (200).
    Whole,
    /// These bytes of it (206), never empty.
    Part(Range<u64>),
    /// Nothing of it can be served (416, `Content-Range: bytes */size`).
    Unsatisfiable,
}

/// Reads the `Range` header (`range`) of a request for an object of `size` bytes whose ETag is
/// `etag`; `if_range` is the request's `If-Range` header.
pub fn ask(range: Option<&str>, if_range: Option<&str>, etag: &str, size: u64) -> RangeAsk {
    let Some(spec) = range.map(str::trim) else { return RangeAsk::Whole };
    // A validator that no longer matches (or a date, which a backup's ETag cannot be compared
    // with) asks for the whole, current object.
    if if_range.is_some_and(|v| v.trim() != etag) {
        return RangeAsk::Whole;
    }
    let Some((unit, set)) = spec.split_once('=') else { return RangeAsk::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else { return RangeAsk::Whole };
    let number = |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok());
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(Some(n)) if n > 0 && size > 0 => RangeAsk::Part(size.saturating_sub(n)..size),
            // `-0`, or any suffix of an empty object; a suffix too large for u64 is the whole.
            Some(Some(_)) => RangeAsk::Unsatisfiable,
            Some(None) if size > 0 => RangeAsk::Part(0..size),
            Some(None) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        (start, end) => {
            let Some(Some(start)) = number(start) else { return RangeAsk::Whole };
            let end = match end {
                "" => None,
                e => match number(e) {
                    Some(Some(e)) => Some(e),
                    Some(None) => Some(u64::MAX),
                    None => return RangeAsk::Whole,
                },
            };
            if end.is_some_and(|e| e < start) {
                return RangeAsk::Whole;
            }
            if start >= size {
                return RangeAsk::Unsatisfiable;
            }
            RangeAsk::Part(start..end.map_or(size, |e| e.saturating_add(1).min(size)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RangeAsk::*;
    use super::*;

    fn of(range: &str, size: u64) -> RangeAsk {
        ask(Some(range), None, "\"e\"", size)
    }

    #[test]
    fn the_three_forms() {
        assert_eq!(ask(None, None, "\"e\"", 100), Whole);
        assert_eq!(of("bytes=0-9", 100), Part(0..10));
        assert_eq!(of("bytes=90-", 100), Part(90..100));
        assert_eq!(of("bytes=-10", 100), Part(90..100));
        assert_eq!(of("bytes=-1000", 100), Part(0..100));
        assert_eq!(of("bytes=50-1000", 100), Part(50..100));
        assert_eq!(of("bytes=99-99", 100), Part(99..100));
        assert_eq!(of("bytes=0-18446744073709551616", 100), Part(0..100));
        assert_eq!(of("Bytes = 1-2", 100), Part(1..3));
    }

    #[test]
    fn unsatisfiable_ones() {
        assert_eq!(of("bytes=100-", 100), Unsatisfiable);
        assert_eq!(of("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(of("bytes=-0", 100), Unsatisfiable);
        assert_eq!(of("bytes=0-", 0), Unsatisfiable);
        assert_eq!(of("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn ignored_ones_ask_for_the_whole() {
        for header in
            ["items=0-9", "bytes=0-9,20-29", "bytes=9-0", "bytes=a-b", "bytes=", "bytes=-", "0-9", "bytes=--1"]
        {
            assert_eq!(of(header, 100), Whole, "{header}");
        }
        assert_eq!(ask(Some("bytes=0-9"), Some("\"other\""), "\"e\"", 100), Whole);
        assert_eq!(ask(Some("bytes=0-9"), Some("Sat, 28 Nov 2026 10:00:00 GMT"), "\"e\"", 100), Whole);
        assert_eq!(ask(Some("bytes=0-9"), Some("\"e\""), "\"e\"", 100), Part(0..10));
    }
}
