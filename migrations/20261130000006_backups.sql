-- Backup retention tiers of the plans (issue 11): besides the newest scheduled backup of each of
-- the last `daily_backup_retention_days` days, the newest of each of the last
-- `backup_retention_weeks` ISO weeks and of the last `backup_retention_months` months is kept.
-- The quotas of manual backups (`backup_quota_total`, `backup_quota_per_day`) exist already.
ALTER TABLE plans
    ADD COLUMN backup_retention_weeks  integer NOT NULL DEFAULT 0 CHECK (backup_retention_weeks >= 0),
    ADD COLUMN backup_retention_months integer NOT NULL DEFAULT 0 CHECK (backup_retention_months >= 0);

-- Sandbox: no daily backups, so no tiers. Starter: a week of days, a month of weeks.
-- Business: a month of days, three months of weeks, a year of months.
UPDATE plans SET backup_retention_weeks = 4, backup_retention_months = 0 WHERE tier = 'starter';
UPDATE plans SET backup_retention_weeks = 12, backup_retention_months = 12 WHERE tier = 'business';
