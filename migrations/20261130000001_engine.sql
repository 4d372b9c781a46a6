-- The workflow engine: every agent job of an operation has a time allowed to run. Its deadline
-- is that long after it was claimed (a job queued behind another on a busy agent does not use
-- up its time), and an hour more than that after it was enqueued while nobody claims it. A job
-- still queued or running past its deadline ends its operation in `error` (the scheduler's
-- sweep), so no operation hangs on a step that never reports.
ALTER TABLE jobs ADD COLUMN time_allowed_ms bigint CHECK (time_allowed_ms > 0);
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE status IN ('queued', 'running') AND deadline_at IS NOT NULL;
