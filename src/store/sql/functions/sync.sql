-- The @katrinalaszlo/agentkey package's columns are the user's: an INSERT or UPDATE by anyone but agentkey that writes
-- them is carried into agentkey's exact columns, announced to every process's cache, and,
-- for spend, recorded in the ledger. Agentkey's own statements write both sides at once,
-- so the triggers' WHEN clauses (triggers/sync.sql, triggers/sync_insert.sql) leave them alone.
CREATE OR REPLACE FUNCTION {{sync}}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE v_spent BIGINT; v_set_budget BOOLEAN; v_set_used BOOLEAN; v_set_period BOOLEAN; v_set_reset BOOLEAN;
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM {{schema}}agentkey_check_page_values(NEW.budget_period, NEW.budget_cents, NEW.budget_used_cents);
    -- A row written by SQL rather than by create(): its package columns say what it may spend.
    IF NEW.budget_micros IS NULL AND NEW.budget_cents IS NOT NULL THEN
      NEW.budget_micros := round(NEW.budget_cents::numeric * 10000)::bigint;
    END IF;
    IF NEW.spent_micros = 0 AND COALESCE(NEW.budget_used_cents, 0) <> 0 THEN
      NEW.spent_micros := round(NEW.budget_used_cents::numeric * 10000)::bigint;
      INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, metadata)
      VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), 'reset', NEW.spent_micros,
              jsonb_build_object('source', 'sql', 'reason', 'budget_used_cents written by SQL', 'to', NEW.budget_used_cents));
    END IF;
    IF NEW.budget_period IS NOT NULL THEN
      NEW.budget_anchor_at := COALESCE(NEW.budget_anchor_at, NEW.budget_reset_at, NEW.created_at, now());
      NEW.budget_reset_at := COALESCE(NEW.budget_reset_at, {{schema}}agentkey_next_reset(NEW.budget_period, NEW.budget_anchor_at, now()));
    END IF;
    RETURN NEW;
  END IF;
  -- What this statement itself wrote, decided before anything below changes NEW.
  v_set_budget := NEW.budget_cents IS DISTINCT FROM OLD.budget_cents AND NEW.budget_micros IS NOT DISTINCT FROM OLD.budget_micros;
  v_set_used := NEW.budget_used_cents IS DISTINCT FROM OLD.budget_used_cents AND NEW.spent_micros IS NOT DISTINCT FROM OLD.spent_micros;
  v_set_period := NEW.budget_period IS DISTINCT FROM OLD.budget_period AND NEW.budget_anchor_at IS NOT DISTINCT FROM OLD.budget_anchor_at;
  v_set_reset := NEW.budget_reset_at IS DISTINCT FROM OLD.budget_reset_at AND NEW.budget_reset_at IS NOT NULL;
  -- Only what this statement changed is checked: old rows may hold what the package allowed.
  PERFORM {{schema}}agentkey_check_page_values(
    CASE WHEN v_set_period THEN NEW.budget_period END,
    CASE WHEN v_set_budget THEN NEW.budget_cents END,
    CASE WHEN v_set_used THEN NEW.budget_used_cents END);
  IF v_set_budget THEN
    NEW.budget_micros := round(NEW.budget_cents::numeric * 10000)::bigint;
  END IF;
  v_spent := OLD.spent_micros;
  IF OLD.budget_period IS NOT NULL AND OLD.budget_reset_at <= now() AND NEW.spent_micros IS NOT DISTINCT FROM OLD.spent_micros THEN
    -- A period that ended before this edit ends first, as the next call would have ended
    -- it: its spend is not carried into whatever the edit makes.
    IF OLD.spent_micros <> 0 THEN
      INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros)
      VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), 'reset', -OLD.spent_micros);
    END IF;
    v_spent := 0;
    NEW.spent_micros := 0;
    IF NOT v_set_used THEN NEW.budget_used_cents := 0; END IF;
    IF NOT v_set_reset THEN
      NEW.budget_reset_at := {{schema}}agentkey_next_reset(OLD.budget_period, COALESCE(OLD.budget_anchor_at, OLD.created_at), now());
    END IF;
  END IF;
  IF v_set_used THEN
    -- This key's counter, set by hand: recorded like a period reset (the key alone; its
    -- ancestors and account keep what they spent), so audit() still reconciles.
    IF round(COALESCE(NEW.budget_used_cents, 0)::numeric * 10000)::bigint <> v_spent THEN
      INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, metadata)
      VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), 'reset', round(COALESCE(NEW.budget_used_cents, 0)::numeric * 10000)::bigint - v_spent,
              jsonb_build_object('source', 'sql', 'reason', 'budget_used_cents set by SQL',
                                 'from', OLD.budget_used_cents, 'to', NEW.budget_used_cents));
    END IF;
    NEW.spent_micros := round(COALESCE(NEW.budget_used_cents, 0)::numeric * 10000)::bigint;
  END IF;
  IF v_set_period THEN
    -- A new period starts now (or on the reset time written with it); spend so far is kept.
    IF NEW.budget_period IS NULL THEN
      NEW.budget_anchor_at := NULL;
      NEW.budget_reset_at := NULL;
    ELSIF v_set_reset THEN
      NEW.budget_anchor_at := NEW.budget_reset_at;
    ELSE
      NEW.budget_anchor_at := now();
      NEW.budget_reset_at := {{schema}}agentkey_next_reset(NEW.budget_period, NEW.budget_anchor_at, now());
    END IF;
  ELSIF v_set_reset AND NEW.budget_period IS NOT NULL AND NEW.budget_reset_at > now() THEN
    -- A reset moved by hand into the future: later periods follow the day it names. (One
    -- moved into the past needs nothing here: the next call rolls the period over.)
    NEW.budget_anchor_at := NEW.budget_reset_at;
  END IF;
  PERFORM pg_notify('{{channel}}', NEW.id::text);
  RETURN NEW;
END $fn$;
