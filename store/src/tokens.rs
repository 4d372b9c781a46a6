//! Long-lived API tokens: random secrets shown once and stored as SHA-256 hashes (the
//! secrets carry 238 bits of entropy, so a fast hash is enough and lookups stay O(1)).

use chrono::{DateTime, Duration, Utc};
use pgplane_core::ids::{TokenId, UserId};
use pgplane_core::model::{ApiToken, PlatformRole};
use pgplane_core::page::PageRequest;
use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};
use sqlx::FromRow;

use crate::{db_error, parse_enum, Error, Result, Store};

pub const TOKEN_PREFIX: &str = "pgp_";

#[derive(FromRow)]
struct TokenRow {
    id: TokenId,
    user_id: UserId,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<TokenRow> for ApiToken {
    fn from(r: TokenRow) -> Self {
        ApiToken {
            id: r.id,
            user_id: r.user_id,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// Who a valid API token belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TokenOwner {
    pub token_id: TokenId,
    pub user_id: UserId,
    pub platform_role: Option<PlatformRole>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

const COLUMNS: &str = "id, user_id, name, prefix, created_at, expires_at, last_used_at";

impl Store {
    /// Creates a token and returns it with its secret, which is not stored.
    pub async fn token_create(
        &self,
        user: UserId,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<(ApiToken, String)> {
        let secret = format!("{TOKEN_PREFIX}{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 40));
        let prefix = secret[..TOKEN_PREFIX.len() + 6].to_string();
        let expires_at = expires_in_days.map(|d| Utc::now() + Duration::days(i64::from(d)));
        let row: TokenRow = sqlx::query_as(&format!(
            "INSERT INTO api_tokens (id, user_id, name, prefix, secret_hash, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        ))
        .bind(TokenId::new())
        .bind(user)
        .bind(name.trim())
        .bind(&prefix)
        .bind(hash(&secret))
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok((row.into(), secret))
    }

    /// The owner of a live (not revoked, not expired) token; records its use.
    pub async fn token_authenticate(&self, secret: &str) -> Result<TokenOwner> {
        let row: Option<(TokenId, UserId, Option<String>)> = sqlx::query_as(
            "UPDATE api_tokens t SET last_used_at = now() FROM users u \
             WHERE t.secret_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()) \
               AND u.id = t.user_id \
             RETURNING t.id, t.user_id, u.platform_role",
        )
        .bind(hash(secret))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let (token_id, user_id, role) =
            row.ok_or_else(|| Error::unauthorized("the API token is invalid, expired or revoked"))?;
        Ok(TokenOwner { token_id, user_id, platform_role: role.as_deref().map(parse_enum).transpose()? })
    }

    pub async fn token_list(&self, user: UserId, page: &PageRequest) -> Result<(Vec<ApiToken>, Option<String>)> {
        let rows: Vec<TokenRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL \
             AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind(user)
        .bind(page.after_uuid()?)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let (rows, next) = page.finish(rows, |r| r.id.to_string());
        Ok((rows.into_iter().map(Into::into).collect(), next))
    }

    /// Revokes one of the user's tokens. Access tokens already minted from it stay valid
    /// until they expire (at most an hour).
    pub async fn token_revoke(&self, user: UserId, id: TokenId) -> Result<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("token"));
        }
        Ok(())
    }
}
