-- A ceiling set, changed or removed: its event.
CREATE TRIGGER agentkey_ceiling_event AFTER INSERT OR DELETE OR UPDATE OF budget_micros, budget_period ON {{accounts}}
FOR EACH ROW EXECUTE FUNCTION {{ceiling_event}}();
