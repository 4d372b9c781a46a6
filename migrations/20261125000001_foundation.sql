-- Control-plane schema: accounts, catalog, apps, addons (billing), databases, operations, backups.
-- Enumerations are text with CHECK constraints so that adding a value is a small migration.

CREATE TABLE plans (
    id                          text PRIMARY KEY,
    position                    integer NOT NULL UNIQUE,
    name                        text NOT NULL,
    tier                        text NOT NULL CHECK (tier IN ('sandbox', 'starter', 'business')),
    description                 text NOT NULL,
    data_nodes                  integer NOT NULL CHECK (data_nodes BETWEEN 1 AND 5),
    gateways                    integer NOT NULL CHECK (gateways BETWEEN 1 AND 5),
    memory_mb                   integer NOT NULL CHECK (memory_mb > 0),
    disk_gb                     integer NOT NULL CHECK (disk_gb > 0),
    max_connections             integer NOT NULL CHECK (max_connections > 0),
    backup_quota_total          integer NOT NULL CHECK (backup_quota_total >= 0),
    backup_quota_per_day        integer NOT NULL CHECK (backup_quota_per_day >= 0),
    daily_backup_retention_days integer NOT NULL CHECK (daily_backup_retention_days >= 0),
    pitr                        boolean NOT NULL,
    pitr_window_days            integer NOT NULL CHECK (pitr_window_days >= 0),
    sla_percent                 numeric(6, 3),
    price_micros_per_hour       bigint NOT NULL CHECK (price_micros_per_hour >= 0),
    currency                    text NOT NULL DEFAULT 'EUR',
    public                      boolean NOT NULL DEFAULT true,
    available                   boolean NOT NULL DEFAULT true,
    CHECK (pitr OR pitr_window_days = 0)
);

INSERT INTO plans (id, position, name, tier, description, data_nodes, gateways, memory_mb, disk_gb,
                   max_connections, backup_quota_total, backup_quota_per_day,
                   daily_backup_retention_days, pitr, pitr_window_days, sla_percent,
                   price_micros_per_hour, public)
VALUES
  ('sandbox',     10, 'Sandbox',      'sandbox',  'For development: one small node, on-demand backups, no SLA.',
      1, 1,   256,    1,  20,  2, 1,  0, false,  0, NULL,        0, true),
  ('starter-512', 20, 'Starter 512',  'starter',  'One node with daily backups and 7 days of point-in-time recovery.',
      1, 1,   512,   10,  50,  5, 2,  7, true,   7, 99.5,    13700, true),
  ('starter-1',   21, 'Starter 1G',   'starter',  'One node with daily backups and 7 days of point-in-time recovery.',
      1, 1,  1024,   20, 100,  5, 2,  7, true,   7, 99.5,    27400, true),
  ('starter-2',   22, 'Starter 2G',   'starter',  'One node with daily backups and 7 days of point-in-time recovery.',
      1, 1,  2048,   40, 200, 10, 3,  7, true,   7, 99.5,    54800, true),
  ('starter-4',   23, 'Starter 4G',   'starter',  'One node with daily backups and 7 days of point-in-time recovery.',
      1, 1,  4096,   80, 300, 10, 3,  7, true,   7, 99.5,   109600, true),
  ('business-1',  30, 'Business 1G',  'business', 'Leader and follower on two hosts, two gateways, automatic failover, 30 days of point-in-time recovery.',
      2, 2,  1024,   20, 100, 10, 4, 30, true,  30, 99.95,   68500, true),
  ('business-2',  31, 'Business 2G',  'business', 'Leader and follower on two hosts, two gateways, automatic failover, 30 days of point-in-time recovery.',
      2, 2,  2048,   40, 200, 10, 4, 30, true,  30, 99.95,  137000, true),
  ('business-4',  32, 'Business 4G',  'business', 'Leader and follower on two hosts, two gateways, automatic failover, 30 days of point-in-time recovery.',
      2, 2,  4096,   80, 400, 20, 6, 30, true,  30, 99.95,  274000, true),
  ('business-8',  33, 'Business 8G',  'business', 'Leader and follower on two hosts, two gateways, automatic failover, 30 days of point-in-time recovery.',
      2, 2,  8192,  160, 600, 20, 6, 30, true,  30, 99.95,  548000, true),
  ('business-16', 34, 'Business 16G', 'business', 'Sold on request: leader and follower, two gateways, automatic failover, 30 days of point-in-time recovery.',
      2, 2, 16384,  320, 800, 30, 8, 30, true,  30, 99.95, 1096000, false);

CREATE TABLE postgres_versions (
    version    text PRIMARY KEY,
    is_default boolean NOT NULL DEFAULT false,
    available  boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX postgres_versions_one_default ON postgres_versions (is_default) WHERE is_default;
INSERT INTO postgres_versions (version, is_default) VALUES ('15', true);

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    name          text NOT NULL,
    platform_role text CHECK (platform_role IN ('operator', 'billing')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    prefix       text NOT NULL,
    secret_hash  bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, id);

CREATE TABLE tenants (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE memberships (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'read_only')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- Plans that are not public can be used by the tenants an operator granted them to.
CREATE TABLE tenant_plan_grants (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    plan_id    text NOT NULL REFERENCES plans (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, plan_id)
);

CREATE TABLE apps (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE UNIQUE INDEX apps_tenant_name_key ON apps (tenant_id, name) WHERE deleted_at IS NULL;
CREATE INDEX apps_tenant ON apps (tenant_id, id);

-- An addon is what billing sees: an app subscribed to a plan; every plan period is kept.
CREATE TABLE addons (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    app_id     uuid NOT NULL REFERENCES apps (id),
    kind       text NOT NULL DEFAULT 'postgresql' CHECK (kind IN ('postgresql')),
    plan_id    text NOT NULL REFERENCES plans (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz
);
CREATE INDEX addons_app ON addons (app_id, id);

CREATE TABLE addon_periods (
    id                    uuid PRIMARY KEY,
    addon_id              uuid NOT NULL REFERENCES addons (id),
    plan_id               text NOT NULL REFERENCES plans (id),
    -- The price in force when the period started: catalog changes never rewrite history.
    price_micros_per_hour bigint NOT NULL,
    currency              text NOT NULL,
    started_at            timestamptz NOT NULL,
    ended_at              timestamptz,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE UNIQUE INDEX addon_periods_one_open ON addon_periods (addon_id) WHERE ended_at IS NULL;
CREATE INDEX addon_periods_addon ON addon_periods (addon_id, started_at);
CREATE INDEX addon_periods_billing ON addon_periods (id);

CREATE TABLE databases (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    app_id            uuid NOT NULL REFERENCES apps (id),
    addon_id          uuid NOT NULL UNIQUE REFERENCES addons (id),
    name              text NOT NULL,
    plan_id           text NOT NULL REFERENCES plans (id),
    version           text NOT NULL REFERENCES postgres_versions (version),
    status            text NOT NULL CHECK (status IN ('creating', 'available', 'changing_plan', 'deleting', 'deleted', 'error')),
    force_tls         boolean NOT NULL DEFAULT false,
    internet_exposure boolean NOT NULL DEFAULT false,
    backup_hour       integer CHECK (backup_hour BETWEEN 0 AND 23),
    endpoint_host     text,
    endpoint_port     integer,
    -- Fencing token: bumped by every change of desired state; agents refuse older jobs.
    generation        bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    CONSTRAINT databases_exposure_needs_tls CHECK (NOT internet_exposure OR force_tls)
);
CREATE UNIQUE INDEX databases_tenant_name_key ON databases (tenant_id, name) WHERE status <> 'deleted';
CREATE INDEX databases_app ON databases (app_id, id);

CREATE TABLE operations (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    database_id  uuid NOT NULL REFERENCES databases (id),
    kind         text NOT NULL CHECK (kind IN ('create', 'change_plan', 'delete')),
    status       text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'error', 'canceled')),
    progress     integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    step         text,
    error        text,
    params       jsonb NOT NULL DEFAULT '{}',
    requested_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
-- One operation in flight per database.
CREATE UNIQUE INDEX operations_one_active ON operations (database_id) WHERE status IN ('pending', 'running');
CREATE INDEX operations_database ON operations (database_id, id);

CREATE TABLE backups (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    database_id uuid NOT NULL REFERENCES databases (id),
    kind        text NOT NULL CHECK (kind IN ('logical', 'pitr_full')),
    trigger     text NOT NULL CHECK (trigger IN ('scheduled', 'on_demand')),
    status      text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'error', 'expired')),
    size_bytes  bigint,
    location    text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    expires_at  timestamptz
);
CREATE INDEX backups_database ON backups (database_id, id);

-- Replays of POST requests that carried an Idempotency-Key (kept 24 hours).
CREATE TABLE idempotency_keys (
    user_id       uuid NOT NULL,
    key           text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    request_hash  bytea NOT NULL,
    status_code   integer,
    content_type  text,
    location      text,
    response_body bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
