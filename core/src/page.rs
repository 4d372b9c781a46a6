//! Cursor pagination shared by every list: `?limit=&cursor=`, answered with `items` and
//! `next_cursor`. A cursor is opaque to clients (base64url of the last key seen).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::Error;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// Query parameters of every list endpoint.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request: fetch `limit` items whose key sorts after `after`.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
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
    /// The cursor key parsed as a UUID (lists keyed by id).
    pub fn after_uuid(&self) -> Result<Option<uuid::Uuid>, Error> {
        self.after.as_deref().map(|s| uuid::Uuid::parse_str(s).map_err(|_| invalid_cursor())).transpose()
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

pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

fn invalid_cursor() -> Error {
    Error::invalid("cursor", "invalid", "cursor is not one this API returned")
}

pub fn decode_cursor(c: &str) -> Result<String, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(c.as_bytes()).map_err(|_| invalid_cursor())?;
    String::from_utf8(bytes).map_err(|_| invalid_cursor())
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
