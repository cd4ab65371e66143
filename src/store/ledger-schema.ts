import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/** Ledger kinds that change a key's spend; the others (hold, release, expire) change what is held. */
export const SPEND_KINDS = ['charge', 'commit', 'adjust', 'reset'] as const;

/**
 * Version 2: the append-only usage ledger and the holds table. The functions that write
 * them (`<table>_spend`, `<table>_settle`) are created by version 3, which always runs in
 * the same migrate() as this one: no release ever stopped at version 2.
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
}
