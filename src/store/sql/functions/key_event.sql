-- <table>_key_event: the trigger (triggers/key_event.sql) that writes a key's event when it
-- is made, or when a field users set changes, by agentkey or by SQL: 'revoked' when it is
-- revoked, 'rotated' when its secret changes, else 'updated', with the before and after of
-- each changed field ('created': the after of each field set). Spending never fires it:
-- the trigger names only these columns. Budgets are micro-dollars as text (exact).
CREATE OR REPLACE FUNCTION {{key_event}}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  v_new JSONB; v_old JSONB; v_changes JSONB; v_kind TEXT; a RECORD;
BEGIN
  v_new := jsonb_build_object('name', NEW.name, 'scopes', to_jsonb(NEW.scopes), 'budget_micros', NEW.budget_micros::text,
    'budget_period', NEW.budget_period, 'expires_at', NEW.expires_at, 'delegated_by', NEW.delegated_by,
    'user_id', NEW.user_id, 'account_id', NEW.account_id::text, 'revoked_at', NEW.revoked_at, 'key_metadata', NEW.key_metadata);
  IF TG_OP = 'INSERT' THEN
    v_kind := 'created';
    SELECT COALESCE(jsonb_object_agg(e.key, jsonb_build_object('after', e.value)), '{}') INTO v_changes
      FROM jsonb_each(v_new) e WHERE e.value <> 'null' AND e.key NOT IN ('account_id', 'revoked_at');
    IF NEW.parent_id IS NOT NULL THEN v_changes := v_changes || jsonb_build_object('parent_id', jsonb_build_object('after', NEW.parent_id)); END IF;
  ELSE
    v_old := jsonb_build_object('name', OLD.name, 'scopes', to_jsonb(OLD.scopes), 'budget_micros', OLD.budget_micros::text,
      'budget_period', OLD.budget_period, 'expires_at', OLD.expires_at, 'delegated_by', OLD.delegated_by,
      'user_id', OLD.user_id, 'account_id', OLD.account_id::text, 'revoked_at', OLD.revoked_at, 'key_metadata', OLD.key_metadata);
    SELECT COALESCE(jsonb_object_agg(e.key, jsonb_build_object('before', v_old -> e.key, 'after', e.value)), '{}') INTO v_changes
      FROM jsonb_each(v_new) e WHERE v_old -> e.key IS DISTINCT FROM e.value;
    IF OLD.key_hash IS DISTINCT FROM NEW.key_hash THEN
      v_kind := 'rotated';
      -- Never the hashes: only until when the previous secret works.
      v_changes := v_changes || jsonb_build_object('previous_key_valid_until', jsonb_build_object('after',
        CASE WHEN NEW.previous_key_hash = OLD.key_hash THEN to_jsonb(NEW.previous_key_valid_until) ELSE 'null'::jsonb END));
    ELSIF v_changes = '{}' THEN
      RETURN NULL;
    END IF;
    IF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN v_kind := 'revoked';
    ELSIF v_kind IS NULL THEN v_kind := 'updated';
    END IF;
  END IF;
  SELECT * INTO a FROM {{schema}}agentkey_event_actor();
  INSERT INTO {{events}} (key_id, account_id, kind, actor, actor_key_id, changes)
    -- The package's table allows a key with no account: the log says ''.
    VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), v_kind, a.actor, a.actor_key_id, v_changes);
  -- A revocation is also an event for webhooks and handlers (the outbox), in this transaction.
  IF v_kind = 'revoked' THEN
    INSERT INTO {{outbox}} (type, account_id, key_id, data)
      VALUES ('key.revoked', COALESCE(NEW.account_id::text, ''), NEW.id,
              jsonb_build_object('key_id', NEW.id, 'account_id', COALESCE(NEW.account_id::text, ''), 'revoked_at', NEW.revoked_at,
                                 'actor', a.actor, 'actor_key_id', a.actor_key_id));
  END IF;
  RETURN NULL;
END $fn$;
