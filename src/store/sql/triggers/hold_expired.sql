-- A hold that ends unsettled writes its event (a commit or release fires nothing).
CREATE TRIGGER agentkey_hold_expired AFTER UPDATE OF status ON {{holds}} FOR EACH ROW
WHEN (OLD.status = 'held' AND NEW.status = 'expired')
EXECUTE FUNCTION {{hold_expired}}();
