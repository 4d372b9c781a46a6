-- The job queue: jobs live beside the state that needs them and are enqueued in the same
-- transaction. A claim is a lease (lease_id, lease_expires_at) that heartbeats extend; an
-- expired lease puts the job back. Every attempt is kept; dead jobs stay visible.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    -- Who runs it: 'scheduler' for workflow steps, 'agent:<agent id>' for an agent's work.
    queue            text NOT NULL,
    kind             text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    database_id      uuid REFERENCES databases (id),
    operation_id     uuid REFERENCES operations (id),
    -- The database's generation when enqueued: agents refuse jobs older than what they applied.
    generation       bigint,
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 10 CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_id         uuid,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    result           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CHECK ((status = 'running') = (lease_id IS NOT NULL))
);
CREATE INDEX jobs_ready ON jobs (queue, run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_dead ON jobs (id) WHERE status = 'dead';
CREATE INDEX jobs_operation ON jobs (operation_id);

CREATE TABLE job_attempts (
    job_id      uuid NOT NULL REFERENCES jobs (id),
    attempt     integer NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text CHECK (outcome IN ('succeeded', 'retryable', 'fatal', 'lease_expired')),
    error       text,
    PRIMARY KEY (job_id, attempt)
);

-- Wakes idle consumers the moment a job becomes runnable on their queue.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' AND NEW.run_at <= now() THEN
        PERFORM pg_notify('pgplane_jobs', NEW.queue);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF status, run_at ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_notify();
