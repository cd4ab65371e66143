-- <table>_ceiling_event: the trigger (triggers/ceiling_event.sql) that writes 'budget_set'
-- when an account's ceiling is set, changed or removed, with the before and after of its
-- budget (micro-dollars as text) and period. Spending never fires it.
CREATE OR REPLACE FUNCTION {{ceiling_event}}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE v_old JSONB := '{}'; v_new JSONB := '{}'; v_changes JSONB; a RECORD;
BEGIN
  IF TG_OP <> 'INSERT' THEN v_old := jsonb_build_object('budget_micros', OLD.budget_micros::text, 'budget_period', OLD.budget_period); END IF;
  IF TG_OP <> 'DELETE' THEN v_new := jsonb_build_object('budget_micros', NEW.budget_micros::text, 'budget_period', NEW.budget_period); END IF;
  SELECT COALESCE(jsonb_object_agg(f, jsonb_build_object('before', COALESCE(v_old -> f, 'null'), 'after', COALESCE(v_new -> f, 'null'))), '{}')
    INTO v_changes FROM unnest(ARRAY['budget_micros', 'budget_period']) f
    WHERE v_old -> f IS DISTINCT FROM v_new -> f;
  IF v_changes = '{}' THEN RETURN NULL; END IF;
  SELECT * INTO a FROM {{schema}}agentkey_event_actor();
  INSERT INTO {{events}} (key_id, account_id, kind, actor, actor_key_id, changes)
    VALUES (NULL, CASE WHEN TG_OP = 'DELETE' THEN OLD.account_id ELSE NEW.account_id END, 'budget_set', a.actor, a.actor_key_id, v_changes);
  RETURN NULL;
END $fn$;
