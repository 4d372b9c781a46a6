//! Cursor pagination shared by every list: `?limit=&cursor=`, answered with `items` and
//! `next_cursor`. A cursor is opaque to clients: the last key seen (a UUID, or a position for
//! lists ordered by one) as 16 bytes in base64url, so every string of that shape is a cursor
//! and the document's pattern (`cursor_schema`) says exactly which ones the API takes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use utoipa::openapi::schema::{Schema, Type};
use utoipa::openapi::{ObjectBuilder, RefOr};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::Error;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;
/// A cursor: 16 bytes in base64url without padding; the last character carries 2 bits.
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{21}[AQgw]$";

/// Query parameters of every list endpoint. Lists with more filters repeat these two fields
/// with the same attributes (`#[param(minimum = 1, maximum = 200)]`, `cursor_schema`).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor_schema)]
    pub cursor: Option<String>,
}

/// The schema of `cursor`: exactly the strings `decode_cursor` takes.
pub fn cursor_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`next_cursor` of the previous page."))
        .pattern(Some(CURSOR_PATTERN))
        .into()
}

/// A validated page request: fetch `limit` items whose key sorts after `after`.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Uuid>,
}

impl PageParams {
    pub fn validate(&self) -> Result<PageRequest, Error> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::invalid("limit", "out_of_range", format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(PageRequest { limit, after })
    }
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        Self { limit, after: None }
    }
    /// The cursor key as a UUID (lists keyed by id).
    pub fn after_uuid(&self) -> Result<Option<Uuid>, Error> {
        Ok(self.after)
    }
    /// The cursor key as a position (lists ordered by one); `i32::MIN` on the first page.
    pub fn after_position(&self) -> i32 {
        self.after.map_or(i32::MIN, |k| i32::try_from(k.as_u128()).unwrap_or(i32::MAX))
    }
    /// Ask the store for one more row than the limit: its presence says a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }
    /// Cut `rows` (fetched with `fetch_limit`) to the page and compute the next cursor.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next = if more { rows.last().map(|r| encode_cursor(&key(r))) } else { None };
        (rows, next)
    }
}

/// Encodes a key: a UUID, or a non-negative position. Lists keyed otherwise need another
/// cursor (and another `cursor_schema`).
pub fn encode_cursor(key: &str) -> String {
    let parsed = Uuid::parse_str(key).map(|u| u.as_u128()).or_else(|_| key.parse::<u128>());
    debug_assert!(parsed.is_ok(), "a cursor key is a UUID or a position, not {key:?}");
    let key = parsed.unwrap_or(u128::MAX);
    URL_SAFE_NO_PAD.encode(key.to_be_bytes())
}

fn invalid_cursor() -> Error {
    Error::invalid("cursor", "invalid", "cursor is not one this API returned")
}

pub fn decode_cursor(c: &str) -> Result<Uuid, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(c.as_bytes()).map_err(|_| invalid_cursor())?;
    Uuid::from_slice(&bytes).map_err(|_| invalid_cursor())
}

/// Declares a concrete page type (`items` + `next_cursor`) for the OpenAPI document.
#[macro_export]
macro_rules! page_of {
    ($name:ident, $item:ty) => {
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; absent on the last page.
            pub next_cursor: Option<String>,
        }
        impl $name {
            pub fn new((items, next_cursor): (Vec<$item>, Option<String>)) -> Self {
                Self { items, next_cursor }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_match_their_pattern() {
        let id = Uuid::now_v7();
        for (key, back) in [(id.to_string(), id), ("7".to_string(), Uuid::from_u128(7))] {
            let c = encode_cursor(&key);
            assert_eq!(c.len(), 22);
            assert!(c[..21].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!("AQgw".contains(&c[21..]), "{c}");
            assert_eq!(decode_cursor(&c).unwrap(), back);
        }
        // The last character carries 2 bits: the others are refused, as the pattern says.
        assert!(decode_cursor("AAAAAAAAAAAAAAAAAAAAAB").is_err());
        assert!(decode_cursor("AAAAAAAAAAAAAAAAAAAAAQ").is_ok());
        assert!(decode_cursor("Z2FyYmFnZQ").is_err());
    }
}
