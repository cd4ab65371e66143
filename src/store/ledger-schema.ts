import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/** Ledger kinds that change a key's spend; the others (hold, release, expire) change what is held. */
export const SPEND_KINDS = ['charge', 'commit', 'adjust', 'reset'] as const;

/**
 * Version 2: the append-only usage ledger, the holds table, and the two PL/pgSQL
 * functions that are the only writers of spend. Each function locks the key row first,
 * so every check that follows (period, holds, idempotency, budget) sees the latest
 * committed state, and the whole step is one round trip.
 */
export async function createLedger(tx: Db, t: TableNames): Promise<void> {
  const i = t.indexBase;
  await tx.query(`CREATE TABLE IF NOT EXISTS ${t.ledger} (
    id BIGSERIAL PRIMARY KEY,
    key_id BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('charge', 'hold', 'commit', 'release', 'expire', 'reset', 'adjust')),
    amount_micros BIGINT NOT NULL,
    reservation_id TEXT,
    idempotency_key TEXT,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
  await tx.query(`CREATE UNIQUE INDEX IF NOT EXISTS "${i}_ledger_idem_uidx" ON ${t.ledger} (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND kind = 'charge'`);
  await tx.query(`CREATE INDEX IF NOT EXISTS "${i}_ledger_key_idx" ON ${t.ledger} (key_id, created_at)`);
  await tx.query(`CREATE INDEX IF NOT EXISTS "${i}_ledger_account_idx" ON ${t.ledger} (account_id, created_at)`);
  await tx.query(`CREATE INDEX IF NOT EXISTS "${i}_ledger_time_idx" ON ${t.ledger} (created_at)`);
  await tx.query(`CREATE OR REPLACE FUNCTION ${t.schema}agentkey_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      RAISE EXCEPTION 'the agentkey ledger % is append-only', TG_TABLE_NAME USING ERRCODE = 'P0001';
    END $fn$`);
  await tx.query(`DROP TRIGGER IF EXISTS agentkey_append_only ON ${t.ledger}`);
  await tx.query(`CREATE TRIGGER agentkey_append_only BEFORE UPDATE OR DELETE ON ${t.ledger}
    FOR EACH ROW EXECUTE FUNCTION ${t.schema}agentkey_append_only()`);

  await tx.query(`CREATE TABLE IF NOT EXISTS ${t.holds} (
    id TEXT PRIMARY KEY,
    key_id BIGINT NOT NULL,
    amount_micros BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired')),
    expires_at TIMESTAMPTZ NOT NULL,
    committed_micros BIGINT,
    idempotency_key TEXT,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at TIMESTAMPTZ)`);
  await tx.query(`CREATE UNIQUE INDEX IF NOT EXISTS "${i}_holds_idem_uidx" ON ${t.holds} (key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL`);
  await tx.query(`CREATE INDEX IF NOT EXISTS "${i}_holds_live_idx" ON ${t.holds} (key_id, expires_at) WHERE status = 'held'`);
  await tx.query(`CREATE INDEX IF NOT EXISTS "${i}_holds_expiry_idx" ON ${t.holds} (expires_at) WHERE status = 'held'`);

  // Spend recorded before the ledger existed (the page's budget_used_cents) becomes its opening row.
  // Only for keys the ledger does not know yet: this migration runs again when the same table is
  // migrated under another spelling of its name ('keys' and 'public.keys'), and must not count twice.
  await tx.query(`INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, metadata)
    SELECT k.id, k.account_id::text, 'adjust', k.spent_micros, '{"reason":"opening balance at migration"}'::jsonb
    FROM ${t.table} k WHERE k.spent_micros <> 0
      AND NOT EXISTS (SELECT 1 FROM ${t.ledger} l WHERE l.key_id = k.id)`);

  const rollover = `
    v_spent := k.spent_micros;
    IF k.budget_period IS NOT NULL AND k.budget_reset_at IS NOT NULL AND k.budget_reset_at <= now() THEN
      IF v_spent <> 0 THEN
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros)
        VALUES (k.id, k.account_id::text, 'reset', -v_spent);
      END IF;
      v_spent := 0;
      UPDATE ${t.table} SET spent_micros = 0, budget_used_cents = 0,
        budget_reset_at = ${t.nextReset}(k.budget_period, COALESCE(k.budget_anchor_at, k.created_at), now())
      WHERE id = k.id;
    END IF;
    -- Holds past their time stop counting at once; sweeping them here just tidies up.
    WITH swept AS (
      UPDATE ${t.holds} SET status = 'expired', settled_at = now()
      WHERE key_id = k.id AND status = 'held' AND expires_at <= now()
      RETURNING id, amount_micros)
    INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id)
    SELECT k.id, k.account_id::text, 'expire', -amount_micros, id FROM swept;
    SELECT COALESCE(sum(amount_micros), 0) INTO v_held FROM ${t.holds}
    WHERE key_id = k.id AND status = 'held' AND expires_at > now();`;
  // The functions' records are k (key) and h (hold): '#variable_conflict use_variable' keeps
  // k.id meaning the record's field when the keys table itself is named k or h.
  const figures = `'key_id', k.id, 'budget', k.budget_micros, 'spent', v_spent, 'held', v_held`;

  await tx.query(`CREATE OR REPLACE FUNCTION ${t.spendFn}(
      p_hash TEXT, p_subject TEXT, p_id BIGINT, p_op TEXT, p_micros BIGINT,
      p_idem TEXT, p_meta JSONB, p_hold_id TEXT, p_ttl_ms BIGINT)
    RETURNS JSONB LANGUAGE plpgsql AS $fn$
    #variable_conflict use_variable
    DECLARE
      k RECORD; prior RECORD; v_spent BIGINT; v_held BIGINT; v_expires TIMESTAMPTZ;
    BEGIN
      IF p_hash IS NOT NULL THEN
        SELECT * INTO k FROM ${t.table} WHERE key_hash = p_hash FOR UPDATE;
      ELSIF p_subject IS NOT NULL THEN
        SELECT * INTO k FROM ${t.table} WHERE external_subject = p_subject FOR UPDATE;
      ELSE
        SELECT * INTO k FROM ${t.table} WHERE id = p_id FOR UPDATE;
      END IF;
      IF NOT FOUND THEN RETURN jsonb_build_object('outcome', 'invalid'); END IF;
      IF p_op <> 'adjust' THEN
        IF k.revoked_at IS NOT NULL THEN RETURN jsonb_build_object('outcome', 'revoked'); END IF;
        IF k.expires_at IS NOT NULL AND k.expires_at <= now() THEN RETURN jsonb_build_object('outcome', 'expired'); END IF;
      END IF;
      ${rollover}
      IF p_idem IS NOT NULL AND p_op = 'charge' THEN
        SELECT amount_micros INTO prior FROM ${t.ledger}
        WHERE key_id = k.id AND idempotency_key = p_idem AND kind = 'charge';
        IF FOUND THEN
          RETURN jsonb_build_object('outcome', CASE WHEN prior.amount_micros = p_micros THEN 'replayed' ELSE 'idempotency_conflict' END, ${figures});
        END IF;
      ELSIF p_idem IS NOT NULL AND p_op = 'hold' THEN
        SELECT id, amount_micros, expires_at, status INTO prior FROM ${t.holds}
        WHERE key_id = k.id AND idempotency_key = p_idem;
        IF FOUND THEN
          RETURN jsonb_build_object('outcome', CASE WHEN prior.amount_micros = p_micros THEN 'replayed' ELSE 'idempotency_conflict' END,
            'hold_id', prior.id, 'expires_at', prior.expires_at, 'status', prior.status, ${figures});
        END IF;
      END IF;
      IF p_op = 'adjust' THEN
        IF v_spent + p_micros < 0 THEN RETURN jsonb_build_object('outcome', 'refund_exceeds_spend', ${figures}); END IF;
      ELSIF k.budget_micros IS NOT NULL AND v_spent + v_held + p_micros > k.budget_micros THEN
        RETURN jsonb_build_object('outcome', 'budget_exceeded', ${figures});
      END IF;
      IF p_op = 'hold' THEN
        v_expires := now() + p_ttl_ms * interval '1 millisecond';
        INSERT INTO ${t.holds} (id, key_id, amount_micros, status, expires_at, idempotency_key, metadata)
        VALUES (p_hold_id, k.id, p_micros, 'held', v_expires, p_idem, p_meta);
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, idempotency_key, metadata)
        VALUES (k.id, k.account_id::text, 'hold', p_micros, p_hold_id, p_idem, p_meta);
        v_held := v_held + p_micros;
        UPDATE ${t.table} SET last_used_at = now() WHERE id = k.id;
      ELSE
        v_spent := v_spent + p_micros;
        UPDATE ${t.table} SET spent_micros = v_spent, budget_used_cents = v_spent / 10000.0,
          last_used_at = CASE WHEN p_op = 'charge' THEN now() ELSE last_used_at END
        WHERE id = k.id;
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, idempotency_key, metadata)
        VALUES (k.id, k.account_id::text, p_op, p_micros, p_idem, p_meta);
      END IF;
      RETURN jsonb_build_object('outcome', 'ok', 'hold_id', p_hold_id, 'expires_at', v_expires, ${figures});
    END $fn$`);

  await tx.query(`CREATE OR REPLACE FUNCTION ${t.settleFn}(p_hold_id TEXT, p_op TEXT, p_micros BIGINT, p_meta JSONB)
    RETURNS JSONB LANGUAGE plpgsql AS $fn$
    #variable_conflict use_variable
    DECLARE
      h RECORD; k RECORD; v_spent BIGINT; v_held BIGINT; v_live BOOLEAN;
    BEGIN
      SELECT key_id INTO h FROM ${t.holds} WHERE id = p_hold_id;
      IF NOT FOUND THEN RETURN jsonb_build_object('outcome', 'not_found'); END IF;
      -- Key row first, then the hold: the same order as reserve, so the two never deadlock.
      SELECT * INTO k FROM ${t.table} WHERE id = h.key_id FOR UPDATE;
      IF NOT FOUND THEN RETURN jsonb_build_object('outcome', 'not_found'); END IF;
      SELECT * INTO h FROM ${t.holds} WHERE id = p_hold_id FOR UPDATE;
      v_live := h.status = 'held' AND h.expires_at > now();
      ${rollover}
      IF h.status = 'committed' THEN
        -- A replay reports the first outcome: the hold had expired iff it was settled at or after its expiry.
        RETURN jsonb_build_object('outcome', CASE WHEN p_op = 'commit' THEN 'replayed' ELSE 'already_committed' END,
          'hold', h.amount_micros, 'committed', h.committed_micros, 'expired', h.settled_at >= h.expires_at, ${figures});
      ELSIF h.status = 'released' THEN
        RETURN jsonb_build_object('outcome', CASE WHEN p_op = 'release' THEN 'replayed' ELSE 'already_released' END,
          'hold', h.amount_micros, 'released', h.amount_micros, ${figures});
      END IF;
      -- Re-read: the sweep in the rollover may just have expired this hold.
      SELECT * INTO h FROM ${t.holds} WHERE id = p_hold_id;
      IF p_op = 'release' THEN
        IF h.status = 'expired' THEN
          RETURN jsonb_build_object('outcome', 'replayed', 'expired', true, 'hold', h.amount_micros, 'released', 0, ${figures});
        END IF;
        UPDATE ${t.holds} SET status = 'released', settled_at = now() WHERE id = h.id;
        INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id)
        VALUES (k.id, k.account_id::text, 'release', -h.amount_micros, h.id);
        v_held := v_held - h.amount_micros;
        RETURN jsonb_build_object('outcome', 'ok', 'hold', h.amount_micros, 'released', h.amount_micros, ${figures});
      END IF;
      -- A commit records the real cost even past the hold or its expiry: that money was spent.
      IF h.status = 'held' THEN v_held := v_held - h.amount_micros; END IF;
      UPDATE ${t.holds} SET status = 'committed', committed_micros = p_micros, settled_at = now() WHERE id = h.id;
      v_spent := v_spent + p_micros;
      UPDATE ${t.table} SET spent_micros = v_spent, budget_used_cents = v_spent / 10000.0, last_used_at = now()
      WHERE id = k.id;
      INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, reservation_id, metadata)
      VALUES (k.id, k.account_id::text, 'commit', p_micros, h.id, p_meta);
      RETURN jsonb_build_object('outcome', 'ok', 'expired', NOT v_live, 'hold', h.amount_micros, 'committed', p_micros, ${figures});
    END $fn$`);
}
