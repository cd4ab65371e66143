-- A row inserted by SQL with only the package's columns (or bad values) goes through {{sync}}.
CREATE TRIGGER agentkey_sync_insert BEFORE INSERT ON {{table}} FOR EACH ROW
WHEN ((NEW.budget_micros IS NULL AND NEW.budget_cents IS NOT NULL)
   OR (NEW.spent_micros = 0 AND COALESCE(NEW.budget_used_cents, 0) <> 0)
   OR (NEW.budget_period IS NOT NULL AND (NEW.budget_anchor_at IS NULL OR NEW.budget_reset_at IS NULL))
   OR NEW.budget_cents < 0 OR NEW.budget_used_cents < 0 OR NEW.budget_period NOT IN ('day', 'month'))
EXECUTE FUNCTION {{sync}}();
