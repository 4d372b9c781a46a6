-- Daily backups (issue 11): the tenant's choice to take them. They run only where the plan keeps
-- daily backups (plans.daily_backup_retention_days > 0); on a plan without, the choice is kept
-- as it was for when the database moves onto a plan with them (on by default).
ALTER TABLE databases ADD COLUMN daily_backups boolean NOT NULL DEFAULT true;

-- Verified restores: after each daily backup, an operation restores it into a scratch server.
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create', 'change_plan', 'delete', 'restart', 'configure', 'switchover', 'update_settings',
                    'backup', 'restore', 'verify_backup'));
