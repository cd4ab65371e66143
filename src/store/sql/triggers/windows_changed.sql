-- A window set, changed or removed changes what keys under it may spend: every cache drops
-- what it holds (rare: an operator's act). Spending moves only counters, which fire nothing.
CREATE TRIGGER agentkey_windows_changed AFTER INSERT OR DELETE OR UPDATE OF budget_micros, period ON {{windows}}
FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}agentkey_notify_all('{{channel}}');
