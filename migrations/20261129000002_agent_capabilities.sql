-- What each agent's host can do, from the checks it ran when it registered (pgplane doctor's
-- checks): PostgreSQL versions it can run, Patroni reaching etcd over https, HAProxy checking
-- over TLS, pgBackRest. NULL for agents older than these checks (treated as able).
ALTER TABLE agents ADD COLUMN capabilities jsonb;
