-- Every statement that adds to the outbox is announced once on its own channel, so
-- deliverers and onEvent() handlers read the new rows at once (they poll as well).
CREATE TRIGGER agentkey_outbox_notify AFTER INSERT ON {{outbox}} FOR EACH STATEMENT
EXECUTE FUNCTION {{schema}}agentkey_notify_all('{{outbox_channel}}');
