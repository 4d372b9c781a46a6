-- Tenant-set PostgreSQL parameters and synchronous replication, switchover and configure
-- operations, and the events (failover, switchover, …) a database's history shows.
ALTER TABLE databases
    ADD COLUMN parameters jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN synchronous_replication boolean NOT NULL DEFAULT false;

ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create', 'change_plan', 'delete', 'restart', 'configure', 'switchover'));

CREATE TABLE database_events (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    database_id uuid NOT NULL REFERENCES databases (id),
    kind        text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX database_events_database ON database_events (database_id, id);
