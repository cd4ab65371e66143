-- A key made, or a field users set changed (not spend, not last use): its event.
CREATE TRIGGER agentkey_key_event AFTER INSERT OR UPDATE OF key_hash, name, scopes, budget_micros, budget_cents, budget_period, expires_at, revoked_at, delegated_by, user_id, account_id, key_metadata ON {{table}}
FOR EACH ROW EXECUTE FUNCTION {{key_event}}();
