-- Settings that take effect: an `update_settings` operation applies them to the running
-- members and gateways; agents have a public address besides their private one, which a
-- database's gateways bind while it is exposed, admitting only its allowlist.
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create', 'change_plan', 'delete', 'restart', 'configure', 'switchover', 'update_settings'));

-- The networks (normalized CIDRs) that may connect from the internet; empty admits every address.
ALTER TABLE databases ADD COLUMN allowed_cidrs text[] NOT NULL DEFAULT '{}';

-- The address clients outside the platform reach this host at (the private `host` when absent).
ALTER TABLE agents ADD COLUMN public_host text;

-- The public address of the gateway's host, recorded when it is placed (`host` when absent).
ALTER TABLE database_gateways ADD COLUMN public_host text;
