//! Signed download links of backups, as a tenant asks for and receives them: a URL that
//! downloads one backup without a token until it expires (the API signs it; see the API's
//! `links` module for how).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How long a link lives when the request does not say.
pub const DEFAULT_LINK_SECS: u32 = 15 * 60;
/// The longest a link may live.
pub const MAX_LINK_SECS: u32 = 24 * 3600;

/// A request for a signed download link.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackupLink {
    /// Seconds the link stays valid: 1 to 86400 (a day); 900 (15 minutes) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::validate::integer")]
    #[schema(minimum = 1, maximum = 86400)]
    pub expires_in: Option<u32>,
}

/// A link that downloads one backup without a token (`curl -o backup.dump "<url>"`, or a
/// browser), `Range` included, until `expires_at`. Anyone holding it can download the backup:
/// share it like a password. It stops working once the backup is deleted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
    /// Seconds from now until `expires_at`.
    pub expires_in: u32,
}
