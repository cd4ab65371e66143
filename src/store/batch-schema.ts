import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/** Columns whose change makes a cached validation stale (spend counters and last use do not). */
const WATCHED = [
  'key_hash', 'external_subject', 'account_id', 'name', 'scopes', 'budget_micros', 'budget_cents', 'budget_period',
  'budget_anchor_at', 'expires_at', 'revoked_at', 'delegated_by', 'user_id', 'parent_id', 'ancestor_ids',
];

/**
 * Version 4: the batch spend function and change notifications.
 *
 * `<table>_spend_many` takes many charges and holds and settles them in one statement,
 * with the outcome each would have had run one after another in the order given: it locks
 * every key, ancestor and account the batch touches (keys by id, then accounts: the same
 * global order as every other writer), rolls periods, then decides item by item on
 * counters held in variables, and writes counters, holds and ledger rows once each.
 *
 * A trigger announces changes to keys on a NOTIFY channel, so caches in every process
 * drop them at once.
 */
export async function createBatching(tx: Db, t: TableNames): Promise<void> {
  await tx.query(`CREATE OR REPLACE FUNCTION ${t.schema}agentkey_notify_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(TG_ARGV[0], OLD.id::text);
      ELSE
        PERFORM pg_notify(TG_ARGV[0], NEW.id::text);
      END IF;
      RETURN NULL;
    END $fn$`);
  const cols = (side: string) => WATCHED.map((c) => `${side}.${c}`).join(', ');
  await tx.query(`DROP TRIGGER IF EXISTS agentkey_changed ON ${t.table}`);
  await tx.query(`CREATE TRIGGER agentkey_changed AFTER UPDATE ON ${t.table} FOR EACH ROW
    WHEN ((${cols('OLD')}) IS DISTINCT FROM (${cols('NEW')}))
    EXECUTE FUNCTION ${t.schema}agentkey_notify_change('${t.channel}')`);
  await tx.query(`DROP TRIGGER IF EXISTS agentkey_deleted ON ${t.table}`);
  await tx.query(`CREATE TRIGGER agentkey_deleted AFTER DELETE ON ${t.table} FOR EACH ROW
    EXECUTE FUNCTION ${t.schema}agentkey_notify_change('${t.channel}')`);

  const figures = `'key_id', v_key, 'budget', s_budget[v_k], 'spent', s_spent[v_k], 'held', s_held[v_k]`;
  await tx.query(`CREATE OR REPLACE FUNCTION ${t.spendManyFn}(
      p_hash TEXT[], p_subject TEXT[], p_id BIGINT[], p_op TEXT[], p_micros BIGINT[],
      p_idem TEXT[], p_meta JSONB[], p_hold_id TEXT[], p_ttl_ms BIGINT[])
    RETURNS JSONB LANGUAGE plpgsql AS $fn$
    #variable_conflict use_variable
    DECLARE
      n INT := COALESCE(cardinality(p_op), 0);
      r RECORD; prior RECORD;
      -- Per item: its key, account and path (ancestors then the key) as a slice of v_paths.
      i_key BIGINT[] := '{}'; i_acct TEXT[] := '{}'; i_from INT[] := '{}'; i_to INT[] := '{}';
      v_paths BIGINT[] := '{}'; v_nodes BIGINT[]; v_accts TEXT[];
      -- Per key node and per account: the counters, updated as items are accepted.
      s_id BIGINT[]; s_budget BIGINT[]; s_spent BIGINT[]; s_spent0 BIGINT[]; s_held BIGINT[];
      s_depth INT[]; s_state TEXT[]; s_touch BOOLEAN[];
      c_id TEXT[]; c_budget BIGINT[]; c_spent BIGINT[]; c_spent0 BIGINT[]; c_held BIGINT[];
      -- Accepted items, in order.
      w_ord INT[] := '{}';
      v_out JSONB[] := '{}';
      v_now TIMESTAMPTZ; v_key BIGINT; v_k INT; v_c INT; v_x INT; v_lim INT; v_prior INT;
      v_state TEXT; v_limit TEXT;
    BEGIN
      FOR i IN 1..n LOOP
        IF p_op[i] NOT IN ('charge', 'hold') THEN
          RAISE EXCEPTION 'agentkey spend_many: unknown op %', p_op[i] USING ERRCODE = '22023';
        END IF;
      END LOOP;
      FOR r IN SELECT u.ord, k.id, k.account_id, k.ancestor_ids
        FROM unnest(p_hash, p_subject, p_id) WITH ORDINALITY AS u(h, s, kid, ord)
        LEFT JOIN LATERAL (
          SELECT id, account_id::text AS account_id, ancestor_ids FROM ${t.table} WHERE key_hash = u.h
          UNION ALL SELECT id, account_id::text, ancestor_ids FROM ${t.table} WHERE external_subject = u.s
          UNION ALL SELECT id, account_id::text, ancestor_ids FROM ${t.table} WHERE id = u.kid
          LIMIT 1) k ON true
        ORDER BY u.ord
      LOOP
        i_key := array_append(i_key, r.id);
        i_acct := array_append(i_acct, r.account_id);
        i_from := array_append(i_from, cardinality(v_paths) + 1);
        IF r.id IS NOT NULL THEN v_paths := v_paths || r.ancestor_ids || r.id; END IF;
        i_to := array_append(i_to, cardinality(v_paths));
      END LOOP;

      -- Every budget the batch touches, locked in the one global order: keys by id, then accounts.
      v_nodes := ARRAY(SELECT DISTINCT x FROM unnest(v_paths) x ORDER BY x);
      v_accts := ARRAY(SELECT DISTINCT x FROM unnest(i_acct) x WHERE x IS NOT NULL ORDER BY x);
      PERFORM 1 FROM ${t.table} WHERE id = ANY(v_nodes) ORDER BY id FOR UPDATE;
      PERFORM 1 FROM ${t.accounts} WHERE account_id = ANY(v_accts) ORDER BY account_id FOR UPDATE;
      v_now := clock_timestamp();

      -- Periods that ended start again (with a reset row in the ledger); expired holds end.
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, created_at)
        SELECT id, account_id::text, 'reset', -spent_micros, v_now FROM ${t.table}
        WHERE id = ANY(v_nodes) AND budget_period IS NOT NULL AND budget_reset_at <= v_now AND spent_micros <> 0
        ORDER BY id;
      UPDATE ${t.table} SET spent_micros = 0, budget_used_cents = 0,
        budget_reset_at = ${t.nextReset}(budget_period, COALESCE(budget_anchor_at, created_at), v_now)
        WHERE id = ANY(v_nodes) AND budget_period IS NOT NULL AND budget_reset_at <= v_now;
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, created_at)
        SELECT NULL, account_id, 'reset', -spent_micros, v_now FROM ${t.accounts}
        WHERE account_id = ANY(v_accts) AND budget_period IS NOT NULL AND budget_reset_at <= v_now AND spent_micros <> 0
        ORDER BY account_id;
      UPDATE ${t.accounts} SET spent_micros = 0,
        period_start_at = ${t.schema}agentkey_period_start(budget_period, v_now),
        budget_reset_at = ${t.schema}agentkey_period_end(budget_period, v_now)
        WHERE account_id = ANY(v_accts) AND budget_period IS NOT NULL AND budget_reset_at <= v_now;
      WITH swept AS (
        UPDATE ${t.holds} h SET status = 'expired', settled_at = v_now
        WHERE h.key_id = ANY(i_key) AND h.status = 'held' AND h.expires_at <= v_now
        RETURNING h.id, h.key_id, h.amount_micros)
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, created_at)
      SELECT s.key_id, k.account_id::text, 'expire', -s.amount_micros, s.id, v_now
      FROM swept s JOIN ${t.table} k ON k.id = s.key_id ORDER BY s.key_id, s.id;

      SELECT COALESCE(array_agg(n.id ORDER BY n.id), '{}'), COALESCE(array_agg(n.budget_micros ORDER BY n.id), '{}'),
             COALESCE(array_agg(n.spent_micros ORDER BY n.id), '{}'), COALESCE(array_agg(COALESCE(live.held, 0) ORDER BY n.id), '{}'),
             COALESCE(array_agg(n.depth ORDER BY n.id), '{}'),
             COALESCE(array_agg(CASE WHEN n.revoked_at IS NOT NULL THEN 'revoked'
                                     WHEN n.expires_at IS NOT NULL AND n.expires_at <= v_now THEN 'expired' END ORDER BY n.id), '{}')
        INTO s_id, s_budget, s_spent, s_held, s_depth, s_state
        FROM ${t.table} n
        LEFT JOIN LATERAL (SELECT sum(amount_micros)::bigint AS held FROM ${t.holds}
                           WHERE status = 'held' AND expires_at > v_now AND path @> ARRAY[n.id::bigint]) live ON true
        WHERE n.id = ANY(v_nodes);
      s_spent0 := s_spent;
      s_touch := array_fill(false, ARRAY[cardinality(s_id)]);
      SELECT COALESCE(array_agg(a.account_id ORDER BY a.account_id), '{}'), COALESCE(array_agg(a.budget_micros ORDER BY a.account_id), '{}'),
             COALESCE(array_agg(a.spent_micros ORDER BY a.account_id), '{}'), COALESCE(array_agg(COALESCE(live.held, 0) ORDER BY a.account_id), '{}')
        INTO c_id, c_budget, c_spent, c_held
        FROM ${t.accounts} a
        LEFT JOIN LATERAL (SELECT sum(amount_micros)::bigint AS held FROM ${t.holds}
                           WHERE status = 'held' AND expires_at > v_now AND account_id = a.account_id) live ON true
        WHERE a.account_id = ANY(v_accts);
      c_spent0 := c_spent;

      FOR i IN 1..n LOOP
        v_key := i_key[i];
        IF v_key IS NULL THEN
          v_out := array_append(v_out, jsonb_build_object('outcome', 'invalid'));
          CONTINUE;
        END IF;
        v_k := array_position(s_id, v_key);
        v_c := array_position(c_id, i_acct[i]);

        -- A revoked or expired ancestor stops the whole subtree; revoked says more than expired.
        v_state := NULL;
        FOR j IN i_from[i]..i_to[i] LOOP
          v_x := array_position(s_id, v_paths[j]);
          IF s_state[v_x] = 'revoked' THEN v_state := 'revoked'; EXIT; END IF;
          IF s_state[v_x] = 'expired' THEN v_state := 'expired'; END IF;
        END LOOP;
        IF v_state IS NOT NULL THEN
          v_out := array_append(v_out, jsonb_build_object('outcome', v_state));
          CONTINUE;
        END IF;

        -- A retry: first an earlier item of this batch, then what is already stored.
        IF p_idem[i] IS NOT NULL THEN
          v_prior := NULL;
          FOR j IN 1..cardinality(w_ord) LOOP
            IF i_key[w_ord[j]] = v_key AND p_op[w_ord[j]] = p_op[i] AND p_idem[w_ord[j]] = p_idem[i] THEN
              v_prior := w_ord[j];
              EXIT;
            END IF;
          END LOOP;
          IF v_prior IS NOT NULL AND p_op[i] = 'charge' THEN
            v_out := array_append(v_out, jsonb_build_object(
              'outcome', CASE WHEN p_micros[v_prior] = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END, ${figures}));
            CONTINUE;
          ELSIF v_prior IS NOT NULL THEN
            v_out := array_append(v_out, jsonb_build_object(
              'outcome', CASE WHEN p_micros[v_prior] = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END,
              'hold_id', p_hold_id[v_prior], 'expires_at', v_now + p_ttl_ms[v_prior] * interval '1 millisecond',
              'status', 'held', ${figures}));
            CONTINUE;
          ELSIF p_op[i] = 'charge' THEN
            SELECT amount_micros INTO prior FROM ${t.ledger}
              WHERE key_id = v_key AND idempotency_key = p_idem[i] AND kind = 'charge';
            IF FOUND THEN
              v_out := array_append(v_out, jsonb_build_object(
                'outcome', CASE WHEN prior.amount_micros = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END, ${figures}));
              CONTINUE;
            END IF;
          ELSE
            SELECT id, amount_micros, expires_at, status INTO prior FROM ${t.holds}
              WHERE key_id = v_key AND idempotency_key = p_idem[i];
            IF FOUND THEN
              v_out := array_append(v_out, jsonb_build_object(
                'outcome', CASE WHEN prior.amount_micros = p_micros[i] THEN 'replayed' ELSE 'idempotency_conflict' END,
                'hold_id', prior.id, 'expires_at', prior.expires_at, 'status', prior.status, ${figures}));
              CONTINUE;
            END IF;
          END IF;
        END IF;

        -- The tightest budget this item would pass: the deepest key on its path, then the account.
        v_lim := NULL;
        FOR j IN i_from[i]..i_to[i] LOOP
          v_x := array_position(s_id, v_paths[j]);
          IF s_budget[v_x] IS NOT NULL AND s_spent[v_x] + s_held[v_x] + p_micros[i] > s_budget[v_x]
             AND (v_lim IS NULL OR s_depth[v_x] > s_depth[v_lim]) THEN
            v_lim := v_x;
          END IF;
        END LOOP;
        v_limit := CASE WHEN v_lim IS NULL THEN NULL WHEN s_id[v_lim] = v_key THEN 'key' ELSE 'ancestor' END;
        IF v_limit IS NULL AND v_c IS NOT NULL AND c_spent[v_c] + c_held[v_c] + p_micros[i] > c_budget[v_c] THEN
          v_limit := 'account';
        END IF;
        IF v_limit IS NOT NULL THEN
          v_out := array_append(v_out, jsonb_build_object('outcome', 'budget_exceeded', ${figures},
            'limit', v_limit, 'limit_key_id', CASE WHEN v_lim IS NOT NULL THEN s_id[v_lim] END,
            'limit_account_id', CASE WHEN v_limit = 'account' THEN i_acct[i] END));
          CONTINUE;
        END IF;

        FOR j IN i_from[i]..i_to[i] LOOP
          v_x := array_position(s_id, v_paths[j]);
          IF p_op[i] = 'charge' THEN s_spent[v_x] := s_spent[v_x] + p_micros[i];
          ELSE s_held[v_x] := s_held[v_x] + p_micros[i]; END IF;
        END LOOP;
        IF v_c IS NOT NULL THEN
          IF p_op[i] = 'charge' THEN c_spent[v_c] := c_spent[v_c] + p_micros[i];
          ELSE c_held[v_c] := c_held[v_c] + p_micros[i]; END IF;
        END IF;
        s_touch[v_k] := true;
        w_ord := array_append(w_ord, i);
        v_out := array_append(v_out, jsonb_build_object('outcome', 'ok', 'hold_id', p_hold_id[i],
          'expires_at', CASE WHEN p_op[i] = 'hold' THEN v_now + p_ttl_ms[i] * interval '1 millisecond' END, ${figures}));
      END LOOP;

      -- Write once: counters, account counters, holds, then the ledger in item order.
      UPDATE ${t.table} k SET spent_micros = d.spent, budget_used_cents = d.spent / 10000.0,
          last_used_at = CASE WHEN d.touch THEN v_now ELSE k.last_used_at END
        FROM unnest(s_id, s_spent, s_spent0, s_touch) AS d(id, spent, spent0, touch)
        WHERE k.id = d.id AND (d.spent <> d.spent0 OR d.touch);
      UPDATE ${t.accounts} a SET spent_micros = d.spent
        FROM unnest(c_id, c_spent, c_spent0) AS d(id, spent, spent0)
        WHERE a.account_id = d.id AND d.spent <> d.spent0;
      INSERT INTO ${t.holds} (id, key_id, path, account_id, amount_micros, status, expires_at, idempotency_key, metadata, created_at)
        SELECT p_hold_id[w.o], i_key[w.o], v_paths[i_from[w.o]:i_to[w.o]], i_acct[w.o], p_micros[w.o], 'held',
               v_now + p_ttl_ms[w.o] * interval '1 millisecond', p_idem[w.o], p_meta[w.o], v_now
        FROM unnest(w_ord) AS w(o) WHERE p_op[w.o] = 'hold';
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, idempotency_key, metadata, created_at)
        SELECT i_key[w.o], i_acct[w.o], p_op[w.o], p_micros[w.o], p_hold_id[w.o], p_idem[w.o], p_meta[w.o], v_now
        FROM unnest(w_ord) WITH ORDINALITY AS w(o, pos) ORDER BY w.pos;
      RETURN to_jsonb(v_out);
    END $fn$`);
}
