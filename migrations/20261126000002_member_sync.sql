-- Which replica Patroni lists as its synchronous standby (synchronous replication on), as its
-- agent last observed it.
ALTER TABLE database_members
    ADD COLUMN synchronous boolean NOT NULL DEFAULT false;
