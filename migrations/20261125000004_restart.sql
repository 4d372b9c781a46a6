-- Restart (rolling, one member at a time) joins the operations a tenant can ask for.
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create', 'change_plan', 'delete', 'restart'));
