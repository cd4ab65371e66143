import { expect } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { tableNames } from '../../src/store/identifiers.js';
import type { TestDb } from './databases.js';
import { codeOf } from './errors.js';

/**
 * Reading what agentkey wrote, to check a call's effect where the public API does not show
 * it (amounts in micro-dollars, rows a refusal must not have written), and the few writes a
 * test makes to stand in for time passing.
 */

/**
 * Every table agentkey writes (keys, ledger, holds, accounts; one not there yet is empty) as
 * text, to prove a call wrote nothing.
 */
export async function tableState(db: TestDb, ak: AgentKey): Promise<string> {
  const t = tableNames(ak.tableName);
  const part = async (table: string) => {
    const [exists] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [table]);
    if (!exists?.t) return '(none)';
    return (await db.query<{ j: string }>(`SELECT row_to_json(t)::text AS j FROM ${table} t ORDER BY 1`)).map((r) => r.j).join('\n');
  };
  return [await part(t.table), await part(t.ledger), await part(t.holds), await part(t.accounts)].join('\n--\n');
}

/** How many keys the table has (revoked ones too). */
export async function keyCount(db: TestDb, ak: AgentKey): Promise<number> {
  const rows = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${tableNames(ak.tableName).table}`);
  return Number(rows[0]!.n);
}

/** How many rows the ledger and the holds table have. */
export async function ledgerAndHoldCounts(db: TestDb, ak: AgentKey): Promise<{ ledger: number; holds: number }> {
  const t = tableNames(ak.tableName);
  const [row] = await db.query<{ l: number; h: number }>(
    `SELECT (SELECT count(*) FROM ${t.ledger})::int AS l, (SELECT count(*) FROM ${t.holds})::int AS h`,
  );
  return { ledger: Number(row!.l), holds: Number(row!.h) };
}

/** A key row's money and time columns as stored (numbers as text, so nothing is rounded on the way). */
export interface KeyRowText {
  spent_micros: string;
  budget_micros: string | null;
  budget_cents: string | null;
  budget_used_cents: string | null;
  budget_reset_at: Date | null;
  expires_at: Date | null;
  revoked_at: Date | null;
  last_used_at: Date | null;
  account_id: string;
}

export async function keyRow(db: TestDb, ak: AgentKey, id: number): Promise<KeyRowText> {
  const rows = await db.query<KeyRowText>(
    `SELECT spent_micros::text AS spent_micros, budget_micros::text AS budget_micros,
            budget_cents::text AS budget_cents, budget_used_cents::text AS budget_used_cents,
            budget_reset_at, expires_at, revoked_at, last_used_at, account_id
       FROM ${tableNames(ak.tableName).table} WHERE id = $1`,
    [id],
  );
  expect(rows).toHaveLength(1);
  return rows[0]!;
}

/** What a key has spent, in micro-dollars. */
export async function spentMicros(db: TestDb, ak: AgentKey, id: number): Promise<number> {
  const [row] = await db.query<{ s: string }>(`SELECT spent_micros::text AS s FROM ${tableNames(ak.tableName).table} WHERE id = $1`, [id]);
  return Number(row!.s);
}

/** The id of the key of an external subject (ensureSubject()). */
export async function subjectKeyId(db: TestDb, ak: AgentKey, subject: string): Promise<number> {
  const rows = await db.query<{ id: number }>(`SELECT id::int AS id FROM ${tableNames(ak.tableName).table} WHERE external_subject = $1`, [subject]);
  expect(rows).toHaveLength(1);
  return Number(rows[0]!.id);
}

export interface LedgerRow {
  key_id: number;
  account_id: string;
  kind: string;
  /** Micro-dollars. */
  amount: number;
  reservation_id: string | null;
  idempotency_key: string | null;
  metadata: Record<string, unknown> | null;
}

/** The ledger in insertion order (of one key, when given). */
export async function ledgerRows(db: TestDb, ak: AgentKey, keyId?: number): Promise<LedgerRow[]> {
  const rows = await db.query<LedgerRow & { amount: string }>(
    `SELECT key_id::int AS key_id, account_id, kind, amount_micros::text AS amount, reservation_id, idempotency_key, metadata
     FROM ${tableNames(ak.tableName).ledger} ${keyId === undefined ? '' : 'WHERE key_id = $1'} ORDER BY id`,
    keyId === undefined ? [] : [keyId],
  );
  return rows.map((r) => ({ ...r, key_id: Number(r.key_id), amount: Number(r.amount) }));
}

export interface HoldRow {
  id: string;
  key_id: number;
  /** Micro-dollars. */
  amount: number;
  status: string;
  committed: number | null;
  idempotency_key: string | null;
  expires_at: Date;
}

/** The holds, oldest first. */
export async function holdRows(db: TestDb, ak: AgentKey): Promise<HoldRow[]> {
  const rows = await db.query<HoldRow & { amount: string; committed: string | null }>(
    `SELECT id, key_id::int AS key_id, amount_micros::text AS amount, status, committed_micros::text AS committed,
            idempotency_key, expires_at
     FROM ${tableNames(ak.tableName).holds} ORDER BY created_at, id`,
  );
  return rows.map((r) => ({ ...r, key_id: Number(r.key_id), amount: Number(r.amount), committed: r.committed === null ? null : Number(r.committed) }));
}

/** One hold, which must exist. */
export async function holdRow(db: TestDb, ak: AgentKey, id: string): Promise<HoldRow> {
  const row = (await holdRows(db, ak)).find((h) => h.id === id);
  expect(row, `hold ${id}`).toBeDefined();
  return row!;
}

/** audit() finds the counters of every key, account and overage equal to the ledger. */
export async function expectAuditOk(ak: AgentKey): Promise<void> {
  const result = await ak.audit();
  expect(result, JSON.stringify(result)).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [] });
}

/**
 * Waits (for real) until the database clock is past the expiry of every given hold, so a
 * clock difference between this process and the server cannot make the test flaky.
 */
export async function waitPastExpiry(db: TestDb, ak: AgentKey, ids: string[]): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [row] = await db.query<{ left: number }>(
      `SELECT count(*)::int AS left FROM ${tableNames(ak.tableName).holds} WHERE id = ANY($1::text[]) AND expires_at >= now()`,
      [ids],
    );
    if (Number(row!.left) === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`holds ${ids.join(', ')} did not expire within 20 s`);
}

/** Makes a key's budget period end now, as if its reset time had passed. */
export async function endPeriod(db: TestDb, ak: AgentKey, id: number): Promise<void> {
  await db.query(`UPDATE ${tableNames(ak.tableName).table} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [id]);
}

/** Expects `make()` to be refused with the AgentKeyError `code` and to leave every table as it was. */
export async function expectRefused(db: TestDb, ak: AgentKey, make: () => Promise<unknown>, code: string, label = code): Promise<void> {
  const before = await tableState(db, ak);
  expect(await codeOf(make), label).toBe(code);
  expect(await tableState(db, ak), label).toEqual(before);
}
