-- The outbox refuses updates and deletes: what was emitted stays as it was.
CREATE TRIGGER agentkey_outbox_append_only BEFORE UPDATE OR DELETE ON {{outbox}}
FOR EACH ROW EXECUTE FUNCTION {{schema}}agentkey_append_only();
