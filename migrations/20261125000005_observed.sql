-- What agents observe of each member (Patroni's view), refreshed by their heartbeats.
ALTER TABLE database_members
    ADD COLUMN timeline    bigint,
    ADD COLUMN lag_bytes   bigint,
    ADD COLUMN observed_at timestamptz;
