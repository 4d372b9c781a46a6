//! Typed identifiers: a `DatabaseId` cannot be passed where a `BackupId` is meant.
//! All ids are UUIDv7, so they sort by creation time and make good pagination keys.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// A tenant: the account that owns apps and databases.
    TenantId
);
typed_id!(
    /// A person or service account that authenticates with API tokens.
    UserId
);
typed_id!(
    /// A long-lived API token.
    TokenId
);
typed_id!(
    /// An application of a tenant; databases are attached to apps as addons.
    AppId
);
typed_id!(
    /// An app's subscription to a plan: what billing sees.
    AddonId
);
typed_id!(
    /// One period of an addon on one plan.
    AddonPeriodId
);
typed_id!(
    /// A managed PostgreSQL database.
    DatabaseId
);
typed_id!(
    /// A long-running change to a database (create, change plan, delete).
    OperationId
);
typed_id!(
    /// A backup of a database.
    BackupId
);
typed_id!(
    /// A unit of work in the job queue.
    JobId
);
typed_id!(
    /// One claim of a job: completing or failing it needs the lease that claimed it.
    LeaseId
);
