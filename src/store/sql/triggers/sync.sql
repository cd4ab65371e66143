-- SQL that edits the package's budget columns (not agentkey's own statements, which write the
-- exact columns in the same statement) is carried over by {{sync}}.
CREATE TRIGGER agentkey_sync BEFORE UPDATE OF budget_cents, budget_used_cents, budget_period, budget_reset_at ON {{table}} FOR EACH ROW
WHEN ((NEW.budget_cents IS DISTINCT FROM OLD.budget_cents AND NEW.budget_micros IS NOT DISTINCT FROM OLD.budget_micros)
   OR (NEW.budget_used_cents IS DISTINCT FROM OLD.budget_used_cents AND NEW.spent_micros IS NOT DISTINCT FROM OLD.spent_micros)
   OR (NEW.budget_period IS DISTINCT FROM OLD.budget_period AND NEW.budget_anchor_at IS NOT DISTINCT FROM OLD.budget_anchor_at)
   OR (NEW.budget_reset_at IS DISTINCT FROM OLD.budget_reset_at AND NEW.budget_period IS NOT NULL
       AND NEW.budget_reset_at > now()
       AND NEW.budget_reset_at IS DISTINCT FROM
           {{schema}}agentkey_next_reset(NEW.budget_period, COALESCE(NEW.budget_anchor_at, NEW.created_at), NEW.budget_reset_at - interval '1 microsecond')))
EXECUTE FUNCTION {{sync}}();
