//! The resources the public API shows and accepts. Stored as rows by `pgplane-store`,
//! serialized as JSON by `pgplane-api`, documented by utoipa.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::*;
use crate::page_of;

/// A string-valued enum stored as `text` and sent as snake_case JSON.
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$variant),)+ other => Err(format!("unknown {} {other:?}", stringify!($name))) }
            }
        }
    };
}

string_enum!(
    /// A user's role inside one tenant. Each role can do what the ones below it can.
    TenantRole {
        /// Everything, including deleting the tenant and managing owners.
        Owner = "owner",
        /// Manages members (except owners), apps and databases.
        Admin = "admin",
        /// Manages apps and databases.
        Member = "member",
        /// Reads everything, changes nothing.
        ReadOnly = "read_only",
    }
);

impl TenantRole {
    fn rank(&self) -> u8 {
        match self {
            TenantRole::ReadOnly => 0,
            TenantRole::Member => 1,
            TenantRole::Admin => 2,
            TenantRole::Owner => 3,
        }
    }
    /// True when this role grants at least what `other` grants.
    pub fn at_least(&self, other: TenantRole) -> bool {
        self.rank() >= other.rank()
    }
}

string_enum!(
    /// Roles of the platform's own staff and services, outside any tenant.
    PlatformRole {
        /// Runs the platform: manages users, sees every tenant, sees dead jobs.
        Operator = "operator",
        /// The billing service: reads addon periods of every tenant, nothing else.
        Billing = "billing",
    }
);

string_enum!(
    /// Plan families.
    PlanTier {
        /// Development, no SLA.
        Sandbox = "sandbox",
        /// One node, daily backups.
        Starter = "starter",
        /// Leader + follower, two gateways, automatic failover.
        Business = "business",
    }
);

/// An hourly price in millionths of the currency unit (no floating point money).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Price {
    /// Millionths of the currency unit per hour: 13_700 is 0.0137 per hour.
    pub amount_micros: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// A plan of the catalog. Plans are data, seeded by a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Stable plan identifier, e.g. `starter-2`.
    pub id: String,
    pub name: String,
    pub tier: PlanTier,
    pub description: String,
    /// PostgreSQL members (1, or 2 for leader + follower).
    pub data_nodes: i32,
    /// HAProxy gateways in front of the members.
    pub gateways: i32,
    pub memory_mb: i32,
    pub disk_gb: i32,
    pub max_connections: i32,
    /// On-demand backups kept at once.
    pub backup_quota_total: i32,
    /// On-demand backups allowed per day.
    pub backup_quota_per_day: i32,
    /// Days daily backups are kept (0: no daily backups).
    pub daily_backup_retention_days: i32,
    /// ISO weeks whose newest daily backup is kept beyond the daily retention.
    pub backup_retention_weeks: i32,
    /// Months whose newest daily backup is kept beyond the weekly retention.
    pub backup_retention_months: i32,
    /// Point-in-time recovery.
    pub pitr: bool,
    /// How far back point-in-time recovery reaches, in days (0 without PITR).
    pub pitr_window_days: i32,
    /// Monthly availability promise in percent; absent means no SLA.
    pub sla_percent: Option<String>,
    pub price_per_hour: Price,
    /// Orderable by every tenant; other plans need an operator's grant.
    pub public: bool,
    /// False for retired plans: existing databases keep them, new ones cannot use them.
    pub available: bool,
}
page_of!(PlanPage, Plan);

/// A PostgreSQL major version databases can be created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostgresVersion {
    /// Major version, e.g. `15`.
    pub version: String,
    /// Used when a create request names no version.
    pub default: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub items: Vec<PostgresVersion>,
}

/// A person or service account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    /// Set for the platform's operators and billing service.
    pub platform_role: Option<PlatformRole>,
    pub created_at: DateTime<Utc>,
}
page_of!(UserPage, User);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(schema_with = crate::validate::email_schema)]
    pub email: String,
    #[schema(schema_with = crate::validate::display_name_schema)]
    pub name: String,
    #[serde(default)]
    pub platform_role: Option<PlatformRole>,
}

/// The caller and the tenants they belong to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub memberships: Vec<Membership>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub role: TenantRole,
}

/// A long-lived API token. Its secret is shown once, at creation, and stored only as a hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: TokenId,
    pub user_id: UserId,
    pub name: String,
    /// The first characters of the secret, to recognize it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}
page_of!(ApiTokenPage, ApiToken);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    #[schema(schema_with = crate::validate::display_name_schema)]
    pub name: String,
    /// Days until the token expires, 1 to 3650; absent means it never expires.
    #[serde(default, deserialize_with = "crate::validate::integer")]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// The answer to a token creation: the only time the secret is shown.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiToken {
    pub token: ApiToken,
    /// The secret. Store it now: it cannot be shown again.
    pub secret: String,
}

crate::redacted_debug!(CreatedApiToken { token } secret { secret });

/// Exchange of a long-lived API token for a short-lived access token (JWT).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    pub api_token: String,
}

crate::redacted_debug!(TokenExchange {  } secret { api_token });

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessToken {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: i64,
    pub expires_at: DateTime<Utc>,
}

crate::redacted_debug!(AccessToken { token_type, expires_in, expires_at } secret { access_token });

/// A tenant (account).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}
page_of!(TenantPage, Tenant);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(schema_with = crate::validate::display_name_schema)]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[schema(schema_with = crate::validate::display_name_schema)]
    pub name: String,
}

/// A user's membership in a tenant, seen from the tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: TenantRole,
    pub created_at: DateTime<Utc>,
}
page_of!(MemberPage, Member);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Email of an existing user.
    #[schema(schema_with = crate::validate::email_schema)]
    pub email: String,
    pub role: TenantRole,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    pub role: TenantRole,
}

/// An application of a tenant; databases attach to apps.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: AppId,
    pub tenant_id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}
page_of!(AppPage, App);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    #[schema(schema_with = crate::validate::slug_name_schema)]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    #[schema(schema_with = crate::validate::slug_name_schema)]
    pub name: String,
}

string_enum!(
    /// Lifecycle of a database.
    DatabaseStatus {
        /// Accepted; provisioning has not finished.
        Creating = "creating",
        /// Running and reachable.
        Available = "available",
        /// A plan change is in progress.
        ChangingPlan = "changing_plan",
        /// Deletion requested or in progress.
        Deleting = "deleting",
        /// Gone.
        Deleted = "deleted",
        /// The last operation failed; see its error.
        Error = "error",
    }
);

/// Settings a tenant controls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatabaseSettings {
    /// Refuse connections without TLS.
    pub force_tls: bool,
    /// Reachable from the internet (requires `force_tls`).
    pub internet_exposure: bool,
    /// Preferred UTC hour (0–23) of the daily backup; absent lets the platform choose.
    #[schema(minimum = 0, maximum = 23)]
    pub backup_hour: Option<i32>,
    /// The networks (IPv4/IPv6 CIDRs, normalized) that may connect from the internet while it
    /// is exposed; empty admits every address. The gateways refuse other clients before they
    /// reach PostgreSQL.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
}

/// A partial change of settings; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDatabaseSettings {
    pub force_tls: Option<bool>,
    pub internet_exposure: Option<bool>,
    /// Preferred UTC hour (0–23) of the daily backup.
    #[serde(default, deserialize_with = "crate::validate::integer")]
    #[schema(minimum = 0, maximum = 23)]
    pub backup_hour: Option<i32>,
    /// Replaces the allowlist (at most 64 networks such as `203.0.113.0/24`, `2001:db8::/32`, or
    /// single addresses); `[]` admits every address.
    #[schema(max_items = 64)]
    pub allowed_cidrs: Option<Vec<String>>,
}

/// Where clients connect (the gateway), once provisioned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    pub host: String,
    pub port: i32,
}

/// A managed PostgreSQL database, attached to an app as an addon.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Database {
    pub id: DatabaseId,
    pub tenant_id: TenantId,
    pub app_id: AppId,
    pub addon_id: AddonId,
    pub name: String,
    /// Plan id, e.g. `starter-2`.
    pub plan: String,
    /// PostgreSQL major version.
    pub version: String,
    pub status: DatabaseStatus,
    pub settings: DatabaseSettings,
    /// Absent until the database is provisioned.
    pub endpoint: Option<Endpoint>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
page_of!(DatabasePage, Database);

/// Tenant-set PostgreSQL parameters and replication mode.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Configuration {
    /// Parameter → value, as PostgreSQL writes it (e.g. `"work_mem": "65536kB"`).
    #[schema(value_type = Object)]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// Commits wait for the follower (Business only): no acknowledged write is lost on failover.
    pub synchronous_replication: bool,
}

/// A change of configuration; absent fields stay, a parameter set to `null` returns to its default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfiguration {
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub synchronous_replication: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParameterList {
    pub items: Vec<crate::params::ParamDef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Switchover {
    /// The member to promote; the healthiest replica when absent.
    #[serde(default)]
    pub candidate: Option<String>,
}

/// Something that happened to a database: `failover`, `switchover`, …
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseEvent {
    pub id: uuid::Uuid,
    pub database_id: DatabaseId,
    pub kind: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}
page_of!(DatabaseEventPage, DatabaseEvent);

/// One PostgreSQL member of a database, as last observed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseMember {
    pub name: String,
    /// `leader`, `replica` or `unknown`: the leader is the member holding the database's leader
    /// key in etcd; `unknown` once the member's agent stopped reporting for 15 s.
    pub role: String,
    /// `provisioning` until first observed; then Patroni's state (`running`, `streaming`,
    /// `starting`, …); `diverged` for a replica whose history forked from the leader's,
    /// `not_streaming` for one whose replication broke (both are re-cloned); `unknown` once the
    /// member's agent stopped reporting.
    pub state: String,
    pub timeline: Option<i64>,
    /// Bytes of WAL behind the leader.
    pub lag_bytes: Option<i64>,
    /// The synchronous standby: with synchronous replication on, the replica that acknowledges
    /// each commit, and the one a failover promotes. Always `false` for the leader.
    pub synchronous: bool,
    /// When its agent last reported on it.
    pub observed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseMemberList {
    pub items: Vec<DatabaseMember>,
}

/// How to connect to a database, once provisioned. The URL embeds the tenant user's password.
/// Clients check the server against the database's own CA: save `ca_pem` (or
/// `GET /v1/databases/{id}/ca.pem`) to a file and add `&sslrootcert=<that file>` to the URL.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionInfo {
    /// `postgres://user:password@host:port/database?sslmode=verify-full`, for clients on the
    /// platform's private network; append `&sslrootcert=<file holding ca_pem>`.
    pub url: String,
    pub host: String,
    pub port: i32,
    pub user: String,
    pub password: String,
    pub database: String,
    /// `verify-full`: TLS, the server's certificate signed by the database's CA and naming the
    /// host connected to. libpq needs the CA as `sslrootcert` (else it reads `~/.postgresql/root.crt`).
    pub sslmode: String,
    /// The database's CA certificate (also at `/v1/databases/{id}/ca.pem`), for `sslrootcert`.
    pub ca_pem: String,
    /// While the database is exposed to the internet: the gateways' public address (same port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_host: Option<String>,
    /// While the database is exposed to the internet: the URL for clients outside the platform
    /// (checked against `allowed_cidrs`); append `&sslrootcert=<file holding ca_pem>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

crate::redacted_debug!(ConnectionInfo { host, port, user, database, sslmode, ca_pem, public_host } secret { url, password, public_url });

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDatabase {
    #[schema(schema_with = crate::validate::slug_name_schema)]
    pub name: String,
    /// Plan id from `GET /v1/plans`.
    pub plan: String,
    /// PostgreSQL major version from `GET /v1/versions`; the default when absent.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub settings: Option<UpdateDatabaseSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    pub plan: String,
}

string_enum!(
    /// What an operation does.
    OperationKind {
        Create = "create",
        ChangePlan = "change_plan",
        Delete = "delete",
        /// A rolling restart of the members, one at a time.
        Restart = "restart",
        /// Parameters or synchronous replication applied through Patroni.
        Configure = "configure",
        /// A planned change of leader.
        Switchover = "switchover",
        /// Settings applied to the running members and gateways (TLS, exposure, allowlist).
        UpdateSettings = "update_settings",
        /// A logical backup (`pg_dump -Fc`) into backup storage.
        Backup = "backup",
        /// A backup restored in place: the content replaced, the connection URL unchanged.
        Restore = "restore",
    }
);

string_enum!(
    /// pending → running → done | error; `canceled` when a deletion superseded it before it ran.
    OperationStatus {
        Pending = "pending",
        Running = "running",
        Done = "done",
        Error = "error",
        Canceled = "canceled",
    }
);

impl OperationStatus {
    pub fn is_finished(&self) -> bool {
        matches!(self, OperationStatus::Done | OperationStatus::Error | OperationStatus::Canceled)
    }
}

/// A long-running change to a database, carried out by the scheduler and the agents.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: OperationId,
    pub tenant_id: TenantId,
    pub database_id: DatabaseId,
    pub kind: OperationKind,
    pub status: OperationStatus,
    /// Percent done, 0 to 100.
    pub progress: i32,
    /// What it is doing now.
    pub step: Option<String>,
    /// Why it failed, when `status` is `error`.
    pub error: Option<String>,
    /// What was asked, e.g. `{"from_plan": "starter-1", "to_plan": "business-2"}`.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}
page_of!(OperationPage, Operation);

/// One stretch of time an addon spent on one plan: what billing charges.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddonPeriod {
    pub id: AddonPeriodId,
    pub plan: String,
    pub price_per_hour: Price,
    pub started_at: DateTime<Utc>,
    /// Absent while the period is running.
    pub ended_at: Option<DateTime<Utc>>,
}

/// An app's subscription to a database plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Addon {
    pub id: AddonId,
    pub tenant_id: TenantId,
    pub app_id: AppId,
    pub database_id: DatabaseId,
    /// Always `postgresql` for now.
    pub kind: String,
    /// The current (or last) plan.
    pub plan: String,
    pub created_at: DateTime<Utc>,
    /// Set once the addon is deleted.
    pub ended_at: Option<DateTime<Utc>>,
    /// Every plan period, oldest first.
    pub periods: Vec<AddonPeriod>,
}
page_of!(AddonPage, Addon);

/// An addon period with its owners, as the billing service reads it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BillingPeriod {
    pub id: AddonPeriodId,
    pub addon_id: AddonId,
    pub tenant_id: TenantId,
    pub app_id: AppId,
    pub database_id: DatabaseId,
    pub plan: String,
    pub price_per_hour: Price,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}
page_of!(BillingPeriodPage, BillingPeriod);

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

string_enum!(
    /// queued → running → done, or back to queued after a retryable failure or an expired
    /// lease; dead after a fatal failure or too many attempts.
    JobStatus {
        Queued = "queued",
        Running = "running",
        Done = "done",
        Dead = "dead",
    }
);

/// A job of the queue, as platform operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    /// `scheduler`, or `agent:<agent id>`.
    pub queue: String,
    pub kind: String,
    pub status: JobStatus,
    pub database_id: Option<DatabaseId>,
    pub operation_id: Option<OperationId>,
    pub generation: Option<i64>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}
page_of!(JobPage, Job);

/// A node agent as platform operators see it: where it runs, its capacity, when it was last
/// heard from, and what its host can do (the checks it ran when it started).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    #[schema(value_type = uuid::Uuid)]
    pub id: crate::agent::AgentId,
    pub name: String,
    /// The private address: other hosts and the platform's clients reach this host's services at it.
    pub host: String,
    /// The address gateways of databases exposed to the internet bind (`host` when not set).
    pub public_host: String,
    pub memory_mb: i64,
    pub disk_gb: i64,
    /// Memory and disk not yet taken by members placed on it.
    pub free_memory_mb: i64,
    pub free_disk_gb: i64,
    pub port_min: i32,
    pub port_max: i32,
    pub registered_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Heard from within the last 30 s and not retired: placement considers it.
    pub live: bool,
    /// When an operator retired it: never placed on again, its credential refused.
    pub retired_at: Option<DateTime<Utc>>,
    /// What the host can do; absent for agents older than these checks.
    pub capabilities: Option<crate::agent::Capabilities>,
}
page_of!(AgentPage, Agent);

/// What retiring an agent did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentRetirement {
    pub agent: Agent,
    /// Databases whose members or gateways were on it: its members are now `lost`, the ports
    /// they held released (empty unless forced).
    pub databases: Vec<DatabaseId>,
    /// Jobs of its queue that were waiting or running and died with the retirement.
    pub jobs_killed: i64,
}
