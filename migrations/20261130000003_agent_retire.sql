-- Operators retire a lost agent: it is never placed on again, its credential stops working,
-- and a host that comes back under the same name registers as a new agent (the name is unique
-- among agents not retired). Members of a forcibly retired agent are marked `lost`.
ALTER TABLE agents ADD COLUMN retired_at timestamptz;
ALTER TABLE agents DROP CONSTRAINT agents_name_key;
CREATE UNIQUE INDEX agents_name_key ON agents (name) WHERE retired_at IS NULL;

-- An operator's retry puts a dead job back with its attempts counted from zero; the attempts
-- of earlier rounds stay, renumbered -1, -2, … in the order they started.
COMMENT ON COLUMN job_attempts.attempt IS
    'the job''s attempt number (1, 2, …); negative for attempts before an operator''s retry';
