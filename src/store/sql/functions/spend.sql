-- <table>_spend: one charge, hold or adjustment on a key of account p_account named by its
-- lookup hash, its subject or its id, as a batch of one through <table>_spend_many (which
-- holds the rules). A key of another account is not found ('invalid').
-- It answers in one JSON object: the outcome, and for a key that was found its figures
-- (counters as text: a JSON number past 2^53 would lose digits). Kept for callers of the
-- single-step form (agentkey itself, older processes, SQL of your own).
CREATE OR REPLACE FUNCTION {{spend}}(p_account TEXT,
  p_hash TEXT, p_subject TEXT, p_id BIGINT, p_op TEXT, p_micros BIGINT,
  p_idem TEXT, p_meta JSONB, p_hold_id TEXT, p_ttl_ms BIGINT)
RETURNS JSONB LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE r RECORD; v_nodes BIGINT[]; v_out JSONB;
BEGIN
  IF p_op IS NULL OR p_op NOT IN ('charge', 'hold', 'adjust') THEN
    RAISE EXCEPTION 'agentkey spend: unknown op %', p_op USING ERRCODE = '22023';
  END IF;
  -- The batch locks the key, each of its ancestors (v_nodes: the path, ancestors then the
  -- key) and its account's row in {{accounts}}, checks every budget and changes all or none.
  SELECT * INTO r FROM {{spend_many}}(p_account, ARRAY[p_hash], ARRAY[p_subject], ARRAY[p_id], ARRAY[NULL::text], ARRAY[1], ARRAY[p_op],
    ARRAY[p_micros], ARRAY[p_idem], ARRAY[p_meta], ARRAY[p_hold_id], ARRAY[p_ttl_ms]);
  -- No key (invalid), or one that can spend nothing (revoked, expired): the outcome alone.
  IF r.r_key_id[1] IS NULL THEN RETURN jsonb_build_object('outcome', r.r_outcome[1]); END IF;
  v_nodes := string_to_array(r.r_ref_paths[1], ',')::bigint[];
  -- 'at' (ms, read after the locks) orders these figures against those of other steps on the key.
  v_out := jsonb_build_object('outcome', r.r_outcome[1], 'key_id', r.r_key_id[1], 'budget', r.r_budget[1],
    'spent', r.r_spent[1]::text, 'held', r.r_held[1]::text, 'path', v_nodes, 'account_id', r.r_ref_accounts[1],
    'at', extract(epoch FROM r.r_at) * 1000);
  IF r.r_outcome[1] = 'ok' THEN
    RETURN v_out || jsonb_build_object('hold_id', r.r_hold_id[1], 'expires_at', r.r_expires_at[1]);
  ELSIF r.r_outcome[1] = 'budget_exceeded' THEN
    RETURN v_out || jsonb_build_object('limit', r.r_limit[1], 'limit_key_id', r.r_limit_key_id[1], 'limit_account_id', r.r_limit_account_id[1],
      'limit_window', r.r_limit_window[1]);
  ELSIF r.r_outcome[1] IN ('replayed', 'idempotency_conflict') AND p_op = 'hold' THEN
    RETURN v_out || jsonb_build_object('hold_id', r.r_hold_id[1], 'expires_at', r.r_expires_at[1], 'status', r.r_status[1]);
  END IF;
  RETURN v_out;
END $fn$;
