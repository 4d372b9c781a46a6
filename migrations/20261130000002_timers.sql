-- Durable timers: what a clock starts (retention sweeps, daily backups, metering). A timer is
-- due when next_fire_at has passed; a scheduler that finds it due (FOR UPDATE SKIP LOCKED)
-- enqueues its job and moves next_fire_at past now in one transaction, so each due time fires
-- exactly once however many schedulers run, and a scheduler that was down fires a missed timer
-- once when it comes back.
CREATE TABLE timers (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    kind          text NOT NULL CHECK (kind IN ('daily', 'weekly', 'once', 'every')),
    -- core's `timer::Schedule`, tagged by kind.
    schedule      jsonb NOT NULL,
    database_id   uuid REFERENCES databases (id),
    job_queue     text NOT NULL,
    job_kind      text NOT NULL,
    job_payload   jsonb NOT NULL DEFAULT '{}',
    -- NULL once a `once` timer fired.
    next_fire_at  timestamptz,
    last_fired_at timestamptz,
    last_job_id   uuid REFERENCES jobs (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (schedule->>'kind' = kind)
);
CREATE INDEX timers_due ON timers (next_fire_at) WHERE next_fire_at IS NOT NULL;
CREATE INDEX timers_database ON timers (database_id) WHERE database_id IS NOT NULL;
-- The retention sweep deletes finished jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status IN ('done', 'dead');
