-- <table>_hold_expired: the trigger (triggers/hold_expired.sql) that writes a 'hold.expired'
-- event to the outbox when a hold ends unsettled, whoever marks it so (the spend function
-- on its way, or sweepExpiredHolds()), in the same transaction. Amounts are micro-dollars as text.
CREATE OR REPLACE FUNCTION {{hold_expired}}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  INSERT INTO {{outbox}} (type, account_id, key_id, data)
    VALUES ('hold.expired', COALESCE(NEW.account_id, ''), NEW.key_id,
            jsonb_build_object('hold_id', NEW.id, 'key_id', NEW.key_id, 'account_id', COALESCE(NEW.account_id, ''),
                               'amount_micros', NEW.amount_micros::text, 'expires_at', NEW.expires_at));
  RETURN NULL;
END $fn$;
