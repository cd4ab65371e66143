-- <table>_settle: the commit (at its real cost) or release of one hold of account p_account,
-- as a batch of one through <table>_spend_many (which holds the rules). A hold of another
-- account is not found. It answers in one JSON object like
-- <table>_spend's, with what became of the hold. Kept for callers of the single-step form.
CREATE OR REPLACE FUNCTION {{settle}}(p_account TEXT, p_hold_id TEXT, p_op TEXT, p_micros BIGINT, p_meta JSONB)
RETURNS JSONB LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE r RECORD; v_nodes BIGINT[]; v_out JSONB;
BEGIN
  IF p_op IS NULL OR p_op NOT IN ('commit', 'release') THEN
    RAISE EXCEPTION 'agentkey settle: unknown op %', p_op USING ERRCODE = '22023';
  END IF;
  -- The batch locks every key on the hold's path (v_nodes below), its account's row in
  -- {{accounts}}, then the hold, and changes all or none.
  SELECT * INTO r FROM {{spend_many}}(p_account, ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::bigint], ARRAY[p_hold_id], ARRAY[1],
    ARRAY[p_op], ARRAY[p_micros], ARRAY[NULL::text], ARRAY[p_meta], ARRAY[p_hold_id], ARRAY[NULL::bigint]);
  IF r.r_key_id[1] IS NULL THEN RETURN jsonb_build_object('outcome', r.r_outcome[1]); END IF;
  v_nodes := string_to_array(r.r_ref_paths[1], ',')::bigint[];
  v_out := jsonb_build_object('outcome', r.r_outcome[1], 'key_id', r.r_key_id[1], 'budget', r.r_budget[1],
    'spent', r.r_spent[1]::text, 'held', r.r_held[1]::text, 'path', v_nodes, 'account_id', r.r_ref_accounts[1],
    'at', extract(epoch FROM r.r_at) * 1000)
    -- What became of the hold: only the fields that apply to it.
    || jsonb_strip_nulls(jsonb_build_object('hold', r.r_hold_amount[1], 'committed', r.r_committed[1], 'overage', r.r_overage[1],
         'released', r.r_released[1], 'expired', r.r_expired[1], 'over_budget', r.r_over_budget[1]));
  IF r.r_outcome[1] = 'ok' AND p_op = 'commit' THEN
    -- The budget that left the commit short (all null when it had none).
    RETURN v_out || jsonb_build_object('limit', r.r_limit[1], 'limit_key_id', r.r_limit_key_id[1], 'limit_account_id', r.r_limit_account_id[1]);
  END IF;
  RETURN v_out;
END $fn$;
