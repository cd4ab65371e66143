import type { Definition, IndexSpec } from './catalog.js';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/** Ledger kinds that change a key's spend; the others (hold, release, expire) change what is held. */
export const SPEND_KINDS = ['charge', 'commit', 'adjust', 'reset'] as const;

/**
 * Every kind of ledger row. 'overage' is the part of a commit's real cost that no budget
 * over the key could take: recorded, never counted toward a cap.
 */
export const LEDGER_KINDS = ['charge', 'hold', 'commit', 'release', 'expire', 'reset', 'adjust', 'overage'] as const;
export type LedgerKind = (typeof LEDGER_KINDS)[number];

const KIND_CHECK = `CONSTRAINT agentkey_ledger_kind CHECK (kind IN (${LEDGER_KINDS.map((k) => `'${k}'`).join(', ')}))`;

/** Version 2: the append-only usage ledger and the holds table. */
export async function createLedger(tx: Db, t: TableNames): Promise<void> {
  await tx.query(`CREATE TABLE IF NOT EXISTS ${t.ledger} (
    id BIGSERIAL PRIMARY KEY,
    key_id BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL ${KIND_CHECK},
    amount_micros BIGINT NOT NULL,
    reservation_id TEXT,
    idempotency_key TEXT,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
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
}

/** Whether the ledger's kind check admits every kind (a ledger made before version 6 lacks 'overage'). */
export function ledgerKindsCurrent(checks: readonly string[]): boolean {
  const kind = checks.filter((c) => /\bkind\b/.test(c));
  return kind.length > 0 && kind.every((c) => LEDGER_KINDS.every((k) => c.includes(`'${k}'`)));
}

/**
 * Version 6: overage. The ledger admits the kind; keys count their overage (never toward a
 * cap) and a committed hold keeps the part of its cost that was overage, for replays.
 */
export async function createOverage(tx: Db, t: TableNames): Promise<void> {
  await tx.query(`ALTER TABLE ${t.table} ADD COLUMN IF NOT EXISTS overage_micros BIGINT NOT NULL DEFAULT 0`);
  await tx.query(`ALTER TABLE ${t.holds} ADD COLUMN IF NOT EXISTS overage_micros BIGINT`);
  const old = await tx.query<{ conname: string }>(
    `SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'c' AND pg_get_constraintdef(oid) ~ '\\mkind\\M'`,
    [t.ledger],
  );
  for (const c of old) await tx.query(`ALTER TABLE ${t.ledger} DROP CONSTRAINT "${c.conname.replace(/"/g, '""')}"`);
  await tx.query(`ALTER TABLE ${t.ledger} ADD ${KIND_CHECK}`);
}

/**
 * Spend a key already had that the ledger does not explain (the page's budget_used_cents
 * of a table agentkey just took over, or a table restored without its ledger) becomes one
 * opening row, so audit() holds from the first day. Keys the ledger knows are left alone,
 * so running it again never counts twice.
 */
export async function openingBalances(tx: Db, t: TableNames): Promise<void> {
  await tx.query(`INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, metadata)
    SELECT k.id, COALESCE(k.account_id::text, ''), 'adjust', k.spent_micros, '{"reason":"opening balance at migration"}'::jsonb
    FROM ${t.table} k WHERE k.spent_micros <> 0
      AND NOT EXISTS (SELECT 1 FROM ${t.ledger} l WHERE l.key_id = k.id)`);
}

export function ledgerIndexes(t: TableNames): IndexSpec[] {
  const i = t.indexBase;
  const held = "WHERE (status = 'held'::text)";
  return [
    {
      table: t.ledger,
      name: `${i}_ledger_idem_uidx`,
      unique: true,
      definition: "USING btree (key_id, idempotency_key) WHERE ((idempotency_key IS NOT NULL) AND (kind = 'charge'::text))",
    },
    { table: t.ledger, name: `${i}_ledger_key_idx`, definition: 'USING btree (key_id, created_at)' },
    { table: t.ledger, name: `${i}_ledger_account_idx`, definition: 'USING btree (account_id, created_at)' },
    // The ledger only grows, in time order: a BRIN index serves time ranges at a fraction of
    // a B-tree's cost on every insert.
    { table: t.ledger, name: `${i}_ledger_time_brin`, definition: 'USING brin (created_at)' },
    {
      table: t.holds,
      name: `${i}_holds_idem_uidx`,
      unique: true,
      definition: 'USING btree (key_id, idempotency_key) WHERE (idempotency_key IS NOT NULL)',
    },
    { table: t.holds, name: `${i}_holds_live_idx`, definition: `USING btree (key_id, expires_at) ${held}` },
    { table: t.holds, name: `${i}_holds_expiry_idx`, definition: `USING btree (expires_at) ${held}` },
  ];
}

export function ledgerFunctions(t: TableNames): Definition[] {
  return [
    {
      kind: 'function',
      signature: `${t.schema}agentkey_append_only()`,
      sql: `CREATE OR REPLACE FUNCTION ${t.schema}agentkey_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
          RAISE EXCEPTION 'the agentkey ledger % is append-only', TG_TABLE_NAME USING ERRCODE = 'P0001';
        END $fn$`,
    },
  ];
}

export function ledgerTriggers(t: TableNames): Definition[] {
  return [
    {
      kind: 'trigger',
      name: 'agentkey_append_only',
      table: t.ledger,
      sql: `CREATE TRIGGER agentkey_append_only BEFORE UPDATE OR DELETE ON ${t.ledger}
        FOR EACH ROW EXECUTE FUNCTION ${t.schema}agentkey_append_only()`,
    },
  ];
}
