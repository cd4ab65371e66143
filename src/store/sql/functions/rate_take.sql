-- The exact mode of request rate limits: takes one request from every limit of each request
-- in a batch, in the batch's order, each request all or nothing (its key's limit and its
-- account's: if one has no room left, neither counts it).
--
-- Items: p_req[i] is the request (items of one request are next to each other), p_scope[i]
-- the limit ('k:<per_s>:<key id>' or 'a:<per_s>:<account id>'), p_per[i] its window in
-- seconds and p_limit[i] how many requests it admits per window. Windows are fixed: the
-- epoch cut into spans of p_per seconds, in database time, so every process counts in the
-- same window. Returns one row per request: refused_scope NULL when admitted, else the
-- limit that had no room and when its window ends (reset_at); at is the database time used.
--
-- p_account: the account of every request in the batch, or NULL for a batch of any accounts.
-- Every statement names it, (v_any OR account_id = p_account), so a database sharded by
-- account runs a call with an account on its shard alone (docs/scaling.md). p_acct[i] is the
-- account of item i's request (its key's), which its counter row is written with.
--
-- The rows of every window the batch touches are made and then locked in one order (scope,
-- window), so batches of several processes never deadlock; the counts are decided in
-- memory and written once.
CREATE OR REPLACE FUNCTION {{rate_take}}(p_account text, p_req integer[], p_scope text[], p_acct text[], p_per integer[], p_limit integer[])
RETURNS TABLE (req integer, refused_scope text, reset_at timestamptz, at timestamptz)
LANGUAGE plpgsql AS $fn$
DECLARE
  v_now timestamptz := clock_timestamp();
  v_ms bigint := floor(extract(epoch FROM v_now) * 1000)::bigint;
  v_n integer := COALESCE(array_length(p_req, 1), 0);
  v_tags text[];
  v_scopes text[];
  v_wins bigint[];
  v_counts integer[];
  v_pos integer[] := '{}';
  v_refused integer;
  i integer := 1;
  j integer;
  k integer;
  -- No account given: any accounts (a variable, so the planner's guesses stay as without it).
  v_any boolean := p_account IS NULL;
BEGIN
  IF v_n = 0 THEN RETURN; END IF;
  IF NOT v_any AND EXISTS (SELECT 1 FROM unnest(p_acct) AS a(id) WHERE a.id IS DISTINCT FROM p_account) THEN
    RAISE EXCEPTION 'agentkey rate_take: every item of a call for account % must be of that account', p_account USING ERRCODE = '22023';
  END IF;
  -- Each window's row, made on first use; a limit's older windows go when its new one is made.
  WITH agentkey_made AS (
    INSERT INTO {{rate_windows}} (account_id, scope, window_no)
    SELECT DISTINCT u.a, u.s, v_ms / (u.p::bigint * 1000) FROM unnest(p_scope, p_per, p_acct) AS u(s, p, a)
    WHERE v_any OR u.a = p_account ORDER BY 2, 3
    ON CONFLICT DO NOTHING RETURNING scope, window_no)
  DELETE FROM {{rate_windows}} w USING agentkey_made m WHERE (v_any OR w.account_id = p_account) AND w.scope = m.scope AND w.window_no < m.window_no;

  SELECT array_agg(l.scope || '@' || l.window_no ORDER BY l.scope, l.window_no), array_agg(l.scope ORDER BY l.scope, l.window_no),
         array_agg(l.window_no ORDER BY l.scope, l.window_no), array_agg(l.count ORDER BY l.scope, l.window_no)
    INTO v_tags, v_scopes, v_wins, v_counts
  FROM (SELECT w.scope, w.window_no, w.count FROM {{rate_windows}} w
        WHERE (v_any OR w.account_id = p_account) AND (w.scope, w.window_no) IN (SELECT u.s, v_ms / (u.p::bigint * 1000) FROM unnest(p_scope, p_per) AS u(s, p))
        ORDER BY w.scope, w.window_no FOR UPDATE) l;

  FOR k IN 1..v_n LOOP
    v_pos := v_pos || array_position(v_tags, p_scope[k] || '@' || (v_ms / (p_per[k]::bigint * 1000)));
  END LOOP;

  WHILE i <= v_n LOOP
    j := i;
    WHILE j < v_n AND p_req[j + 1] = p_req[i] LOOP j := j + 1; END LOOP;
    v_refused := NULL;
    FOR k IN i..j LOOP
      IF v_counts[v_pos[k]] >= p_limit[k] THEN v_refused := k; EXIT; END IF;
    END LOOP;
    req := p_req[i];
    at := v_now;
    IF v_refused IS NULL THEN
      FOR k IN i..j LOOP v_counts[v_pos[k]] := v_counts[v_pos[k]] + 1; END LOOP;
      refused_scope := NULL;
      reset_at := NULL;
    ELSE
      refused_scope := p_scope[v_refused];
      reset_at := to_timestamp(((v_ms / (p_per[v_refused]::bigint * 1000)) + 1) * p_per[v_refused]);
    END IF;
    RETURN NEXT;
    i := j + 1;
  END LOOP;

  UPDATE {{rate_windows}} w SET count = u.c
  FROM unnest(v_scopes, v_wins, v_counts) AS u(s, wn, c)
  WHERE (v_any OR w.account_id = p_account) AND w.scope = u.s AND w.window_no = u.wn AND w.count <> u.c;
END $fn$;
