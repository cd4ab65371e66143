-- An account's rate or concurrency limit set, changed or removed concerns every key of the account.
CREATE TRIGGER agentkey_account_limits_changed AFTER INSERT OR DELETE OR UPDATE OF rate_limit_requests, rate_limit_per_s, concurrency_limit ON {{account_limits}}
FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}agentkey_notify_all('{{channel}}');
