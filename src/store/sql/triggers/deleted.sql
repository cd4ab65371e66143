-- A deleted key leaves every cache.
CREATE TRIGGER agentkey_deleted AFTER DELETE ON {{table}} FOR EACH ROW
EXECUTE FUNCTION {{schema}}agentkey_notify_change('{{channel}}');
