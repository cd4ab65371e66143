-- The event log refuses updates and deletes.
CREATE TRIGGER agentkey_events_append_only BEFORE UPDATE OR DELETE ON {{events}}
FOR EACH ROW EXECUTE FUNCTION {{schema}}agentkey_append_only();
