-- The workflow engine: every job of an operation has a deadline. A job still queued or running
-- past it ends its operation in `error` (the scheduler's sweep), so no operation hangs on a
-- lost host or a step that never reports.
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE status IN ('queued', 'running') AND deadline_at IS NOT NULL;
