-- The ledger refuses updates and deletes.
CREATE TRIGGER agentkey_append_only BEFORE UPDATE OR DELETE ON {{ledger}}
FOR EACH ROW EXECUTE FUNCTION {{schema}}agentkey_append_only();
