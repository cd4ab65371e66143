-- What the package's columns may hold when written by SQL: a clear error, and nothing changes.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_check_page_values(period TEXT, budget NUMERIC, used NUMERIC)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  IF period NOT IN ('day', 'month') THEN
    RAISE EXCEPTION 'agentkey: budget_period must be ''day'', ''month'' or NULL; got %', quote_literal(period)
      USING ERRCODE = '23514';
  END IF;
  IF budget < 0 THEN RAISE EXCEPTION 'agentkey: budget_cents must not be negative; got %', budget USING ERRCODE = '23514'; END IF;
  IF used < 0 THEN RAISE EXCEPTION 'agentkey: budget_used_cents must not be negative; got %', used USING ERRCODE = '23514'; END IF;
END $fn$;
