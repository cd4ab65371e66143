-- <table>_spend_many: the budget rules, once. (One function of about 700 lines, kept whole
-- so that a batch's decisions read top to bottom.) Every step that spends or holds money runs
-- here: charges, holds, commits and releases of holds, and adjustments (refunds), many at
-- once or one at a time (<table>_spend and <table>_settle are batches of one).
--
-- The steps are decided with the outcome each would have had run one after another in the
-- order given, in one statement that changes all or nothing. It locks every key, ancestor,
-- account and hold the batch touches (keys by id, then accounts, then holds: the one global
-- order of every writer), rolls periods that ended and ends holds past their time, then
-- decides item by item on counters held in variables, and writes counters, holds and
-- ledger rows once each.
--
-- The rules: a key, every ancestor and the account each have a budget (NULL: none), and
-- may have more windows ({{windows}}: a daily cap inside a monthly one...); a charge or hold
-- is refused (budget_exceeded) if spent + live holds + its amount would pass any of them,
-- naming the deepest key that stops it, else the account, and the window (of that key's or
-- account's windows it would pass, the one that frees last). A revoked or
-- expired key or ancestor spends nothing. A commit gives its hold back and charges the real
-- cost up to what every budget leaves; the rest is overage, recorded and never counted.
-- An adjustment checks no budget but takes no counter below zero (refund_exceeds_spend);
-- a window's counter stops at zero instead (a refund of yesterday's charge frees no more
-- than today spent). A spend that takes a window past an alert percent writes one
-- 'budget.threshold' event to {{outbox}}, once per window, period and percent.
-- A charge or hold with an idempotency key that was seen before is 'replayed' (same amount)
-- or an 'idempotency_conflict'.
--
-- p_account: the account the batch is of, or NULL for a batch that may span accounts. Every
-- statement names it, (v_any OR account_id = p_account) with v_any = p_account IS NULL: the
-- column itself, so a database sharded by account runs a call with an account on that
-- account's shard alone (docs/scaling.md); with one, a key or hold of another account is not found ('invalid',
-- 'not_found'). A key without an account (a NULL account_id in the package's table) is of
-- the account '', as its rows in agentkey's own tables are. On one PostgreSQL agentkey sends
-- NULL (one call for any accounts); on a sharded one, a call per account.
--
-- It waits for a lock at most p_wait_ms (NULL: lock_timeout as set); with p_wait_ms 0 it
-- skips the rows another transaction holds and answers 'busy' for the items that need them,
-- so one locked key never stalls a batch.
--
-- The {{...}} names are filled in from the keys table's checked name; see README.md here.
CREATE OR REPLACE FUNCTION {{spend_many}}(p_account TEXT,
  p_hash TEXT[], p_subject TEXT[], p_id BIGINT[], p_hold TEXT[], p_ref INT[], p_op TEXT[], p_micros BIGINT[],
  p_idem TEXT[], p_meta JSONB[], p_hold_id TEXT[], p_ttl_ms BIGINT[], p_wait_ms INT DEFAULT NULL, p_usage JSONB[] DEFAULT NULL)
RETURNS TABLE (r_outcome TEXT[], r_key_id BIGINT[], r_budget BIGINT[], r_spent BIGINT[], r_held BIGINT[], r_hold_id TEXT[],
               r_expires_at TIMESTAMPTZ[], r_status TEXT[], r_limit TEXT[], r_limit_key_id BIGINT[], r_limit_account_id TEXT[],
               r_hold_amount BIGINT[], r_committed BIGINT[], r_released BIGINT[], r_expired BOOLEAN[], r_over_budget BOOLEAN[], r_at TIMESTAMPTZ,
               r_overage BIGINT[],
               r_ref_paths TEXT[], r_ref_accounts TEXT[],
               r_limit_window TEXT[], r_window_room BIGINT[], r_ref_windows TEXT[])
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_variable
DECLARE
  n INT := COALESCE(cardinality(p_op), 0);
  prior RECORD;
  -- Per distinct key asked for: its id, account and path (ancestors then the key) as a slice of v_paths.
  k_id BIGINT[] := '{}'; k_acct TEXT[] := '{}'; k_from INT[] := '{}'; k_to INT[] := '{}';
  h_status TEXT[]; h_amount BIGINT[]; h_committed BIGINT[]; h_expires TIMESTAMPTZ[]; h_settled TIMESTAMPTZ[]; h_overage BIGINT[];
  h_dirty BOOLEAN := false; v_live BOOLEAN;
  v_paths BIGINT[] := '{}'; v_due BOOLEAN; v_expired BOOLEAN; v_holds INT := 0; v_settles BOOLEAN;
  -- Per distinct key: its path as text ('ancestor,...,key'), for the caller's cache.
  v_refpaths TEXT[] := '{}';
  -- Whether any counter may have moved (a charge, commit or adjustment), and any key was used.
  v_moved BOOLEAN := false; v_touched BOOLEAN := false; v_adjusted BOOLEAN := false;
  -- Per distinct key, worked out once: where its node and account sit in the arrays below,
  -- and 'invalid', 'revoked' or 'expired' when no item of it can spend; per path entry, its node.
  k_pos INT[]; k_cpos INT[]; k_state TEXT[]; v_pos INT[];
  -- Per key node and per account: the counters, updated as items are accepted.
  s_id BIGINT[]; s_budget BIGINT[]; s_spent BIGINT[]; s_spent0 BIGINT[]; s_held BIGINT[];
  s_depth INT[]; s_state TEXT[]; s_touch BOOLEAN[]; s_overage BIGINT[];
  c_id TEXT[] := '{}'; c_budget BIGINT[] := '{}'; c_spent BIGINT[] := '{}'; c_spent0 BIGINT[]; c_held BIGINT[] := '{}';
  -- How many account rows (ceilings) the batch locked: none, and they are not read.
  v_accts INT; v_acct_due BOOLEAN;
  -- Accepted items, in order, and what each item gets back.
  w_ord INT[] := '{}';
  o_outcome TEXT[]; o_key BIGINT[]; o_budget BIGINT[]; o_spent BIGINT[]; o_held BIGINT[]; o_hold TEXT[];
  o_expires TIMESTAMPTZ[]; o_status TEXT[]; o_limit TEXT[]; o_limit_key BIGINT[]; o_limit_acct TEXT[];
  o_hamount BIGINT[]; o_committed BIGINT[]; o_released BIGINT[]; o_expired BOOLEAN[]; o_over BOOLEAN[]; o_overage BIGINT[];
  v_room NUMERIC; v_charge BIGINT; v_acct_limit BOOLEAN; v_refund BOOLEAN;
  l_amount BIGINT[];
  v_now TIMESTAMPTZ; v_key BIGINT; v_ref INT; v_k INT; v_c INT; v_x INT; v_lim INT; v_prior INT;
  -- Rows held by another transaction (p_wait_ms 0): the keys, accounts and holds locked, of how
  -- many there are; those held elsewhere; and the refs (by position) left alone, 'busy'.
  v_kgot BIGINT[]; v_kall INT; v_agot TEXT[]; v_aall INT; v_hgot TEXT[]; v_hall INT;
  w_keys BIGINT[] := '{}'; w_accts TEXT[] := '{}'; w_holds TEXT[] := '{}'; k_busy BOOLEAN[] := '{}';
  v_lock_timeout TEXT; v_p2 BIGINT[];
  -- Windows past the first ({{windows}}), read only when a key or account of the batch has
  -- some (v_wins): per window its owner (a key node's position in s_id, or the account's in
  -- c_id), period, budget and counter; per ref, the windows over it (v_rwins[k_wfrom:k_wto]).
  -- The first window's period and end, per node and account, name a refusing window.
  v_wins BOOLEAN := false; v_alerts BOOLEAN := false; v_cwins BOOLEAN := false; v_calerts BOOLEAN := false;
  s_period TEXT[]; s_reset TIMESTAMPTZ[]; c_period TEXT[] := '{}'; c_reset TIMESTAMPTZ[] := '{}';
  w_id BIGINT[] := '{}'; w_key BIGINT[] := '{}'; w_acct TEXT[] := '{}'; w_period TEXT[] := '{}'; w_budget BIGINT[] := '{}';
  w_spent BIGINT[] := '{}'; w_spent0 BIGINT[] := '{}'; w_start TIMESTAMPTZ[] := '{}'; w_reset TIMESTAMPTZ[] := '{}';
  w_node INT[] := '{}'; w_cpos INT[] := '{}';
  k_wfrom INT[]; k_wto INT[]; v_rwins INT[] := '{}'; v_refwins TEXT[];
  o_lwin TEXT[]; o_wroom BIGINT[]; v_lwin TEXT; v_lreset TIMESTAMPTZ; v_y INT; v_held BIGINT; v_wroom NUMERIC;
  v_global SMALLINT[]; v_global_json JSONB; v_overage BOOLEAN := false;
  -- No account given: the batch may span accounts, and every statement's account condition
  -- holds. (A variable, not p_account IS NULL in each: the planner then guesses half the rows
  -- pass it, not a few, and keeps the plans it had before the condition.)
  v_any BOOLEAN := p_account IS NULL;
BEGIN
  o_outcome := array_fill(NULL::text, ARRAY[n]); o_key := array_fill(NULL::bigint, ARRAY[n]);
  o_budget := o_key; o_spent := o_key; o_held := o_key; o_limit_key := o_key;
  o_hold := o_outcome; o_status := o_outcome; o_limit := o_outcome; o_limit_acct := o_outcome;
  o_expires := array_fill(NULL::timestamptz, ARRAY[n]);
  o_hamount := o_key; o_committed := o_key; o_released := o_key; l_amount := o_key; o_overage := o_key;
  o_expired := array_fill(NULL::boolean, ARRAY[n]); o_over := o_expired;
  o_lwin := o_outcome; o_wroom := o_key;

  -- A key is named by hash, subject or id; a settlement by its hold, whose path was fixed when
  -- taken. Paths come as text ('ancestor,...,key': what the caller gets back too) and are laid
  -- end to end in v_paths.
  SELECT COALESCE(array_agg(k.id ORDER BY u.ord), '{}'), COALESCE(array_agg(k.account_id ORDER BY u.ord), '{}'),
         COALESCE(array_agg(COALESCE(array_to_string(k.path, ','), '') ORDER BY u.ord), '{}')
    INTO k_id, k_acct, v_refpaths
    FROM unnest(p_hash, p_subject, p_id, p_hold) WITH ORDINALITY AS u(h, s, kid, hid, ord)
    LEFT JOIN LATERAL (
      SELECT id, COALESCE(account_id::text, '') AS account_id, ancestor_ids || id AS path FROM {{table}} WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND key_hash = u.h
      UNION ALL SELECT id, COALESCE(account_id::text, ''), ancestor_ids || id FROM {{table}} WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND external_subject = u.s
      UNION ALL SELECT id, COALESCE(account_id::text, ''), ancestor_ids || id FROM {{table}} WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND id = u.kid
      UNION ALL SELECT key_id, account_id, path FROM {{holds}} WHERE (v_any OR account_id = p_account) AND id = u.hid
      -- A rotated key's previous secret, while its grace period lasts (read only when nothing above matched).
      UNION ALL SELECT id, COALESCE(account_id::text, ''), ancestor_ids || id FROM {{table}}
        WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND previous_key_hash = u.h AND previous_key_valid_until > clock_timestamp()
      LIMIT 1) k ON true;
  FOR x IN 1..cardinality(k_id) LOOP
    k_from[x] := cardinality(v_paths) + 1;
    IF k_id[x] IS NOT NULL THEN v_paths := v_paths || string_to_array(v_refpaths[x], ',')::bigint[]; END IF;
    k_to[x] := cardinality(v_paths);
  END LOOP;

  v_settles := cardinality(array_remove(p_hold, NULL)) > 0;
  IF p_wait_ms IS NULL OR p_wait_ms > 0 THEN
    -- A lock held longer than p_wait_ms ends the statement (lock_not_available) with nothing
    -- written; the caller then sends the batch again with p_wait_ms 0.
    IF p_wait_ms > 0 THEN
      v_lock_timeout := current_setting('lock_timeout');
      PERFORM set_config('lock_timeout', p_wait_ms || 'ms', true);
    END IF;
    -- Every budget the batch touches, locked in the one global order: keys by id, then
    -- accounts, then the holds being settled.
    PERFORM 1 FROM {{table}} WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND id = ANY(v_paths) ORDER BY id FOR UPDATE;
    SELECT count(*) INTO v_accts FROM (SELECT 1 FROM {{accounts}} WHERE (v_any OR account_id = p_account) AND account_id = ANY(k_acct) ORDER BY account_id FOR UPDATE) a;
    IF v_settles THEN PERFORM 1 FROM {{holds}} WHERE (v_any OR account_id = p_account) AND id = ANY(p_hold) ORDER BY id FOR UPDATE; END IF;
    IF p_wait_ms > 0 THEN PERFORM set_config('lock_timeout', v_lock_timeout, true); END IF;
  ELSE
    -- p_wait_ms 0: the same locks in the same order, but a row another transaction holds is
    -- skipped, never waited for. (Keys and holds are counted from the ids asked for: a
    -- missing one only costs a closer look.)
    SELECT ARRAY(SELECT id FROM {{table}} WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND id = ANY(v_paths) ORDER BY id FOR UPDATE SKIP LOCKED),
           (SELECT count(DISTINCT x) FROM unnest(v_paths) x)::int INTO v_kgot, v_kall;
    SELECT ARRAY(SELECT account_id FROM {{accounts}} WHERE (v_any OR account_id = p_account) AND account_id = ANY(k_acct) ORDER BY account_id FOR UPDATE SKIP LOCKED),
           (SELECT count(*) FROM {{accounts}} WHERE (v_any OR account_id = p_account) AND account_id = ANY(k_acct))::int INTO v_agot, v_aall;
    SELECT ARRAY(SELECT id FROM {{holds}} WHERE (v_any OR account_id = p_account) AND id = ANY(p_hold) ORDER BY id FOR UPDATE SKIP LOCKED),
           (SELECT count(DISTINCT x) FROM unnest(p_hold) x)::int INTO v_hgot, v_hall;
    -- The rows held elsewhere (and still there).
    IF cardinality(v_kgot) < v_kall THEN
      w_keys := ARRAY(SELECT id FROM {{table}} WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND id = ANY(v_paths) AND id <> ALL(v_kgot));
    END IF;
    IF cardinality(v_agot) < v_aall THEN
      w_accts := ARRAY(SELECT account_id FROM {{accounts}} WHERE (v_any OR account_id = p_account) AND account_id = ANY(k_acct) AND account_id <> ALL(v_agot));
    END IF;
    IF cardinality(v_hgot) < v_hall THEN
      w_holds := ARRAY(SELECT id FROM {{holds}} WHERE (v_any OR account_id = p_account) AND id = ANY(p_hold) AND id <> ALL(v_hgot));
    END IF;
    IF cardinality(w_keys) + cardinality(w_accts) + cardinality(w_holds) > 0 THEN
      -- A ref that needs such a row is 'busy': it drops out of the batch (nothing of it is
      -- read for a decision or written), and its caller tries again.
      k_busy := array_fill(false, ARRAY[cardinality(k_id)]);
      v_p2 := '{}';
      FOR x IN 1..cardinality(k_id) LOOP
        IF k_id[x] IS NOT NULL AND (v_paths[k_from[x]:k_to[x]] && w_keys OR k_acct[x] = ANY(w_accts) OR p_hold[x] = ANY(w_holds)) THEN
          k_busy[x] := true;
          k_id[x] := NULL; k_acct[x] := NULL; p_hold[x] := NULL; v_refpaths[x] := '';
          k_from[x] := cardinality(v_p2) + 1; k_to[x] := cardinality(v_p2);
        ELSE
          v_x := cardinality(v_p2) + 1;
          v_p2 := v_p2 || v_paths[k_from[x]:k_to[x]];
          k_from[x] := v_x; k_to[x] := cardinality(v_p2);
        END IF;
      END LOOP;
      v_paths := v_p2;
    END IF;
    v_accts := cardinality(v_agot);
  END IF;
  v_now := clock_timestamp();

  -- The counters of every key node and account, with the money their live holds keep; and
  -- whether a period ended or a hold ran past its time. Both are rare: when one did, the
  -- period starts again (with a reset row in the ledger) or the hold ends, and the counters
  -- are read once more.
  FOR pass IN 1..2 LOOP
    SELECT n.ids, n.budgets, n.spents, n.helds, n.depths, n.states, COALESCE(n.due, false),
           EXISTS (SELECT 1 FROM {{holds}} WHERE (v_any OR account_id = p_account) AND key_id = ANY(k_id) AND status = 'held' AND expires_at <= v_now),
           n.periods, n.resets, COALESCE(n.wins, false), COALESCE(n.alerts, false),
           (SELECT value FROM {{settings}} WHERE name = 'alert_percents')
      INTO s_id, s_budget, s_spent, s_held, s_depth, s_state, v_due, v_expired, s_period, s_reset, v_wins, v_alerts, v_global_json
      FROM (SELECT COALESCE(array_agg(n.id ORDER BY n.id), '{}') AS ids,
                   COALESCE(array_agg(n.budget_micros ORDER BY n.id), '{}') AS budgets,
                   COALESCE(array_agg(n.spent_micros ORDER BY n.id), '{}') AS spents,
                   COALESCE(array_agg(COALESCE(live.held, 0) ORDER BY n.id), '{}') AS helds,
                   COALESCE(array_agg(n.depth ORDER BY n.id), '{}') AS depths,
                   COALESCE(array_agg(CASE WHEN n.revoked_at IS NOT NULL THEN 'revoked'
                                           WHEN n.expires_at IS NOT NULL AND n.expires_at <= v_now THEN 'expired' END ORDER BY n.id), '{}') AS states,
                   bool_or(n.budget_period IS NOT NULL AND n.budget_reset_at <= v_now) AS due,
                   COALESCE(array_agg(n.budget_period ORDER BY n.id), '{}') AS periods,
                   COALESCE(array_agg(n.budget_reset_at ORDER BY n.id), '{}') AS resets,
                   bool_or(n.budget_windows) AS wins, bool_or(n.alert_percents IS NOT NULL) AS alerts
            FROM {{table}} n
            LEFT JOIN LATERAL (SELECT sum(amount_micros)::bigint AS held FROM {{holds}}
                               WHERE (v_any OR account_id = p_account) AND status = 'held' AND expires_at > v_now AND path @> ARRAY[n.id::bigint]) live ON true
            WHERE (v_any OR n.account_id::text = p_account OR (p_account = '' AND n.account_id IS NULL)) AND n.id = ANY(v_paths)) n;
    IF v_accts > 0 THEN
      SELECT COALESCE(array_agg(a.account_id ORDER BY a.account_id), '{}'),
             COALESCE(array_agg(a.budget_micros ORDER BY a.account_id), '{}'),
             COALESCE(array_agg(a.spent_micros ORDER BY a.account_id), '{}'),
             COALESCE(array_agg(COALESCE(live.held, 0) ORDER BY a.account_id), '{}'),
             COALESCE(bool_or(a.budget_period IS NOT NULL AND a.budget_reset_at <= v_now), false),
             COALESCE(array_agg(a.budget_period ORDER BY a.account_id), '{}'),
             COALESCE(array_agg(a.budget_reset_at ORDER BY a.account_id), '{}'),
             COALESCE(bool_or(a.budget_windows), false), COALESCE(bool_or(a.alert_percents IS NOT NULL), false)
        INTO c_id, c_budget, c_spent, c_held, v_acct_due, c_period, c_reset, v_cwins, v_calerts
        FROM {{accounts}} a
        LEFT JOIN LATERAL (SELECT sum(amount_micros)::bigint AS held FROM {{holds}}
                           WHERE (v_any OR account_id = p_account) AND account_id = a.account_id AND status = 'held' AND expires_at > v_now) live ON true
        WHERE (v_any OR a.account_id = p_account) AND a.account_id = ANY(k_acct);
      v_due := v_due OR v_acct_due;
      v_wins := v_wins OR v_cwins;
      v_alerts := v_alerts OR v_calerts;
    END IF;
    EXIT WHEN pass = 2 OR NOT (v_due OR v_expired);
    IF v_due THEN
      INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, created_at)
        SELECT id, COALESCE(account_id::text, ''), 'reset', -spent_micros, v_now FROM {{table}}
        WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND id = ANY(v_paths) AND budget_period IS NOT NULL AND budget_reset_at <= v_now AND spent_micros <> 0
        ORDER BY id;
      UPDATE {{table}} SET spent_micros = 0, budget_used_cents = 0,
        budget_reset_at = {{schema}}agentkey_next_reset(budget_period, COALESCE(budget_anchor_at, created_at), v_now)
        WHERE (v_any OR account_id::text = p_account OR (p_account = '' AND account_id IS NULL)) AND id = ANY(v_paths) AND budget_period IS NOT NULL AND budget_reset_at <= v_now;
      INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, created_at)
        SELECT NULL, account_id, 'reset', -spent_micros, v_now FROM {{accounts}}
        WHERE (v_any OR account_id = p_account) AND account_id = ANY(k_acct) AND budget_period IS NOT NULL AND budget_reset_at <= v_now AND spent_micros <> 0
        ORDER BY account_id;
      UPDATE {{accounts}} SET spent_micros = 0,
        period_start_at = {{schema}}agentkey_period_start(budget_period, v_now),
        budget_reset_at = {{schema}}agentkey_period_end(budget_period, v_now)
        WHERE (v_any OR account_id = p_account) AND account_id = ANY(k_acct) AND budget_period IS NOT NULL AND budget_reset_at <= v_now;
    END IF;
    IF v_expired THEN
      WITH swept AS (
        UPDATE {{holds}} h SET status = 'expired', settled_at = v_now
        WHERE (v_any OR h.account_id = p_account)
          AND h.id IN (SELECT id FROM {{holds}} WHERE (v_any OR account_id = p_account) AND key_id = ANY(k_id) AND status = 'held' AND expires_at <= v_now
                       FOR UPDATE SKIP LOCKED)
          AND h.status = 'held'
        RETURNING h.id, h.key_id, h.amount_micros, h.account_id)
      INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, reservation_id, created_at)
      SELECT s.key_id, s.account_id, 'expire', -s.amount_micros, s.id, v_now
      FROM swept s ORDER BY s.key_id, s.id;
    END IF;
  END LOOP;
  s_spent0 := s_spent;
  c_spent0 := c_spent;

  -- The windows over the batch's keys (theirs and their ancestors') and accounts (locked
  -- with their owners, whose rows every writer of a window locks first). A window whose
  -- period ended starts again at 0 (no ledger row: the ledger's reset rows are the first
  -- window's).
  k_wfrom := array_fill(1, ARRAY[cardinality(k_id)]); k_wto := array_fill(0, ARRAY[cardinality(k_id)]);
  v_refwins := array_fill(''::text, ARRAY[cardinality(k_id)]);
  IF v_wins THEN
    UPDATE {{windows}} SET spent_micros = 0, period_start_at = {{schema}}agentkey_period_start(period, v_now),
        reset_at = {{schema}}agentkey_period_end(period, v_now), updated_at = v_now
      WHERE (v_any OR account_id = p_account) AND (key_id = ANY(v_paths) OR (key_id IS NULL AND account_id = ANY(c_id))) AND reset_at <= v_now;
    SELECT COALESCE(array_agg(w.id ORDER BY w.id), '{}'), COALESCE(array_agg(w.key_id ORDER BY w.id), '{}'),
           COALESCE(array_agg(w.account_id ORDER BY w.id), '{}'), COALESCE(array_agg(w.period ORDER BY w.id), '{}'),
           COALESCE(array_agg(w.budget_micros ORDER BY w.id), '{}'), COALESCE(array_agg(w.spent_micros ORDER BY w.id), '{}'),
           COALESCE(array_agg(w.period_start_at ORDER BY w.id), '{}'), COALESCE(array_agg(w.reset_at ORDER BY w.id), '{}')
      INTO w_id, w_key, w_acct, w_period, w_budget, w_spent, w_start, w_reset
      FROM {{windows}} w WHERE (v_any OR w.account_id = p_account) AND (w.key_id = ANY(v_paths) OR (w.key_id IS NULL AND w.account_id = ANY(c_id)));
    w_spent0 := w_spent;
    w_node := array_fill(NULL::int, ARRAY[cardinality(w_id)]); w_cpos := w_node;
    FOR y IN 1..cardinality(w_id) LOOP
      IF w_key[y] IS NOT NULL THEN w_node[y] := array_position(s_id, w_key[y]);
      ELSE w_cpos[y] := array_position(c_id, w_acct[y]);
      END IF;
    END LOOP;
    FOR x IN 1..cardinality(k_id) LOOP
      CONTINUE WHEN k_id[x] IS NULL;
      k_wfrom[x] := cardinality(v_rwins) + 1;
      FOR y IN 1..cardinality(w_id) LOOP
        IF (w_key[y] IS NOT NULL AND w_key[y] = ANY(v_paths[k_from[x]:k_to[x]])) OR (w_key[y] IS NULL AND w_acct[y] = k_acct[x]) THEN
          v_rwins := v_rwins || y;
          v_refwins[x] := v_refwins[x] || CASE WHEN v_refwins[x] = '' THEN '' ELSE ',' END || w_id[y];
        END IF;
      END LOOP;
      k_wto[x] := cardinality(v_rwins);
    END LOOP;
  END IF;
  s_touch := array_fill(false, ARRAY[cardinality(s_id)]);
  s_overage := array_fill(0::bigint, ARRAY[cardinality(s_id)]);

  -- The holds being settled, by ref (after the sweep, so an expired one says so).
  IF cardinality(array_remove(p_hold, NULL)) > 0 THEN
    h_status := array_fill(NULL::text, ARRAY[cardinality(p_hold)]); h_amount := array_fill(NULL::bigint, ARRAY[cardinality(p_hold)]);
    h_committed := h_amount; h_overage := h_amount; h_expires := array_fill(NULL::timestamptz, ARRAY[cardinality(p_hold)]); h_settled := h_expires;
    FOR x IN 1..cardinality(p_hold) LOOP
      CONTINUE WHEN p_hold[x] IS NULL;
      SELECT status, amount_micros, committed_micros, expires_at, settled_at, COALESCE(overage_micros, 0) AS overage
        INTO prior FROM {{holds}} WHERE (v_any OR account_id = p_account) AND id = p_hold[x];
      CONTINUE WHEN NOT FOUND;
      h_status[x] := prior.status; h_amount[x] := prior.amount_micros; h_committed[x] := prior.committed_micros;
      h_expires[x] := prior.expires_at; h_settled[x] := prior.settled_at; h_overage[x] := prior.overage;
    END LOOP;
  END IF;

  v_pos := array_fill(NULL::int, ARRAY[cardinality(v_paths)]);
  k_pos := array_fill(NULL::int, ARRAY[cardinality(k_id)]);
  k_cpos := k_pos;
  k_state := array_fill(NULL::text, ARRAY[cardinality(k_id)]);
  FOR x IN 1..cardinality(k_id) LOOP
    IF k_id[x] IS NULL THEN
      k_state[x] := 'invalid';
      CONTINUE;
    END IF;
    k_pos[x] := array_position(s_id, k_id[x]);
    k_cpos[x] := array_position(c_id, k_acct[x]);
    FOR j IN k_from[x]..k_to[x] LOOP
      v_pos[j] := array_position(s_id, v_paths[j]);
      -- A node of its path that is gone, or of another account, leaves a budget unread: it spends nothing.
      IF v_pos[j] IS NULL THEN k_state[x] := 'invalid'; END IF;
    END LOOP;
    CONTINUE WHEN k_state[x] = 'invalid';
    -- A revoked or expired ancestor stops the whole subtree; revoked says more than expired.
    FOR j IN k_from[x]..k_to[x] LOOP
      IF s_state[v_pos[j]] = 'revoked' THEN k_state[x] := 'revoked'; EXIT; END IF;
      IF s_state[v_pos[j]] = 'expired' THEN k_state[x] := 'expired'; END IF;
    END LOOP;
  END LOOP;

  FOR i IN 1..n LOOP
    -- (Nothing is written before this loop ends: an unknown op changes nothing.)
    IF p_op[i] IS NULL OR p_op[i] NOT IN ('charge', 'hold', 'adjust', 'commit', 'release') THEN
      RAISE EXCEPTION 'agentkey spend_many: unknown op %', p_op[i] USING ERRCODE = '22023';
    END IF;
    v_ref := p_ref[i];
    IF k_busy[v_ref] THEN o_outcome[i] := 'busy'; CONTINUE; END IF;
    IF p_op[i] IN ('commit', 'release') THEN
      -- A settlement: recorded whatever the key's state now (the money was held, or spent).
      IF k_id[v_ref] IS NULL THEN
        o_outcome[i] := 'not_found';
        CONTINUE;
      END IF;
      v_key := k_id[v_ref]; v_k := k_pos[v_ref]; v_c := k_cpos[v_ref];
      o_key[i] := v_key; o_budget[i] := s_budget[v_k]; o_hamount[i] := h_amount[v_ref];
      IF h_status[v_ref] = 'committed' THEN
        -- A second commit replays the first only when it asks for the same cost.
        o_outcome[i] := CASE WHEN p_op[i] <> 'commit' THEN 'already_committed'
                             WHEN h_committed[v_ref] = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END;
        o_committed[i] := h_committed[v_ref]; o_expired[i] := h_settled[v_ref] >= h_expires[v_ref];
        o_overage[i] := h_overage[v_ref];
      ELSIF h_status[v_ref] = 'released' THEN
        o_outcome[i] := CASE WHEN p_op[i] = 'release' THEN 'replayed' ELSE 'already_released' END;
        o_released[i] := h_amount[v_ref];
      ELSE
        v_live := h_status[v_ref] = 'held' AND h_expires[v_ref] > v_now;
        IF p_op[i] = 'release' AND NOT v_live THEN
          -- Nothing to give back (its expiry did), and nothing replayed either.
          o_outcome[i] := 'ok'; o_expired[i] := true; o_released[i] := 0;
        ELSE
          IF v_live THEN
            FOR j IN k_from[v_ref]..k_to[v_ref] LOOP s_held[v_pos[j]] := s_held[v_pos[j]] - h_amount[v_ref]; END LOOP;
            IF v_c IS NOT NULL THEN c_held[v_c] := c_held[v_c] - h_amount[v_ref]; END IF;
          END IF;
          h_dirty := true;
          h_settled[v_ref] := v_now;
          w_ord := array_append(w_ord, i);
          o_outcome[i] := 'ok';
          IF p_op[i] = 'release' THEN
            h_status[v_ref] := 'released';
            l_amount[i] := -h_amount[v_ref];
            o_released[i] := h_amount[v_ref];
          ELSE
            -- A commit records the real cost, and counts against the budgets only what they
            -- can take (the hold's money is back already): up to what the tightest budget over
            -- the key leaves, deepest first on a tie, then the account's if it leaves less.
            -- The rest is overage: recorded, never counted. (Rooms are compared as NUMERIC: a
            -- difference of two counters may pass BIGINT.)
            v_room := NULL; v_lim := NULL; v_acct_limit := false; v_lwin := NULL;
            FOR j IN k_from[v_ref]..k_to[v_ref] LOOP
              v_x := v_pos[j];
              IF s_budget[v_x] IS NOT NULL AND (v_room IS NULL OR s_budget[v_x]::numeric - s_spent[v_x] - s_held[v_x] < v_room
                  OR (s_budget[v_x]::numeric - s_spent[v_x] - s_held[v_x] = v_room AND s_depth[v_x] > s_depth[v_lim])) THEN
                v_room := s_budget[v_x]::numeric - s_spent[v_x] - s_held[v_x];
                v_lim := v_x; v_lwin := COALESCE(s_period[v_x], 'lifetime');
              END IF;
            END LOOP;
            -- A key's further windows as its first (the tighter counts; deeper on a tie).
            FOR j IN k_wfrom[v_ref]..k_wto[v_ref] LOOP
              v_y := v_rwins[j]; v_x := w_node[v_y];
              CONTINUE WHEN v_x IS NULL;
              v_wroom := w_budget[v_y]::numeric - w_spent[v_y] - s_held[v_x];
              IF v_room IS NULL OR v_wroom < v_room OR (v_wroom = v_room AND s_depth[v_x] > s_depth[v_lim]) THEN
                v_room := v_wroom; v_lim := v_x; v_lwin := w_period[v_y];
              END IF;
            END LOOP;
            IF v_c IS NOT NULL AND (v_room IS NULL OR c_budget[v_c]::numeric - c_spent[v_c] - c_held[v_c] < v_room) THEN
              v_room := c_budget[v_c]::numeric - c_spent[v_c] - c_held[v_c];
              v_acct_limit := true; v_lwin := COALESCE(c_period[v_c], 'lifetime');
            END IF;
            FOR j IN k_wfrom[v_ref]..k_wto[v_ref] LOOP
              v_y := v_rwins[j];
              CONTINUE WHEN w_cpos[v_y] IS NULL;
              v_wroom := w_budget[v_y]::numeric - w_spent[v_y] - c_held[w_cpos[v_y]];
              IF v_room IS NULL OR v_wroom < v_room THEN
                v_room := v_wroom; v_acct_limit := true; v_lwin := w_period[v_y];
              END IF;
            END LOOP;
            v_charge := CASE WHEN v_room IS NULL THEN p_micros[i] ELSE LEAST(p_micros[i], GREATEST(v_room, 0)) END;
            h_status[v_ref] := 'committed';
            h_committed[v_ref] := p_micros[i];
            h_overage[v_ref] := p_micros[i] - v_charge;
            l_amount[i] := v_charge;
            FOR j IN k_from[v_ref]..k_to[v_ref] LOOP s_spent[v_pos[j]] := s_spent[v_pos[j]] + v_charge; END LOOP;
            IF v_c IS NOT NULL THEN c_spent[v_c] := c_spent[v_c] + v_charge; END IF;
            FOR j IN k_wfrom[v_ref]..k_wto[v_ref] LOOP w_spent[v_rwins[j]] := w_spent[v_rwins[j]] + v_charge; END LOOP;
            s_touch[v_k] := true;
            v_touched := true;
            v_moved := true;
            s_overage[v_k] := s_overage[v_k] + h_overage[v_ref];
            o_committed[i] := p_micros[i];
            o_overage[i] := h_overage[v_ref];
            o_expired[i] := NOT v_live;
            IF h_overage[v_ref] > 0 AND v_acct_limit THEN
              o_limit[i] := 'account';
              o_limit_acct[i] := k_acct[v_ref];
              o_lwin[i] := v_lwin;
            ELSIF h_overage[v_ref] > 0 THEN
              o_limit[i] := CASE WHEN s_id[v_lim] = v_key THEN 'key' ELSE 'ancestor' END;
              o_limit_key[i] := s_id[v_lim];
              o_lwin[i] := v_lwin;
            END IF;
            o_over[i] := h_overage[v_ref] > 0;
            v_overage := v_overage OR o_over[i];
          END IF;
        END IF;
      END IF;
      o_spent[i] := s_spent[v_k]; o_held[i] := s_held[v_k];
      CONTINUE;
    END IF;
    -- A revoked or expired key (or ancestor) spends nothing more; an adjustment still applies
    -- to it (it corrects spend that happened).
    IF k_state[v_ref] = 'invalid' OR (k_state[v_ref] IS NOT NULL AND p_op[i] <> 'adjust') THEN
      o_outcome[i] := k_state[v_ref];
      CONTINUE;
    END IF;
    v_key := k_id[v_ref];
    v_k := k_pos[v_ref];
    v_c := k_cpos[v_ref];

    o_key[i] := v_key; o_budget[i] := s_budget[v_k];
    -- A retry of a charge or hold: first an earlier item of this batch, then what is stored.
    IF p_idem[i] IS NOT NULL AND p_op[i] <> 'adjust' THEN
      v_prior := NULL;
      FOR j IN 1..cardinality(w_ord) LOOP
        IF k_id[p_ref[w_ord[j]]] = v_key AND p_op[w_ord[j]] = p_op[i] AND p_idem[w_ord[j]] = p_idem[i] THEN
          v_prior := w_ord[j];
          EXIT;
        END IF;
      END LOOP;
      IF v_prior IS NOT NULL THEN
        o_outcome[i] := CASE WHEN p_micros[v_prior] = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END;
        IF p_op[i] = 'hold' THEN
          o_hold[i] := p_hold_id[v_prior];
          o_expires[i] := v_now + p_ttl_ms[v_prior] * interval '1 millisecond';
          o_status[i] := 'held';
        END IF;
      ELSIF p_op[i] = 'charge' THEN
        SELECT amount_micros INTO prior FROM {{ledger}}
          WHERE (v_any OR account_id = p_account) AND key_id = v_key AND idempotency_key = p_idem[i] AND kind = 'charge';
        IF FOUND THEN
          o_outcome[i] := CASE WHEN prior.amount_micros = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END;
        END IF;
      ELSE
        SELECT id, amount_micros, expires_at, status INTO prior FROM {{holds}}
          WHERE (v_any OR account_id = p_account) AND key_id = v_key AND idempotency_key = p_idem[i];
        IF FOUND THEN
          o_outcome[i] := CASE WHEN prior.amount_micros = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END;
          o_hold[i] := prior.id; o_expires[i] := prior.expires_at;
          -- A hold settled earlier in this batch is only written at the end: its state is here.
          v_x := array_position(p_hold, prior.id);
          o_status[i] := CASE WHEN v_x IS NULL THEN prior.status ELSE h_status[v_x] END;
        END IF;
      END IF;
      IF o_outcome[i] IS NOT NULL THEN
        o_spent[i] := s_spent[v_k]; o_held[i] := s_held[v_k];
        CONTINUE;
      END IF;
    END IF;

    IF p_op[i] = 'adjust' THEN
      -- An adjustment (a refund when negative) passes no budget check, but takes no counter
      -- on the path, nor the account's, below zero.
      v_refund := v_c IS NOT NULL AND c_spent[v_c]::numeric + p_micros[i] < 0;
      FOR j IN k_from[v_ref]..k_to[v_ref] LOOP
        IF s_spent[v_pos[j]]::numeric + p_micros[i] < 0 THEN v_refund := true; END IF;
      END LOOP;
      IF v_refund THEN
        o_outcome[i] := 'refund_exceeds_spend';
        o_spent[i] := s_spent[v_k]; o_held[i] := s_held[v_k];
        CONTINUE;
      END IF;
    ELSE
      -- The tightest budget this item would pass: the deepest key on its path, then the
      -- account. (An unbudgeted node compares with NULL, which is never true; sums are
      -- NUMERIC, so a step near BIGINT's end is refused, not an error, if a budget stops it.)
      -- Of the windows of the refusing key (or account) the item would pass, the one named is
      -- the one that frees last (a lifetime window never does).
      v_lim := NULL; v_lwin := NULL; v_lreset := NULL;
      FOR j IN k_from[v_ref]..k_to[v_ref] LOOP
        v_x := v_pos[j];
        IF s_spent[v_x]::numeric + s_held[v_x] + p_micros[i] > s_budget[v_x] AND (v_lim IS NULL OR s_depth[v_x] > s_depth[v_lim]) THEN
          v_lim := v_x; v_lwin := COALESCE(s_period[v_x], 'lifetime');
          v_lreset := CASE WHEN s_period[v_x] IS NULL THEN NULL ELSE s_reset[v_x] END;
        END IF;
      END LOOP;
      FOR j IN k_wfrom[v_ref]..k_wto[v_ref] LOOP
        v_y := v_rwins[j]; v_x := w_node[v_y];
        CONTINUE WHEN v_x IS NULL;
        IF w_spent[v_y]::numeric + s_held[v_x] + p_micros[i] > w_budget[v_y] AND (v_lim IS NULL OR s_depth[v_x] > s_depth[v_lim]
            OR (v_x = v_lim AND v_lreset IS NOT NULL AND (w_reset[v_y] IS NULL OR w_reset[v_y] > v_lreset))) THEN
          v_lim := v_x; v_lwin := w_period[v_y]; v_lreset := w_reset[v_y];
        END IF;
      END LOOP;
      IF v_lim IS NOT NULL THEN
        o_limit[i] := CASE WHEN s_id[v_lim] = v_key THEN 'key' ELSE 'ancestor' END;
        o_limit_key[i] := s_id[v_lim];
      ELSIF v_c IS NOT NULL THEN
        IF c_spent[v_c]::numeric + c_held[v_c] + p_micros[i] > c_budget[v_c] THEN
          o_limit[i] := 'account'; v_lwin := COALESCE(c_period[v_c], 'lifetime');
          v_lreset := CASE WHEN c_period[v_c] IS NULL THEN NULL ELSE c_reset[v_c] END;
        END IF;
        FOR j IN k_wfrom[v_ref]..k_wto[v_ref] LOOP
          v_y := v_rwins[j];
          CONTINUE WHEN w_cpos[v_y] IS NULL;
          IF w_spent[v_y]::numeric + c_held[v_c] + p_micros[i] > w_budget[v_y]
              AND (o_limit[i] IS NULL OR (v_lreset IS NOT NULL AND (w_reset[v_y] IS NULL OR w_reset[v_y] > v_lreset))) THEN
            o_limit[i] := 'account'; v_lwin := w_period[v_y]; v_lreset := w_reset[v_y];
          END IF;
        END LOOP;
        IF o_limit[i] IS NOT NULL THEN o_limit_acct[i] := k_acct[v_ref]; END IF;
      END IF;
      o_lwin[i] := v_lwin;
      IF o_limit[i] IS NOT NULL THEN
        o_outcome[i] := 'budget_exceeded';
        o_spent[i] := s_spent[v_k]; o_held[i] := s_held[v_k];
        CONTINUE;
      END IF;
    END IF;

    -- Accepted: a charge or an adjustment moves what the path and the account spent, a hold
    -- what they hold. (A counter taken past BIGINT fails the statement: numeric_value_out_of_range.)
    IF p_op[i] = 'hold' THEN
      FOR j IN k_from[v_ref]..k_to[v_ref] LOOP s_held[v_pos[j]] := s_held[v_pos[j]] + p_micros[i]; END LOOP;
      IF v_c IS NOT NULL THEN c_held[v_c] := c_held[v_c] + p_micros[i]; END IF;
    ELSE
      FOR j IN k_from[v_ref]..k_to[v_ref] LOOP s_spent[v_pos[j]] := s_spent[v_pos[j]] + p_micros[i]; END LOOP;
      IF v_c IS NOT NULL THEN c_spent[v_c] := c_spent[v_c] + p_micros[i]; END IF;
      FOR j IN k_wfrom[v_ref]..k_wto[v_ref] LOOP v_y := v_rwins[j]; w_spent[v_y] := GREATEST(w_spent[v_y] + p_micros[i], 0); END LOOP;
      v_moved := true;
      IF p_op[i] = 'adjust' THEN v_adjusted := true; END IF;
    END IF;
    -- Using a key is a charge or a hold on it; an adjustment is not.
    IF p_op[i] <> 'adjust' THEN
      s_touch[v_k] := true;
      v_touched := true;
    END IF;
    w_ord := array_append(w_ord, i);
    l_amount[i] := p_micros[i];
    o_outcome[i] := 'ok';
    o_spent[i] := s_spent[v_k]; o_held[i] := s_held[v_k];
    IF p_op[i] = 'hold' THEN
      v_holds := v_holds + 1;
      o_hold[i] := p_hold_id[i];
      o_expires[i] := v_now + p_ttl_ms[i] * interval '1 millisecond';
    END IF;
  END LOOP;

  -- Write once: counters, account counters, holds, then the ledger in item order. A batch
  -- that only took holds writes the keys' last use alone, without naming the package's columns
  -- (whose trigger then costs nothing). (A keys table made again from a schema file may have
  -- lost overage_micros's default: NULL is 0.)
  IF v_moved THEN
    UPDATE {{table}} k SET spent_micros = d.spent, budget_used_cents = {{schema}}agentkey_cents_up(d.spent),
        last_used_at = CASE WHEN d.touch THEN v_now ELSE k.last_used_at END, overage_micros = COALESCE(k.overage_micros, 0) + d.overage
      FROM unnest(s_id, s_spent, s_spent0, s_touch, s_overage) AS d(id, spent, spent0, touch, overage)
      WHERE (v_any OR k.account_id::text = p_account OR (p_account = '' AND k.account_id IS NULL)) AND k.id = ANY(s_id) AND k.id = d.id AND (d.spent <> d.spent0 OR d.touch);
  ELSIF v_touched THEN
    UPDATE {{table}} k SET last_used_at = v_now FROM unnest(s_id, s_touch) AS d(id, touch)
      WHERE (v_any OR k.account_id::text = p_account OR (p_account = '' AND k.account_id IS NULL)) AND k.id = ANY(s_id) AND k.id = d.id AND d.touch;
  END IF;
  IF w_spent IS DISTINCT FROM w_spent0 THEN
    UPDATE {{windows}} w SET spent_micros = d.spent, updated_at = v_now
      FROM unnest(w_id, w_spent, w_spent0) AS d(id, spent, spent0)
      WHERE (v_any OR w.account_id = p_account) AND w.id = ANY(w_id) AND w.id = d.id AND d.spent <> d.spent0;
  END IF;
  IF c_spent IS DISTINCT FROM c_spent0 THEN
    UPDATE {{accounts}} a SET spent_micros = d.spent
      FROM unnest(c_id, c_spent, c_spent0) AS d(id, spent, spent0)
      WHERE (v_any OR a.account_id = p_account) AND a.account_id = ANY(c_id) AND a.account_id = d.id AND d.spent <> d.spent0;
  END IF;
  IF v_holds > 0 THEN
    INSERT INTO {{holds}} (id, key_id, path, account_id, amount_micros, status, expires_at, idempotency_key, metadata, created_at)
      SELECT p_hold_id[w.o], k_id[p_ref[w.o]], v_paths[k_from[p_ref[w.o]]:k_to[p_ref[w.o]]], k_acct[p_ref[w.o]], p_micros[w.o], 'held',
             v_now + p_ttl_ms[w.o] * interval '1 millisecond', p_idem[w.o], p_meta[w.o], v_now
      FROM unnest(w_ord) AS w(o) WHERE p_op[w.o] = 'hold';
  END IF;
  IF h_dirty THEN
    UPDATE {{holds}} h SET status = d.status, committed_micros = d.committed, settled_at = d.settled,
        overage_micros = CASE WHEN d.status = 'committed' THEN d.overage END
      FROM unnest(p_hold, h_status, h_committed, h_settled, h_overage) AS d(id, status, committed, settled, overage)
      WHERE (v_any OR h.account_id = p_account) AND h.id = ANY(p_hold) AND h.id = d.id AND d.settled = v_now;
  END IF;
  IF cardinality(w_ord) > 0 THEN
    -- An LLM call's model goes on each of its rows, its token counts on the one with its cost.
    INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, reservation_id, idempotency_key, metadata, created_at, model, usage)
      SELECT k_id[p_ref[w.o]], k_acct[p_ref[w.o]], e.kind, e.amount, p_hold_id[w.o], p_idem[w.o], p_meta[w.o], v_now,
             p_usage[w.o] ->> 'model', CASE WHEN e.sub = 1 THEN p_usage[w.o] - 'model' END
      FROM unnest(w_ord) WITH ORDINALITY AS w(o, pos)
      -- A commit's overage follows it as a row of its own kind.
      CROSS JOIN LATERAL (VALUES (1, p_op[w.o], l_amount[w.o]), (2, 'overage', o_overage[w.o])) AS e(sub, kind, amount)
      WHERE e.sub = 1 OR (p_op[w.o] = 'commit' AND e.amount > 0)
      ORDER BY w.pos, e.sub;
  END IF;
  -- A commit's overage is an event for webhooks and handlers too (the outbox).
  IF v_overage THEN
    INSERT INTO {{outbox}} (type, account_id, key_id, data)
      SELECT 'overage.recorded', COALESCE(k_acct[p_ref[w.o]], ''), k_id[p_ref[w.o]],
             jsonb_build_object('key_id', k_id[p_ref[w.o]], 'account_id', COALESCE(k_acct[p_ref[w.o]], ''), 'hold_id', p_hold[p_ref[w.o]],
               'overage_micros', o_overage[w.o]::text, 'cost_micros', p_micros[w.o]::text,
               'limited_by', jsonb_build_object('kind', o_limit[w.o], 'key_id', o_limit_key[w.o], 'account_id', o_limit_acct[w.o], 'window', o_lwin[w.o]))
      FROM unnest(w_ord) WITH ORDINALITY AS w(o, pos) WHERE p_op[w.o] = 'commit' AND o_overage[w.o] > 0 ORDER BY w.pos;
  END IF;
  -- An adjustment is an operator's act: the event log has it too, with who made it.
  IF v_adjusted THEN
    INSERT INTO {{events}} (key_id, account_id, kind, actor, actor_key_id, changes)
      SELECT k_id[p_ref[w.o]], COALESCE(k_acct[p_ref[w.o]], ''), 'adjusted', a.actor, a.actor_key_id,
             jsonb_build_object('amount_micros', jsonb_build_object('after', p_micros[w.o]::text))
               || CASE WHEN p_meta[w.o] ? 'reason' THEN jsonb_build_object('reason', jsonb_build_object('after', p_meta[w.o] -> 'reason')) ELSE '{}' END
      FROM unnest(w_ord) WITH ORDINALITY AS w(o, pos) CROSS JOIN {{schema}}agentkey_event_actor() a
      WHERE p_op[w.o] = 'adjust' ORDER BY w.pos;
  END IF;
  -- Alerts: each window whose counter this batch took to or past one of its percents (the
  -- key's or account's own, else the table's) gets one event, with the figures after the
  -- batch; the dedupe name makes it once per window, period and percent.
  IF v_moved THEN
    IF v_global_json IS NOT NULL THEN
      v_global := ARRAY(SELECT jsonb_array_elements_text(v_global_json)::smallint);
    END IF;
    IF v_alerts OR v_global IS NOT NULL THEN
      INSERT INTO {{outbox}} (type, account_id, key_id, data, dedupe)
      SELECT 'budget.threshold', c.acct, c.key_id,
             jsonb_build_object('key_id', c.key_id, 'account_id', c.acct, 'window', c.win, 'percent', p.pct,
               'budget_micros', c.budget::text, 'spent_micros', c.spent::text, 'period_start_at', c.start, 'reset_at', c.reset),
             -- (The period's end as microseconds since the epoch: a time printed as text would follow the session's TimeZone.)
             jsonb_build_array('threshold', c.key_id, c.acct, c.win, floor(extract(epoch FROM c.reset) * 1000000)::bigint, p.pct)::text
      FROM (
        SELECT d.id AS key_id, COALESCE(k.account_id::text, '') AS acct, COALESCE(k.budget_period, 'lifetime') AS win, d.budget, d.spent,
               d.spent0, NULL::timestamptz AS start, k.budget_reset_at AS reset, COALESCE(k.alert_percents, v_global) AS pcts
          FROM unnest(s_id, s_budget, s_spent, s_spent0) AS d(id, budget, spent, spent0) JOIN {{table}} k ON (v_any OR k.account_id::text = p_account OR (p_account = '' AND k.account_id IS NULL)) AND k.id = d.id
          WHERE d.spent > d.spent0 AND d.budget IS NOT NULL
        UNION ALL
        SELECT NULL, d.id, COALESCE(a.budget_period, 'lifetime'), d.budget, d.spent, d.spent0, a.period_start_at, a.budget_reset_at,
               COALESCE(a.alert_percents, v_global)
          FROM unnest(c_id, c_budget, c_spent, c_spent0) AS d(id, budget, spent, spent0) JOIN {{accounts}} a ON (v_any OR a.account_id = p_account) AND a.account_id = d.id
          WHERE d.spent > d.spent0
        UNION ALL
        SELECT d.key_id, d.acct, d.win, d.budget, d.spent, d.spent0, d.start, d.reset,
               COALESCE(CASE WHEN d.key_id IS NULL THEN a.alert_percents ELSE k.alert_percents END, v_global)
          FROM unnest(w_key, w_acct, w_period, w_budget, w_spent, w_spent0, w_start, w_reset) AS d(key_id, acct, win, budget, spent, spent0, start, reset)
          LEFT JOIN {{table}} k ON (v_any OR k.account_id::text = p_account OR (p_account = '' AND k.account_id IS NULL)) AND k.id = d.key_id
          LEFT JOIN {{accounts}} a ON d.key_id IS NULL AND (v_any OR a.account_id = p_account) AND a.account_id = d.acct
          WHERE d.spent > d.spent0) c
      CROSS JOIN LATERAL (SELECT DISTINCT x::int AS pct FROM unnest(c.pcts) x) p
      WHERE c.spent0::numeric * 100 < p.pct::numeric * c.budget AND c.spent::numeric * 100 >= p.pct::numeric * c.budget
      ORDER BY c.key_id NULLS LAST, c.acct, c.win, p.pct
      -- No conflict target: the one unique index is (dedupe) here and (account_id, dedupe)
      -- on Citus (docs/scaling.md); the dedupe text names the account, so both allow the same rows.
      ON CONFLICT DO NOTHING;
    END IF;
  END IF;
  -- What a key's own windows past the first leave, after the batch (for its figures).
  IF v_wins THEN
    FOR i IN 1..n LOOP
      CONTINUE WHEN o_key[i] IS NULL;
      v_k := array_position(s_id, o_key[i]);
      FOR y IN 1..cardinality(w_id) LOOP
        IF w_key[y] = o_key[i] AND (o_wroom[i] IS NULL OR w_budget[y] - w_spent[y] - s_held[v_k] < o_wroom[i]) THEN
          o_wroom[i] := w_budget[y] - w_spent[y] - s_held[v_k];
        END IF;
      END LOOP;
    END LOOP;
  END IF;
  -- One row of arrays, one entry per item: cheaper than a row per item. Then, per key named
  -- (by p_ref), its path and account, so a cache can move what the budgets above it leave.
  RETURN QUERY SELECT o_outcome, o_key, o_budget, o_spent, o_held, o_hold, o_expires, o_status,
                      o_limit, o_limit_key, o_limit_acct, o_hamount, o_committed, o_released, o_expired, o_over, v_now, o_overage,
                      v_refpaths, k_acct, o_lwin, o_wroom, v_refwins;
END $fn$;
