//! Idempotency keys: the first answer to a POST carrying `Idempotency-Key` is stored and
//! replayed to retries of the same request for 24 hours.

use chrono::{DateTime, Utc};
use pgplane_core::ids::UserId;
use sqlx::FromRow;

use crate::{db_error, Result, Store};

/// How long a key is remembered.
pub const KEY_TTL_HOURS: i64 = 24;
/// A request that holds a key longer than this without answering is presumed dead.
pub const IN_FLIGHT_TIMEOUT_SECS: i64 = 60;

#[derive(Debug)]
pub enum Begin {
    /// First use of the key: run the request, then `idempotency_finish`.
    New,
    /// The key answered before: send this again.
    Replay { status: u16, content_type: Option<String>, location: Option<String>, body: Vec<u8> },
    /// The same key is being used by a request still running.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

/// The first answer, to be replayed.
pub struct StoredAnswer<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub location: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(FromRow)]
struct KeyRow {
    method: String,
    path: String,
    request_hash: Vec<u8>,
    status_code: Option<i32>,
    content_type: Option<String>,
    location: Option<String>,
    response_body: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
}

impl Store {
    pub async fn idempotency_begin(
        &self,
        user: UserId,
        key: &str,
        method: &str,
        path: &str,
        hash: &[u8],
    ) -> Result<Begin> {
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at < now() - make_interval(hours => $3)")
            .bind(user)
            .bind(key)
            .bind(KEY_TTL_HOURS as i32)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, method, path, request_hash) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(key)
        .bind(method)
        .bind(path)
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if inserted.rows_affected() == 1 {
            return Ok(Begin::New);
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT method, path, request_hash, status_code, content_type, location, response_body, created_at \
             FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else { return Ok(Begin::InFlight) };
        if row.method != method || row.path != path || row.request_hash != hash {
            return Ok(Begin::Mismatch);
        }
        match (row.status_code, row.response_body) {
            (Some(status), Some(body)) => Ok(Begin::Replay {
                status: status as u16,
                content_type: row.content_type,
                location: row.location,
                body,
            }),
            _ if (Utc::now() - row.created_at).num_seconds() > IN_FLIGHT_TIMEOUT_SECS => {
                // The first attempt died without answering: let this one take the key over.
                let taken = sqlx::query(
                    "UPDATE idempotency_keys SET created_at = now() WHERE user_id = $1 AND key = $2 \
                     AND status_code IS NULL AND created_at = $3",
                )
                .bind(user)
                .bind(key)
                .bind(row.created_at)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
                Ok(if taken.rows_affected() == 1 { Begin::New } else { Begin::InFlight })
            }
            _ => Ok(Begin::InFlight),
        }
    }

    pub async fn idempotency_finish(&self, user: UserId, key: &str, answer: &StoredAnswer<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = $3, content_type = $4, location = $5, response_body = $6 WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .bind(i32::from(answer.status))
        .bind(answer.content_type)
        .bind(answer.location)
        .bind(answer.body)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Forgets a key whose request failed in a way worth retrying (5xx, 429).
    pub async fn idempotency_release(&self, user: UserId, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status_code IS NULL")
            .bind(user)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
