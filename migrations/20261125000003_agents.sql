-- Node agents, where each database's members and gateways run, and the ports they hold.

CREATE TABLE agents (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    -- The address other hosts and clients use to reach services on this agent's host.
    host            text NOT NULL,
    credential_hash bytea NOT NULL UNIQUE,
    memory_mb       bigint NOT NULL CHECK (memory_mb > 0),
    disk_gb         bigint NOT NULL CHECK (disk_gb > 0),
    port_min        integer NOT NULL,
    port_max        integer NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    observed        jsonb NOT NULL DEFAULT '{}',
    CHECK (port_min > 1024 AND port_max <= 65535 AND port_min < port_max)
);

-- Ports are unique per host address: several agents may share one address (pgplane up).
CREATE TABLE port_allocations (
    host        text NOT NULL,
    port        integer NOT NULL,
    database_id uuid NOT NULL REFERENCES databases (id),
    purpose     text NOT NULL,
    PRIMARY KEY (host, port)
);
CREATE INDEX port_allocations_database ON port_allocations (database_id);

CREATE TABLE database_members (
    database_id  uuid NOT NULL REFERENCES databases (id),
    name         text NOT NULL,
    agent_id     uuid NOT NULL REFERENCES agents (id),
    host         text NOT NULL,
    pg_port      integer NOT NULL,
    patroni_port integer NOT NULL,
    memory_mb    integer NOT NULL,
    disk_gb      integer NOT NULL,
    role         text NOT NULL DEFAULT 'unknown',
    state        text NOT NULL DEFAULT 'provisioning',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (database_id, name),
    UNIQUE (database_id, agent_id)
);
CREATE INDEX database_members_agent ON database_members (agent_id);

CREATE TABLE database_gateways (
    database_id uuid NOT NULL REFERENCES databases (id),
    name        text NOT NULL,
    agent_id    uuid NOT NULL REFERENCES agents (id),
    host        text NOT NULL,
    port        integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (database_id, name)
);

-- Generated credentials and the database's CA. Never shown to tenants except the CA
-- certificate and the tenant user's own password.
CREATE TABLE database_secrets (
    database_id uuid PRIMARY KEY REFERENCES databases (id),
    secrets     jsonb NOT NULL,
    ca_cert_pem text NOT NULL,
    ca_key_pem  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
