-- The control plane's view from the source of truth: the scheduler reads each database's leader
-- key from etcd (the holder it last saw, kept while the key is briefly absent so that a leader
-- that keeps the key is never a change), and judges each replica from etcd's member keys and the
-- leader's WAL senders as its agent reports them.
ALTER TABLE databases
    ADD COLUMN dcs_leader     text,
    -- Whether the leader key existed at the last read (no holder while a race for it is on).
    ADD COLUMN dcs_leader_held boolean NOT NULL DEFAULT false,
    ADD COLUMN dcs_read_at    timestamptz;

ALTER TABLE database_members
    -- What the leader's agent reports: the members the leader's WAL senders are streaming to.
    ADD COLUMN streaming_replicas text[] NOT NULL DEFAULT '{}',
    -- `diverged` or `not_streaming` (null when healthy), since when, and when a re-clone was
    -- asked for this detection (once per detection).
    ADD COLUMN health          text,
    ADD COLUMN unhealthy_since timestamptz,
    ADD COLUMN reinit_at       timestamptz;
