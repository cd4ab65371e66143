import type { Definition, IndexSpec } from './catalog.js';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/**
 * Version 3: delegation trees and account ceilings. Keys get their parent and the ids
 * of all their ancestors (fixed at creation); accounts get an optional ceiling row.
 */
export async function createTrees(tx: Db, t: TableNames): Promise<void> {
  await tx.query(`ALTER TABLE ${t.table}
    ADD COLUMN IF NOT EXISTS parent_id BIGINT,
    ADD COLUMN IF NOT EXISTS ancestor_ids BIGINT[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS depth INTEGER NOT NULL DEFAULT 0`);
  await tx.query(`CREATE TABLE IF NOT EXISTS ${t.accounts} (
    account_id TEXT PRIMARY KEY,
    budget_micros BIGINT NOT NULL,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    budget_period TEXT CHECK (budget_period IN ('day', 'month')),
    period_start_at TIMESTAMPTZ,
    budget_reset_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
  await tx.query(`ALTER TABLE ${t.holds}
    ADD COLUMN IF NOT EXISTS path BIGINT[],
    ADD COLUMN IF NOT EXISTS account_id TEXT`);
  await tx.query(`UPDATE ${t.holds} h SET path = ARRAY[h.key_id], account_id = k.account_id::text
    FROM ${t.table} k WHERE k.id = h.key_id AND h.path IS NULL`);
  // An account's period reset is a ledger row of the account, with no key.
  await tx.query(`ALTER TABLE ${t.ledger} ALTER COLUMN key_id DROP NOT NULL`);
}

export function treeIndexes(t: TableNames): IndexSpec[] {
  const i = t.indexBase;
  const held = "WHERE (status = 'held'::text)";
  return [
    { table: t.table, name: `${i}_parent_idx`, definition: 'USING btree (parent_id) WHERE (parent_id IS NOT NULL)' },
    { table: t.table, name: `${i}_ancestors_idx`, definition: 'USING gin (ancestor_ids)' },
    { table: t.holds, name: `${i}_holds_path_idx`, definition: `USING gin (path) ${held}` },
    { table: t.holds, name: `${i}_holds_account_idx`, definition: `USING btree (account_id, expires_at) ${held}` },
  ];
}

/**
 * The spend and settle functions lock every budget a step touches (the key, each
 * ancestor, the account), check them all and change all or none; and the calendar
 * periods of account ceilings.
 */
export function treeFunctions(t: TableNames): Definition[] {
  const defs: Definition[] = [];
  // Start and end of the calendar period (UTC) that contains `at`: accounts bill by calendar.
  defs.push({
    kind: 'function',
    signature: `${t.schema}agentkey_period_start(text, timestamptz)`,
    sql: `CREATE OR REPLACE FUNCTION ${t.schema}agentkey_period_start(period TEXT, at TIMESTAMPTZ)
    RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $fn$
      SELECT date_trunc(period, at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    $fn$`,
  });
  defs.push({
    kind: 'function',
    signature: `${t.schema}agentkey_period_end(text, timestamptz)`,
    sql: `CREATE OR REPLACE FUNCTION ${t.schema}agentkey_period_end(period TEXT, at TIMESTAMPTZ)
    RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $fn$
      SELECT (date_trunc(period, at AT TIME ZONE 'UTC') + ('1 ' || period)::interval) AT TIME ZONE 'UTC'
    $fn$`,
  });

  const lockAndRoll = `
      -- Every budget this step touches is locked in one global order (keys by id, then the
      -- account), so concurrent steps queue instead of deadlocking.
      PERFORM 1 FROM ${t.table} WHERE id = ANY(v_nodes) ORDER BY id FOR UPDATE;
      SELECT * INTO a FROM ${t.accounts} WHERE account_id = v_account FOR UPDATE;
      -- Read the clock after the locks: whoever holds a budget later sees a later time.
      v_now := clock_timestamp();
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, created_at)
        SELECT id, account_id::text, 'reset', -spent_micros, v_now FROM ${t.table}
        WHERE id = ANY(v_nodes) AND budget_period IS NOT NULL AND budget_reset_at <= v_now AND spent_micros <> 0;
      UPDATE ${t.table} SET spent_micros = 0, budget_used_cents = 0,
        budget_reset_at = ${t.nextReset}(budget_period, COALESCE(budget_anchor_at, created_at), v_now)
        WHERE id = ANY(v_nodes) AND budget_period IS NOT NULL AND budget_reset_at <= v_now;
      IF a.account_id IS NOT NULL AND a.budget_period IS NOT NULL AND a.budget_reset_at <= v_now THEN
        IF a.spent_micros <> 0 THEN
          INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, created_at)
          VALUES (NULL, a.account_id, 'reset', -a.spent_micros, v_now);
        END IF;
        UPDATE ${t.accounts} SET spent_micros = 0,
          period_start_at = ${t.schema}agentkey_period_start(a.budget_period, v_now),
          budget_reset_at = ${t.schema}agentkey_period_end(a.budget_period, v_now)
          WHERE account_id = a.account_id
          RETURNING * INTO a;
      END IF;
      -- Holds past their time stop counting at once; sweeping this key's just tidies up.
      WITH swept AS (
        UPDATE ${t.holds} SET status = 'expired', settled_at = v_now
        WHERE key_id = v_key AND status = 'held' AND expires_at <= v_now
        RETURNING id, amount_micros)
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, created_at)
      SELECT v_key, v_account, 'expire', -amount_micros, id, v_now FROM swept;
      SELECT * INTO k FROM ${t.table} WHERE id = v_key;
      SELECT COALESCE(sum(amount_micros), 0) INTO v_held FROM ${t.holds}
        WHERE status = 'held' AND expires_at > v_now AND path @> ARRAY[v_key];`;

  // The tightest budget among the key, its ancestors and the account that `p_micros` more would pass.
  const findLimit = (extra: string) => `
      SELECT n.id, n.depth INTO lim FROM ${t.table} n
        LEFT JOIN LATERAL (SELECT COALESCE(sum(amount_micros), 0) AS held FROM ${t.holds}
                           WHERE status = 'held' AND expires_at > v_now AND path @> ARRAY[n.id::bigint]) live ON true
        WHERE n.id = ANY(v_nodes) AND n.budget_micros IS NOT NULL
          AND n.spent_micros + live.held + ${extra} > n.budget_micros
        ORDER BY n.depth DESC LIMIT 1;
      v_limit := CASE WHEN lim.id IS NULL THEN NULL WHEN lim.id = v_key THEN 'key' ELSE 'ancestor' END;
      IF v_limit IS NULL AND a.account_id IS NOT NULL THEN
        SELECT COALESCE(sum(amount_micros), 0) INTO v_acct_held FROM ${t.holds}
          WHERE status = 'held' AND expires_at > v_now AND account_id = v_account;
        IF a.spent_micros + v_acct_held + ${extra} > a.budget_micros THEN v_limit := 'account'; END IF;
      END IF;`;

  const addSpend = (amount: string) => `
      UPDATE ${t.table} SET spent_micros = spent_micros + ${amount},
        budget_used_cents = ${t.centsUp}(spent_micros + ${amount})
        WHERE id = ANY(v_nodes);
      UPDATE ${t.accounts} SET spent_micros = spent_micros + ${amount} WHERE account_id = v_account RETURNING * INTO a;
      SELECT * INTO k FROM ${t.table} WHERE id = v_key;`;

  // What every budget over the key still leaves (budget - spent - live holds): the tightest
  // one, deepest first on a tie, then the account's if it leaves less. v_room is NULL when
  // nothing over the key has a budget.
  const findRoom = `
      SELECT n.id, n.budget_micros - n.spent_micros - COALESCE(live.held, 0) AS room INTO lim FROM ${t.table} n
        LEFT JOIN LATERAL (SELECT sum(amount_micros) AS held FROM ${t.holds}
                           WHERE status = 'held' AND expires_at > v_now AND path @> ARRAY[n.id::bigint]) live ON true
        WHERE n.id = ANY(v_nodes) AND n.budget_micros IS NOT NULL
        ORDER BY 2, n.depth DESC LIMIT 1;
      v_room := lim.room;
      v_limit := CASE WHEN lim.id IS NULL THEN NULL WHEN lim.id = v_key THEN 'key' ELSE 'ancestor' END;
      IF a.account_id IS NOT NULL THEN
        SELECT COALESCE(sum(amount_micros), 0) INTO v_acct_held FROM ${t.holds}
          WHERE status = 'held' AND expires_at > v_now AND account_id = v_account;
        IF v_room IS NULL OR a.budget_micros - a.spent_micros - v_acct_held < v_room THEN
          v_room := a.budget_micros - a.spent_micros - v_acct_held;
          v_limit := 'account';
        END IF;
      END IF;`;

  // The key's path (ancestors, then itself) and account let a cache move what the budgets above it leave.
  // 'at' (ms, read after the locks) orders these figures against those of other steps on the key.
  // The counters go as text: a JSON number past 2^53 would lose digits when parsed.
  const figures = `'key_id', v_key, 'budget', k.budget_micros, 'spent', k.spent_micros::text, 'held', v_held::text, 'path', v_nodes, 'account_id', v_account,
          'at', extract(epoch FROM v_now) * 1000`;
  const limitFields = `'limit', v_limit, 'limit_key_id', CASE WHEN v_limit IN ('key', 'ancestor') THEN lim.id END,
          'limit_account_id', CASE WHEN v_limit = 'account' THEN v_account END`;
  const declare = `k RECORD; a RECORD; lim RECORD; prior RECORD; v_key BIGINT; v_account TEXT; v_nodes BIGINT[];
      v_now TIMESTAMPTZ; v_held BIGINT; v_acct_held BIGINT; v_limit TEXT; v_state TEXT; v_expires TIMESTAMPTZ;
      v_room BIGINT; v_charge BIGINT; v_overage BIGINT;`;

  defs.push({
    kind: 'function',
    signature: `${t.spendFn}(text, text, bigint, text, bigint, text, jsonb, text, bigint)`,
    // Plans are kept generic: the statements are the same every call, and planning them
    // afresh each time cost more than running them.
    sql: `CREATE OR REPLACE FUNCTION ${t.spendFn}(
      p_hash TEXT, p_subject TEXT, p_id BIGINT, p_op TEXT, p_micros BIGINT,
      p_idem TEXT, p_meta JSONB, p_hold_id TEXT, p_ttl_ms BIGINT)
    RETURNS JSONB LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
    #variable_conflict use_variable
    DECLARE ${declare}
    BEGIN
      IF p_hash IS NOT NULL THEN
        SELECT id, account_id::text AS account, ancestor_ids INTO k FROM ${t.table} WHERE key_hash = p_hash;
      ELSIF p_subject IS NOT NULL THEN
        SELECT id, account_id::text AS account, ancestor_ids INTO k FROM ${t.table} WHERE external_subject = p_subject;
      ELSE
        SELECT id, account_id::text AS account, ancestor_ids INTO k FROM ${t.table} WHERE id = p_id;
      END IF;
      IF NOT FOUND THEN RETURN jsonb_build_object('outcome', 'invalid'); END IF;
      v_key := k.id; v_account := k.account; v_nodes := k.ancestor_ids || k.id;
      ${lockAndRoll}
      IF p_op <> 'adjust' THEN
        -- A revoked or expired ancestor stops the whole subtree.
        SELECT CASE WHEN bool_or(revoked_at IS NOT NULL) THEN 'revoked'
                    WHEN bool_or(expires_at IS NOT NULL AND expires_at <= v_now) THEN 'expired' END
          INTO v_state FROM ${t.table} WHERE id = ANY(v_nodes);
        IF v_state IS NOT NULL THEN RETURN jsonb_build_object('outcome', v_state); END IF;
      END IF;
      IF p_idem IS NOT NULL AND p_op = 'charge' THEN
        SELECT amount_micros INTO prior FROM ${t.ledger}
        WHERE key_id = v_key AND idempotency_key = p_idem AND kind = 'charge';
        IF FOUND THEN
          RETURN jsonb_build_object('outcome', CASE WHEN prior.amount_micros = p_micros THEN 'replayed' ELSE 'idempotency_conflict' END, ${figures});
        END IF;
      ELSIF p_idem IS NOT NULL AND p_op = 'hold' THEN
        SELECT id, amount_micros, expires_at, status INTO prior FROM ${t.holds}
        WHERE key_id = v_key AND idempotency_key = p_idem;
        IF FOUND THEN
          RETURN jsonb_build_object('outcome', CASE WHEN prior.amount_micros = p_micros THEN 'replayed' ELSE 'idempotency_conflict' END,
            'hold_id', prior.id, 'expires_at', prior.expires_at, 'status', prior.status, ${figures});
        END IF;
      END IF;
      IF p_op = 'adjust' THEN
        IF EXISTS (SELECT 1 FROM ${t.table} WHERE id = ANY(v_nodes) AND spent_micros + p_micros < 0)
           OR (a.account_id IS NOT NULL AND a.spent_micros + p_micros < 0) THEN
          RETURN jsonb_build_object('outcome', 'refund_exceeds_spend', ${figures});
        END IF;
      ELSE
        ${findLimit('p_micros')}
        IF v_limit IS NOT NULL THEN
          RETURN jsonb_build_object('outcome', 'budget_exceeded', ${figures}, ${limitFields});
        END IF;
      END IF;
      IF p_op = 'hold' THEN
        v_expires := v_now + p_ttl_ms * interval '1 millisecond';
        INSERT INTO ${t.holds} (id, key_id, path, account_id, amount_micros, status, expires_at, idempotency_key, metadata, created_at)
        VALUES (p_hold_id, v_key, v_nodes, v_account, p_micros, 'held', v_expires, p_idem, p_meta, v_now);
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, idempotency_key, metadata, created_at)
        VALUES (v_key, v_account, 'hold', p_micros, p_hold_id, p_idem, p_meta, v_now);
        v_held := v_held + p_micros;
        UPDATE ${t.table} SET last_used_at = v_now WHERE id = v_key;
      ELSE
        ${addSpend('p_micros')}
        IF p_op = 'charge' THEN UPDATE ${t.table} SET last_used_at = v_now WHERE id = v_key; END IF;
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, idempotency_key, metadata, created_at)
        VALUES (v_key, v_account, p_op, p_micros, p_idem, p_meta, v_now);
      END IF;
      RETURN jsonb_build_object('outcome', 'ok', 'hold_id', p_hold_id, 'expires_at', v_expires, ${figures});
    END $fn$`,
  });

  defs.push({
    kind: 'function',
    signature: `${t.settleFn}(text, text, bigint, jsonb)`,
    sql: `CREATE OR REPLACE FUNCTION ${t.settleFn}(p_hold_id TEXT, p_op TEXT, p_micros BIGINT, p_meta JSONB)
    RETURNS JSONB LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
    #variable_conflict use_variable
    DECLARE ${declare} h RECORD; v_live BOOLEAN;
    BEGIN
      SELECT key_id, path, account_id INTO h FROM ${t.holds} WHERE id = p_hold_id;
      IF NOT FOUND THEN RETURN jsonb_build_object('outcome', 'not_found'); END IF;
      v_key := h.key_id; v_account := h.account_id; v_nodes := h.path;
      -- The budgets first, then the hold: the same order as reserve, so the two never deadlock.
      ${lockAndRoll}
      SELECT * INTO h FROM ${t.holds} WHERE id = p_hold_id FOR UPDATE;
      IF h.status = 'committed' THEN
        -- A second commit replays the first only when it asks for the same cost.
        RETURN jsonb_build_object('outcome', CASE WHEN p_op <> 'commit' THEN 'already_committed'
                                                  WHEN h.committed_micros = p_micros THEN 'replayed' ELSE 'idempotency_conflict' END,
          'hold', h.amount_micros, 'committed', h.committed_micros, 'overage', COALESCE(h.overage_micros, 0),
          'expired', h.settled_at >= h.expires_at, ${figures});
      ELSIF h.status = 'released' THEN
        RETURN jsonb_build_object('outcome', CASE WHEN p_op = 'release' THEN 'replayed' ELSE 'already_released' END,
          'hold', h.amount_micros, 'released', h.amount_micros, ${figures});
      END IF;
      v_live := h.status = 'held' AND h.expires_at > v_now;
      IF p_op = 'release' THEN
        IF NOT v_live THEN
          -- Nothing to give back (its expiry did), and nothing replayed either.
          RETURN jsonb_build_object('outcome', 'ok', 'expired', true, 'hold', h.amount_micros, 'released', 0, ${figures});
        END IF;
        UPDATE ${t.holds} SET status = 'released', settled_at = v_now WHERE id = h.id;
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, created_at)
        VALUES (v_key, v_account, 'release', -h.amount_micros, h.id, v_now);
        v_held := v_held - h.amount_micros;
        RETURN jsonb_build_object('outcome', 'ok', 'hold', h.amount_micros, 'released', h.amount_micros, ${figures});
      END IF;
      -- A commit records the real cost, and counts against the budgets only what they can
      -- take: the hold gives its money back first, then the cost is charged up to what every
      -- budget over the key leaves. The rest, if any, is overage: recorded, never counted.
      IF v_live THEN v_held := v_held - h.amount_micros; END IF;
      UPDATE ${t.holds} SET status = 'committed', committed_micros = p_micros, settled_at = v_now WHERE id = h.id;
      ${findRoom}
      v_charge := CASE WHEN v_room IS NULL THEN p_micros ELSE LEAST(p_micros, GREATEST(v_room, 0)) END;
      v_overage := p_micros - v_charge;
      IF v_overage = 0 THEN v_limit := NULL; END IF;
      ${addSpend('v_charge')}
      UPDATE ${t.table} SET last_used_at = v_now, overage_micros = overage_micros + v_overage WHERE id = v_key;
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, metadata, created_at)
      VALUES (v_key, v_account, 'commit', v_charge, h.id, p_meta, v_now);
      IF v_overage > 0 THEN
        UPDATE ${t.holds} SET overage_micros = v_overage WHERE id = h.id;
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, metadata, created_at)
        VALUES (v_key, v_account, 'overage', v_overage, h.id, p_meta, v_now);
      END IF;
      RETURN jsonb_build_object('outcome', 'ok', 'expired', NOT v_live, 'hold', h.amount_micros, 'committed', p_micros,
        'overage', v_overage, 'over_budget', v_overage > 0, ${figures}, ${limitFields});
    END $fn$`,
  });
  return defs;
}
