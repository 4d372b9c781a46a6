-- Logical backups as objects (issue 11). The foundation's `backups` table was never used: it is
-- replaced by one shaped after what a tenant sees (method, status with a reason, the member it
-- was taken on, the PostgreSQL version, size, SHA-256), what the platform needs (the object's key
-- in backup storage, the row counts recorded in the dump's snapshot, the operation that made it)
-- and what verified restores record (`verified_at`, the result and its reason).
DROP TABLE backups;

CREATE TABLE backups (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    database_id         uuid NOT NULL REFERENCES databases (id),
    method              text NOT NULL CHECK (method IN ('manual', 'scheduled')),
    status              text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'error')),
    -- Why it failed, as the tenant reads it (host detail stays in the jobs and the logs).
    error               text,
    -- The operation (kind `backup`) that takes it.
    operation_id        uuid REFERENCES operations (id),
    -- The member it was taken on, and whether that member was a standby then.
    member              text,
    from_standby        boolean,
    -- `server_version` of the server dumped, e.g. `15.14 (Debian 15.14-0+deb12u1)`.
    postgres_version    text,
    -- The object in backup storage (a location, never a credential).
    object_key          text NOT NULL,
    size_bytes          bigint CHECK (size_bytes >= 0),
    sha256              text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- Rows per table and large objects, read in the dump's own snapshot (pgdump::RowCounts).
    row_counts          jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    -- Verified restores: when the last one ran, how it ended and, when it failed, why.
    verified_at         timestamptz,
    verification        text CHECK (verification IN ('passed', 'failed')),
    verification_detail text,
    -- Deletion asked (by the tenant, or an eviction or retention): the backup is gone for the
    -- tenant and the quota at once; its object is deleted, then its row.
    deleted_at          timestamptz,
    CONSTRAINT backups_done_has_object CHECK (status <> 'done' OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL))
);
CREATE INDEX backups_database ON backups (database_id, id);
CREATE INDEX backups_operation ON backups (operation_id);

ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create', 'change_plan', 'delete', 'restart', 'configure', 'switchover', 'update_settings',
                    'backup', 'restore'));
