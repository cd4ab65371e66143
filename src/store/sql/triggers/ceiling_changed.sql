-- A ceiling set, changed or removed changes what every key of the account may spend.
CREATE TRIGGER agentkey_ceiling_changed AFTER INSERT OR DELETE OR UPDATE OF budget_micros, budget_period ON {{accounts}}
FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}agentkey_notify_all('{{channel}}');
