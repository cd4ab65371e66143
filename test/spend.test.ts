/**
 * Reservations, idempotent charges, the usage ledger, usage reports, adjustments and audit,
 * in one process, on PostgreSQL and PGlite. Races between OS processes are in
 * spend-processes.test.ts.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS } from '../src/index.js';
import type { CommitResult, ReleaseResult, ReserveResult, TrackUsageResult, ValidKey, ValidationResult } from '../src/agentkey.js';
import { mintKey } from '../src/keys.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { rejectingPool } from './helpers/faults.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const RSV = /^rsv_[0-9A-Za-z]{24}$/;
const MINUTE = 60_000;
/** Allowed distance between the database clock and ours when checking an expiresAt. */
const CLOCK_SLACK = 5_000;

// ---------------------------------------------------------------------------------------
// Helpers

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function ledgerName(ak: AgentKey): string {
  return `"${ak.tableName}_ledger"`;
}
function holdsName(ak: AgentKey): string {
  return `"${ak.tableName}_holds"`;
}

interface LedgerRow {
  key_id: number;
  account_id: string;
  kind: string;
  amount: number;
  reservation_id: string | null;
  idempotency_key: string | null;
  metadata: Record<string, unknown> | null;
}

/** The ledger in insertion order, amounts in micros. */
async function ledger(db: TestDb, ak: AgentKey, keyId?: number): Promise<LedgerRow[]> {
  const rows = await db.query<LedgerRow & { amount: string }>(
    `SELECT key_id::int AS key_id, account_id, kind, amount_micros::text AS amount, reservation_id, idempotency_key, metadata
     FROM ${ledgerName(ak)} ${keyId === undefined ? '' : 'WHERE key_id = $1'} ORDER BY id`,
    keyId === undefined ? [] : [keyId],
  );
  return rows.map((r) => ({ ...r, key_id: Number(r.key_id), amount: Number(r.amount) }));
}

interface HoldRow {
  id: string;
  key_id: number;
  amount: number;
  status: string;
  committed: number | null;
  idempotency_key: string | null;
  expires_at: Date;
}

async function holds(db: TestDb, ak: AgentKey): Promise<HoldRow[]> {
  const rows = await db.query<HoldRow & { amount: string; committed: string | null }>(
    `SELECT id, key_id::int AS key_id, amount_micros::text AS amount, status, committed_micros::text AS committed,
            idempotency_key, expires_at
     FROM ${holdsName(ak)} ORDER BY created_at, id`,
  );
  return rows.map((r) => ({ ...r, key_id: Number(r.key_id), amount: Number(r.amount), committed: r.committed === null ? null : Number(r.committed) }));
}

async function hold(db: TestDb, ak: AgentKey, id: string): Promise<HoldRow> {
  const row = (await holds(db, ak)).find((h) => h.id === id);
  expect(row, `hold ${id}`).toBeDefined();
  return row!;
}

/** Everything spending can write: the key rows, the ledger and the holds, to prove a call wrote nothing. */
async function state(db: TestDb, ak: AgentKey): Promise<string> {
  const part = async (sql: string) => (await db.query<{ j: string }>(sql)).map((r) => r.j).join('\n');
  return [
    await part(`SELECT row_to_json(t)::text AS j FROM ${ak.tableName} t ORDER BY id`),
    await part(`SELECT row_to_json(t)::text AS j FROM ${ledgerName(ak)} t ORDER BY id`),
    await part(`SELECT row_to_json(t)::text AS j FROM ${holdsName(ak)} t ORDER BY id`),
  ].join('\n--\n');
}

async function counts(db: TestDb, ak: AgentKey): Promise<{ ledger: number; holds: number }> {
  const [row] = await db.query<{ l: number; h: number }>(
    `SELECT (SELECT count(*) FROM ${ledgerName(ak)})::int AS l, (SELECT count(*) FROM ${holdsName(ak)})::int AS h`,
  );
  return { ledger: Number(row!.l), holds: Number(row!.h) };
}

async function spentMicros(db: TestDb, ak: AgentKey, id: number): Promise<number> {
  const [row] = await db.query<{ s: string }>(`SELECT spent_micros::text AS s FROM ${ak.tableName} WHERE id = $1`, [id]);
  return Number(row!.s);
}

async function expectAudited(ak: AgentKey): Promise<void> {
  const audit = await ak.audit();
  expect(audit.mismatches).toEqual([]);
  expect(audit.ok).toBe(true);
}

function valid(result: ValidationResult): ValidKey {
  expect(result.valid).toBe(true);
  return result as ValidKey;
}

type Reserved = Extract<ReserveResult, { success: true }>;
function reserved(result: ReserveResult): Reserved {
  expect(result, JSON.stringify(result)).toMatchObject({ success: true });
  return result as Reserved;
}

type Committed = Extract<CommitResult, { success: true }>;
function committed(result: CommitResult): Committed {
  expect(result, JSON.stringify(result)).toMatchObject({ success: true });
  return result as Committed;
}

/** An async call must return a rejected promise (not throw synchronously) with an AgentKeyError of `code`. */
async function rejectsWith(call: () => Promise<unknown>, code: string, label = code): Promise<AgentKeyError> {
  let promise: Promise<unknown> | undefined;
  expect(() => {
    promise = call();
  }, `${label}: threw synchronously instead of rejecting`).not.toThrow();
  const err = await (promise as Promise<unknown>).then(
    (value) => ({ resolved: value }),
    (e: unknown) => e,
  );
  expect(err, `${label}: expected AgentKeyError ${code}`).toBeInstanceOf(AgentKeyError);
  expect((err as AgentKeyError).code, label).toBe(code);
  expect((err as Error).message, label).toMatch(/\S/);
  return err as AgentKeyError;
}

/** A well-formed reservation id that no hold has. */
function unknownReservationId(): string {
  return 'rsv_' + 'A'.repeat(12) + 'z'.repeat(12);
}

/**
 * Sleeps (for real) until the database clock is past the expiry of every given hold, so a
 * clock difference between this process and the server cannot make the test flaky.
 */
async function waitPastExpiry(db: TestDb, ak: AgentKey, ids: string[]): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [row] = await db.query<{ left: number }>(
      `SELECT count(*)::int AS left FROM ${holdsName(ak)} WHERE id = ANY($1::text[]) AND expires_at >= now()`,
      [ids],
    );
    if (Number(row!.left) === 0) return;
    await sleep(100);
  }
  throw new Error(`holds ${ids.join(', ')} did not expire within 20 s`);
}

/** Makes a key's budget period end now (as if its reset time had passed). */
async function endPeriod(db: TestDb, ak: AgentKey, id: number): Promise<void> {
  await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [id]);
}

// ---------------------------------------------------------------------------------------

forEachDatabase((getDb) => {
  describe('reserve()', () => {
    it('happy: returns a reservation id, an expiry about ttl from now and what is left after the hold', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_r', budgetCents: 100 });
      expect(await ak.trackUsage(key, { costCents: 10 })).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 90 });

      const before = Date.now();
      const r = await ak.reserve(key, { costCents: 30, ttl: '2m' });
      const after = Date.now();
      expect(r).toEqual({
        success: true,
        reservationId: expect.stringMatching(RSV),
        expiresAt: expect.stringMatching(ISO),
        budgetRemainingCents: 60,
      });
      const expiresAt = Date.parse(reserved(r).expiresAt);
      expect(expiresAt).toBeGreaterThanOrEqual(before + 2 * MINUTE - CLOCK_SLACK);
      expect(expiresAt).toBeLessThanOrEqual(after + 2 * MINUTE + CLOCK_SLACK);

      const h = await hold(db, ak, reserved(r).reservationId);
      expect(h).toMatchObject({ key_id: id, amount: 300_000, status: 'held', committed: null });
      expect(new Date(h.expires_at).toISOString()).toBe(reserved(r).expiresAt);
    });

    it('happy: a hold counts at once in reserve, validate and trackUsage (remaining = budget - spent - held)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      const first = reserved(await ak.reserve(key, { costCents: 30 }));
      expect(first.budgetRemainingCents).toBe(60);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetCents: 100, budgetUsedCents: 10, budgetHeldCents: 30, budgetRemainingCents: 60 });

      expect(await ak.trackUsage(key, { costCents: 5 })).toEqual({ success: true, budgetUsedCents: 15, budgetRemainingCents: 55 });
      const second = reserved(await ak.reserve(key, { costCents: 55 }));
      expect(second.budgetRemainingCents).toBe(0);
      expect(second.reservationId).not.toBe(first.reservationId);
      // Nothing left to spend (spent + held = budget): validate refuses the key; getKey shows its figures.
      expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 100, spentCents: 15, heldCents: 85, remainingCents: 0 });

      // Spent 15 + held 85 = 100: nothing more fits, neither as a charge nor as a hold.
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: id }, budgetUsedCents: 15, budgetRemainingCents: 0 });
      expect(await ak.reserve(key, { costCents: 0.0001 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: id }, budgetUsedCents: 15, budgetRemainingCents: 0 });
      // A free call still fits: it succeeds without figures and records nothing.
      const ledgerBefore = await counts(db, ak);
      expect(await ak.trackUsage(key, { costCents: 0 })).toEqual({ success: true });
      expect(await counts(db, ak)).toEqual(ledgerBefore);
      expect(await spentMicros(db, ak, id)).toBe(150_000);
      await expectAudited(ak);
    });

    it('happy: on a key without a budget a hold always fits and nothing is "remaining"', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'a' });
      const r = reserved(await ak.reserve(key, { costCents: MAX_CENTS }));
      expect(r.budgetRemainingCents).toBeNull();
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: MAX_CENTS, budgetRemainingCents: null });
    });

    it("error: refuses with 'budget_exceeded' when spent + held + cost > budget, writing nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 40 });
      reserved(await ak.reserve(key, { costCents: 35 }));
      const before = await state(db, ak);
      expect(await ak.reserve(key, { costCents: 25.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'key', keyId: id },
        budgetUsedCents: 40,
        budgetRemainingCents: 25,
      });
      expect(await state(db, ak)).toBe(before);
      // Exactly what is left fits.
      expect(reserved(await ak.reserve(key, { costCents: 25 })).budgetRemainingCents).toBe(0);
      // A budget of zero allows only free holds.
      const zero = await ak.create({ accountId: 'a', budgetCents: 0 });
      expect(await ak.reserve(zero.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(reserved(await ak.reserve(zero.key, { costCents: 0 })).budgetRemainingCents).toBe(0);
    });

    it("error: reasons 'invalid_key', 'expired' and 'revoked' for the key's state, writing nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const other = await db.agentKey();
      const expired = await ak.create({ accountId: 'a', budgetCents: 100 });
      const revoked = await ak.create({ accountId: 'a', budgetCents: 100 });
      const foreign = await other.create({ accountId: 'a', budgetCents: 100 });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expired.id]);
      expect(await ak.revoke(revoked.id)).toBe(true);
      const before = await state(db, ak);

      const cases: [string, unknown, string][] = [
        ['malformed', 'not-a-key', 'invalid_key'],
        ['empty', '', 'invalid_key'],
        ['not a string', 42, 'invalid_key'],
        ['well-formed but unknown', mintKey('ak_').raw, 'invalid_key'],
        ['of another table', foreign.key, 'invalid_key'],
        ['expired', expired.key, 'expired'],
        ['revoked', revoked.key, 'revoked'],
      ];
      for (const [label, raw, reason] of cases) {
        expect(await ak.reserve(raw as string, { costCents: 1 }), label).toEqual({ success: false, reason });
        expect(await ak.trackUsage(raw as string, { costCents: 1 }), label).toEqual({ success: false, reason });
      }
      expect(await state(db, ak)).toBe(before);
    });

    it("error: 'invalid_cost' for a negative, NaN, infinite, non-numeric, too large or missing cost, writing nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await state(db, ak);
      const bad: [string, unknown][] = [
        ['negative', { costCents: -1 }],
        ['tiny negative', { costCents: -0.0001 }],
        ['NaN', { costCents: NaN }],
        ['Infinity', { costCents: Infinity }],
        ['-Infinity', { costCents: -Infinity }],
        ['string not a decimal', { costCents: '5e0' }],
        ['negative string', { costCents: '-5' }],
        ['padded string', { costCents: ' 5' }],
        ['null', { costCents: null }],
        ['missing', {}],
        ['over MAX_CENTS', { costCents: MAX_CENTS + 1 }],
        ['no options', undefined],
        ['null options', null],
      ];
      for (const [label, options] of bad) {
        expect(await ak.reserve(key, options as never), label).toEqual({ success: false, reason: 'invalid_cost' });
        expect(await ak.trackUsage(key, options as never), label).toEqual({ success: false, reason: 'invalid_cost' });
      }
      expect(await state(db, ak)).toBe(before);
    });

    it("happy: ttl defaults to about 5 minutes; '2s', '5m' and '24h' are accepted", async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'a' });
      for (const [ttl, ms] of [[undefined, 5 * MINUTE], ['2s', 2_000], ['5m', 5 * MINUTE], ['24h', 24 * 60 * MINUTE]] as const) {
        const before = Date.now();
        const r = reserved(await ak.reserve(key, ttl === undefined ? { costCents: 1 } : { costCents: 1, ttl }));
        const after = Date.now();
        const at = Date.parse(r.expiresAt);
        expect(at, String(ttl)).toBeGreaterThanOrEqual(before + ms - CLOCK_SLACK);
        expect(at, String(ttl)).toBeLessThanOrEqual(after + ms + CLOCK_SLACK);
      }
    });

    it("error: a zero, absurd or malformed ttl throws invalid_duration and writes nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 1 });
      const before = await counts(db, ak);
      const snapshot = await state(db, ak);
      for (const ttl of ['0s', '0m', '25h', '2d', '1mo', 'abc', '', '-5m', '1.5m', 5, true, {}]) {
        await rejectsWith(() => ak.reserve(key, { costCents: 1, ttl: ttl as string }), 'invalid_duration', JSON.stringify(ttl));
        await rejectsWith(() => ak.reserveBySubject('mch_x', { costCents: 1, ttl: ttl as string }), 'invalid_duration', `subject ${JSON.stringify(ttl)}`);
      }
      expect(await counts(db, ak)).toEqual(before);
      expect(await state(db, ak)).toBe(snapshot);
    });

    it('error: unknown options, bad metadata or a bad idempotency key throw invalid_argument and write nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await state(db, ak);
      const big = { blob: 'x'.repeat(8_200) };
      const circular: Record<string, unknown> = {};
      circular.self = circular;
      const bad: [string, Record<string, unknown>][] = [
        ['unknown option', { costCents: 1, cost: 1 }],
        ['typo of ttl', { costCents: 1, ttlMs: 1000 }],
        ['metadata string', { costCents: 1, metadata: 'gpt-4' }],
        ['metadata number', { costCents: 1, metadata: 42 }],
        ['metadata array', { costCents: 1, metadata: ['a'] }],
        ['metadata over 8 KB', { costCents: 1, metadata: big }],
        ['metadata circular', { costCents: 1, metadata: circular }],
        ['metadata with a bigint', { costCents: 1, metadata: { n: 10n } }],
        ['empty idempotencyKey', { costCents: 1, idempotencyKey: '' }],
        ['long idempotencyKey', { costCents: 1, idempotencyKey: 'k'.repeat(257) }],
        ['numeric idempotencyKey', { costCents: 1, idempotencyKey: 7 }],
      ];
      for (const [label, options] of bad) {
        await rejectsWith(() => ak.reserve(key, options as never), 'invalid_argument', `reserve: ${label}`);
        await rejectsWith(() => ak.trackUsage(key, options as never), 'invalid_argument', `trackUsage: ${label}`);
      }
      await rejectsWith(() => ak.trackUsage(key, { costCents: 1, ttl: '5m' } as never), 'invalid_argument', 'ttl on trackUsage');
      expect(await state(db, ak)).toBe(before);
      // Metadata just under the limit is fine.
      reserved(await ak.reserve(key, { costCents: 1, metadata: { blob: 'x'.repeat(8_000) } }));
    });

    it('security: metadata the database cannot store (a NUL character) is invalid_argument and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await state(db, ak);
      await rejectsWith(() => ak.reserve(key, { costCents: 1, metadata: { note: 'a\u0000b' } }), 'invalid_argument', 'reserve');
      await rejectsWith(() => ak.trackUsage(key, { costCents: 1, metadata: { note: 'a\u0000b' } }), 'invalid_argument', 'trackUsage');
      expect(await state(db, ak)).toBe(before);
    });

    it('security: reservation ids are random and unguessable', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'a' });
      const ids = new Set<string>();
      for (let i = 0; i < 50; i++) ids.add(reserved(await ak.reserve(key, { costCents: 0 })).reservationId);
      expect(ids.size).toBe(50);
      for (const id of ids) expect(id).toMatch(RSV);
    });
  });

  describe('commit()', () => {
    it('happy: settles the real cost and gives the rest of the hold back', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const c = await ak.commit(r.reservationId, { costCents: 12 });
      expect(c).toEqual({
        success: true,
        reservationId: r.reservationId,
        costCents: 12,
        chargedCents: 12,
        overageCents: 0,
        heldCents: 30,
        releasedCents: 18,
        overHoldCents: 0,
        holdExpired: false,
        overBudget: false,
        budgetUsedCents: 22,
        budgetRemainingCents: 78,
      });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 22, budgetHeldCents: 0, budgetRemainingCents: 78 });
      expect(await hold(db, ak, r.reservationId)).toMatchObject({ status: 'committed', committed: 120_000 });
      expect(await spentMicros(db, ak, id)).toBe(220_000);
      await expectAudited(ak);
    });

    it('happy: a commit of exactly the hold releases nothing; a commit of 0 releases it all', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const a = reserved(await ak.reserve(key, { costCents: 30 }));
      expect(await ak.commit(a.reservationId, { costCents: 30 })).toMatchObject({ success: true, releasedCents: 0, overHoldCents: 0, budgetUsedCents: 30 });
      const b = reserved(await ak.reserve(key, { costCents: 30 }));
      expect(await ak.commit(b.reservationId, { costCents: 0 })).toMatchObject({ success: true, costCents: 0, releasedCents: 30, budgetUsedCents: 30, budgetRemainingCents: 70 });
    });

    it('happy: records the real cost even above the hold (overHoldCents)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 10 }));
      expect(await ak.commit(r.reservationId, { costCents: 25.5 })).toEqual({
        success: true,
        reservationId: r.reservationId,
        costCents: 25.5,
        chargedCents: 25.5,
        overageCents: 0,
        heldCents: 10,
        releasedCents: 0,
        overHoldCents: 15.5,
        holdExpired: false,
        overBudget: false,
        budgetUsedCents: 25.5,
        budgetRemainingCents: 74.5,
      });
      expect(await spentMicros(db, ak, id)).toBe(255_000);
      await expectAudited(ak);
    });

    it('happy: a commit past what the budget leaves charges up to the cap; the rest is overage, recorded and never counted', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 50 }));
      const c = committed(await ak.commit(r.reservationId, { costCents: 120 }));
      expect(c).toMatchObject({
        costCents: 120,
        chargedCents: 100,
        overageCents: 20,
        heldCents: 50,
        overHoldCents: 70,
        overBudget: true,
        limitedBy: { kind: 'key', keyId: id },
        budgetUsedCents: 100,
        budgetRemainingCents: 0,
      });
      // The cap holds: the counter stops at the budget; the ledger has the commit and its overage.
      expect(await spentMicros(db, ak, id)).toBe(1_000_000);
      const rows = (await ak.ledger({ keyId: id })).filter((e) => e.reservationId === r.reservationId);
      expect(rows.map((e) => [e.kind, e.amountCents])).toEqual([['overage', 20], ['commit', 100], ['hold', 50]]);
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 100, overageCents: 20, remainingCents: 0 });
      expect(await ak.getReservation(r.reservationId)).toMatchObject({ costCents: 120, overageCents: 20, status: 'committed' });
      expect(await ak.usage({ keyId: id })).toMatchObject({ totalCents: 100, count: 1, overageCents: 20 });
      // A replay says the same, and records nothing more.
      expect(await ak.commit(r.reservationId, { costCents: 120 })).toMatchObject({ replayed: true, costCents: 120, chargedCents: 100, overageCents: 20 });
      expect(await ak.usage({ keyId: id })).toMatchObject({ totalCents: 100, overageCents: 20 });
      // Nothing more is charged or held.
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 100 });
      expect(await ak.reserve(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const audit = await ak.audit();
      expect(audit).toMatchObject({ ok: true, overageCents: 20, overageMismatches: [] });
    });

    it('happy: a commit within its hold is charged in full; the other live holds keep their money', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const a = reserved(await ak.reserve(key, { costCents: 40 }));
      reserved(await ak.reserve(key, { costCents: 60 }));
      expect(await ak.commit(a.reservationId, { costCents: 40 })).toMatchObject({ success: true, chargedCents: 40, overageCents: 0, overBudget: false, budgetRemainingCents: 0 });
      // Past its hold, only what the other hold leaves free can be charged: here nothing.
      const b = reserved(await ak.reserve(key, { costCents: 0 }));
      expect(await ak.commit(b.reservationId, { costCents: 5 })).toMatchObject({ success: true, chargedCents: 0, overageCents: 5, overBudget: true, budgetUsedCents: 40 });
      expect(await spentMicros(db, ak, id)).toBe(400_000);
      await expectAudited(ak);
    });

    it('happy: a commit after the key was revoked still records the money spent', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      await ak.revoke(id);
      expect(await ak.commit(r.reservationId, { costCents: 20 })).toMatchObject({ success: true, costCents: 20, budgetUsedCents: 20 });
      expect(await spentMicros(db, ak, id)).toBe(200_000);
      await expectAudited(ak);
    });

    it('happy: a second commit returns the first outcome with replayed: true and charges nothing more', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const first = committed(await ak.commit(r.reservationId, { costCents: 12 }));
      const spent = await spentMicros(db, ak, id);
      const before = await state(db, ak);

      expect(await ak.commit(r.reservationId, { costCents: 12 })).toEqual({ ...first, replayed: true });
      // Other metadata is still the same commit; another cost is a conflict, and the first outcome stands.
      expect(await ak.commit(r.reservationId, { costCents: 12, metadata: { retry: true } })).toEqual({ ...first, replayed: true });
      expect(await ak.commit(r.reservationId, { costCents: 99 })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(await ak.commit(r.reservationId, { costCents: '12.0001' })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(await spentMicros(db, ak, id)).toBe(spent);
      expect(await state(db, ak)).toBe(before);
      expect((await ledger(db, ak)).filter((row) => row.kind === 'commit')).toHaveLength(1);
      await expectAudited(ak);
    });

    it('happy: concurrent commits of one hold charge once', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const results = await Promise.all(Array.from({ length: 10 }, () => ak.commit(r.reservationId, { costCents: 7 })));
      expect(results.every((c) => c.success)).toBe(true);
      expect(results.filter((c) => c.success && !c.replayed)).toHaveLength(1);
      expect(await spentMicros(db, ak, id)).toBe(70_000);
      expect((await ledger(db, ak)).map((row) => row.kind)).toEqual(['hold', 'commit']);
      await expectAudited(ak);
    });

    it("error: release after commit is 'already_committed'; commit after release is 'already_released'; nothing written", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const a = reserved(await ak.reserve(key, { costCents: 30 }));
      const b = reserved(await ak.reserve(key, { costCents: 20 }));
      committed(await ak.commit(a.reservationId, { costCents: 10 }));
      expect(await ak.release(b.reservationId)).toMatchObject({ success: true, releasedCents: 20 });
      const before = await state(db, ak);

      expect(await ak.release(a.reservationId)).toEqual({ success: false, reason: 'already_committed' });
      expect(await ak.commit(b.reservationId, { costCents: 5 })).toEqual({ success: false, reason: 'already_released' });
      expect(await state(db, ak)).toBe(before);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 10, budgetHeldCents: 0, budgetRemainingCents: 90 });
      await expectAudited(ak);
    });

    it("error: unknown, malformed and foreign reservation ids are 'reservation_not_found', nothing written", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const other = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const otherKey = await other.create({ accountId: 'a', budgetCents: 100 });
      const mine = reserved(await ak.reserve(key, { costCents: 30 }));
      const foreign = reserved(await other.reserve(otherKey.key, { costCents: 40 }));
      const swapCase = (id: string) => 'rsv_' + [...id.slice(4)].map((ch) => (ch === ch.toLowerCase() ? ch.toUpperCase() : ch.toLowerCase())).join('');
      const before = await state(db, ak);
      const otherBefore = await state(db, other);

      const ids: unknown[] = [
        unknownReservationId(),
        'rsv_' + 'x'.repeat(23),
        'rsv_' + 'x'.repeat(25),
        'abc',
        '',
        42,
        null,
        undefined,
        {},
        swapCase(mine.reservationId), // ids are exact, not case-insensitive
        `rsv_' OR '1'='1`,
        foreign.reservationId, // a hold of another table
      ];
      for (const rid of ids) {
        expect(await ak.commit(rid as string, { costCents: 1 }), String(rid)).toEqual({ success: false, reason: 'reservation_not_found' });
        expect(await ak.release(rid as string), String(rid)).toEqual({ success: false, reason: 'reservation_not_found' });
      }
      expect(await state(db, ak)).toBe(before);
      expect(await state(db, other)).toBe(otherBefore);
      expect(await hold(db, other, foreign.reservationId)).toMatchObject({ status: 'held' });
      expect(await hold(db, ak, mine.reservationId)).toMatchObject({ status: 'held' });
    });

    it("error: a negative, NaN or missing cost is 'invalid_cost' and leaves the hold untouched", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const before = await state(db, ak);
      for (const options of [{ costCents: -1 }, { costCents: -0.0001 }, { costCents: NaN }, { costCents: Infinity }, { costCents: '5e0' }, { costCents: '-5' }, {}, null, undefined]) {
        expect(await ak.commit(r.reservationId, options as never), JSON.stringify(options)).toEqual({ success: false, reason: 'invalid_cost' });
      }
      expect(await state(db, ak)).toBe(before);
      expect(await hold(db, ak, r.reservationId)).toMatchObject({ status: 'held', committed: null });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 30, budgetUsedCents: 0 });
      // The hold can still be settled properly.
      expect(await ak.commit(r.reservationId, { costCents: 3 })).toMatchObject({ success: true, releasedCents: 27 });
    });

    it('error: unknown options or bad metadata throw invalid_argument and leave the hold untouched', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const before = await state(db, ak);
      await rejectsWith(() => ak.commit(r.reservationId, { costCents: 1, ttl: '5m' } as never), 'invalid_argument', 'unknown option');
      await rejectsWith(() => ak.commit(r.reservationId, { costCents: 1, metadata: 'x' as never }), 'invalid_argument', 'metadata string');
      await rejectsWith(() => ak.commit(r.reservationId, { costCents: 1, metadata: { blob: 'x'.repeat(9_000) } }), 'invalid_argument', 'metadata too big');
      expect(await state(db, ak)).toBe(before);
    });
  });

  describe('release()', () => {
    it('happy: gives the whole hold back; a second release is replayed and changes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      expect(reserved(await ak.reserve(key, { costCents: 70 })).budgetRemainingCents).toBe(0);
      const first = await ak.release(r.reservationId);
      expect(first).toEqual({ success: true, reservationId: r.reservationId, releasedCents: 30, holdExpired: false });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 0, budgetHeldCents: 70, budgetRemainingCents: 30 });
      expect(await hold(db, ak, r.reservationId)).toMatchObject({ status: 'released' });
      const before = await state(db, ak);

      expect(await ak.release(r.reservationId)).toEqual({ ...(first as ReleaseResult), replayed: true });
      expect(await state(db, ak)).toBe(before);
      expect(await spentMicros(db, ak, id)).toBe(0);
      // The money is free again.
      expect(await ak.trackUsage(key, { costCents: 30 })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 0 });
      await expectAudited(ak);
    });

    it('happy: releasing a hold that already expired gives back 0 with holdExpired: true', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30, ttl: '1s' }));
      await waitPastExpiry(db, ak, [r.reservationId]);
      // Nothing was replayed: the first release says so.
      expect(await ak.release(r.reservationId)).toEqual({ success: true, reservationId: r.reservationId, releasedCents: 0, holdExpired: true });
      expect(await hold(db, ak, r.reservationId)).toMatchObject({ status: 'expired' });
      // The hold ended once: one 'expire' row, no 'release' row.
      expect((await ledger(db, ak)).map((row) => [row.kind, row.amount])).toEqual([
        ['hold', 300_000],
        ['expire', -300_000],
      ]);
      expect(await ak.release(r.reservationId)).toMatchObject({ success: true, releasedCents: 0, holdExpired: true });
      expect(await counts(db, ak)).toEqual({ ledger: 2, holds: 1 });
      await expectAudited(ak);
    });

    it('happy: a commit after the hold expired still records the cost, and its replay says so too', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30, ttl: '1s' }));
      await waitPastExpiry(db, ak, [r.reservationId]);
      const first = committed(await ak.commit(r.reservationId, { costCents: 12 }));
      expect(first).toMatchObject({ costCents: 12, heldCents: 30, releasedCents: 18, overHoldCents: 0, holdExpired: true, overBudget: false, budgetUsedCents: 12, budgetRemainingCents: 88 });
      expect(await spentMicros(db, ak, id)).toBe(120_000);
      expect((await ledger(db, ak)).map((row) => [row.kind, row.amount])).toEqual([
        ['hold', 300_000],
        ['expire', -300_000],
        ['commit', 120_000],
      ]);
      const before = await state(db, ak);
      expect(await ak.commit(r.reservationId, { costCents: 12 })).toEqual({ ...first, replayed: true });
      expect(await state(db, ak)).toBe(before);
      expect(await ak.release(r.reservationId)).toEqual({ success: false, reason: 'already_committed' });
      await expectAudited(ak);
    });

    it('happy: a late commit of an expired hold whose money others took since is overage, and the cap holds', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30, ttl: '1s' }));
      await waitPastExpiry(db, ak, [r.reservationId]);
      // Once expired the hold frees its money, and a charge takes nearly all of it.
      expect(await ak.trackUsage(key, { costCents: 95 })).toMatchObject({ success: true, budgetUsedCents: 95 });
      const late = committed(await ak.commit(r.reservationId, { costCents: 12 }));
      expect(late).toMatchObject({ costCents: 12, chargedCents: 5, overageCents: 7, holdExpired: true, overBudget: true, budgetUsedCents: 100, budgetRemainingCents: 0 });
      expect(await spentMicros(db, ak, id)).toBe(1_000_000);
      expect((await ledger(db, ak)).map((row) => [row.kind, row.amount])).toEqual([
        ['hold', 300_000],
        ['expire', -300_000],
        ['charge', 950_000],
        ['commit', 50_000],
        ['overage', 70_000],
      ]);
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 100, overageCents: 7 });
      await expectAudited(ak);
    });
  });

  describe('hold expiry', () => {
    it('happy: an abandoned hold blocks a charge that would not fit, then stops counting after its ttl with no sweeper', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 80, ttl: '2s' }));
      expect(await ak.trackUsage(key, { costCents: 30 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetRemainingCents: 20 });
      expect(await ak.reserve(key, { costCents: 30 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      await waitPastExpiry(db, ak, [r.reservationId]);
      // validate only reads: the hold is no longer counted though nothing has swept it.
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 0, budgetRemainingCents: 100 });
      expect(await hold(db, ak, r.reservationId)).toMatchObject({ status: 'held' });

      expect(await ak.sweepExpiredHolds()).toBe(1);
      expect(await hold(db, ak, r.reservationId)).toMatchObject({ status: 'expired' });
      const expires = (await ledger(db, ak)).filter((row) => row.kind === 'expire');
      expect(expires).toEqual([
        { key_id: expect.any(Number), account_id: 'a', kind: 'expire', amount: -800_000, reservation_id: r.reservationId, idempotency_key: null, metadata: null },
      ]);
      expect(await ak.sweepExpiredHolds()).toBe(0);

      expect(await ak.trackUsage(key, { costCents: 30 })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 70 });
      expect((await ledger(db, ak)).filter((row) => row.kind === 'expire')).toHaveLength(1);
      await expectAudited(ak);
    });

    it('happy: the next charge on the key expires its dead holds itself (one expire row each), leaving nothing to sweep', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const a = reserved(await ak.reserve(key, { costCents: 50, ttl: '1s' }));
      const b = reserved(await ak.reserve(key, { costCents: 40, ttl: '1s' }));
      const live = reserved(await ak.reserve(key, { costCents: 10, ttl: '5m' }));
      await waitPastExpiry(db, ak, [a.reservationId, b.reservationId]);
      expect(await ak.trackUsage(key, { costCents: 90 })).toEqual({ success: true, budgetUsedCents: 90, budgetRemainingCents: 0 });
      const expired = (await ledger(db, ak)).filter((row) => row.kind === 'expire');
      expect(expired.map((row) => [row.reservation_id, row.amount]).sort()).toEqual(
        [[a.reservationId, -500_000], [b.reservationId, -400_000]].sort(),
      );
      expect(await hold(db, ak, live.reservationId)).toMatchObject({ status: 'held' });
      expect(await ak.sweepExpiredHolds()).toBe(0);
      await expectAudited(ak);
    });

    it('happy: sweepExpiredHolds(limit) sweeps at most limit holds per call, only expired ones', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a' });
      const dead: string[] = [];
      for (let i = 0; i < 3; i++) dead.push(reserved(await ak.reserve(key, { costCents: 1, ttl: '1s' })).reservationId);
      const live = reserved(await ak.reserve(key, { costCents: 1, ttl: '10m' }));
      await waitPastExpiry(db, ak, dead);
      expect(await ak.sweepExpiredHolds(2)).toBe(2);
      expect(await ak.sweepExpiredHolds(2)).toBe(1);
      expect(await ak.sweepExpiredHolds()).toBe(0);
      expect((await holds(db, ak)).map((h) => h.status).sort()).toEqual(['expired', 'expired', 'expired', 'held']);
      expect(await hold(db, ak, live.reservationId)).toMatchObject({ status: 'held' });
      expect((await ledger(db, ak)).filter((row) => row.kind === 'expire')).toHaveLength(3);
      await expectAudited(ak);
    });

    it('error: sweepExpiredHolds with a limit that is not a positive whole number rejects with invalid_argument', async () => {
      const ak = await getDb().agentKey();
      for (const limit of [0, -1, 1.5, NaN, '10']) {
        await rejectsWith(() => ak.sweepExpiredHolds(limit as number), 'invalid_argument', String(limit));
      }
    });
  });

  describe('idempotency', () => {
    it('happy: trackUsage with the same idempotencyKey charges once and returns the first result (replayed: true)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const first = await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' });
      expect(first).toEqual({ success: true, budgetUsedCents: 5, budgetRemainingCents: 95 });
      const before = await state(db, ak);
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' })).toEqual({ ...(first as TrackUsageResult), replayed: true });
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1', metadata: { retry: 2 } })).toMatchObject({ success: true, replayed: true });
      expect(await state(db, ak)).toBe(before);
      expect(await spentMicros(db, ak, id)).toBe(50_000);
      expect(await ledger(db, ak)).toEqual([
        { key_id: id, account_id: 'a', kind: 'charge', amount: 50_000, reservation_id: null, idempotency_key: 'req-1', metadata: null },
      ]);
      // Another idempotency key is another charge.
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-2' })).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 90 });
      // After other spend, a replay still charges nothing.
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' })).toMatchObject({ success: true, replayed: true });
      expect(await spentMicros(db, ak, id)).toBe(100_000);
      await expectAudited(ak);
    });

    it("error: the same idempotencyKey with another cost is 'idempotency_conflict' and charges nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' });
      const h = reserved(await ak.reserve(key, { costCents: 20, idempotencyKey: 'hold-1' }));
      const before = await state(db, ak);
      expect(await ak.trackUsage(key, { costCents: 5.0001, idempotencyKey: 'req-1' })).toEqual({ success: false, reason: 'idempotency_conflict' });
      // A free call records nothing and needs no database call, so it is never checked against the key: it succeeds, charging nothing.
      expect(await ak.trackUsage(key, { costCents: 0, idempotencyKey: 'req-1' })).toEqual({ success: true });
      expect(await ak.reserve(key, { costCents: 21, idempotencyKey: 'hold-1' })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(await state(db, ak)).toBe(before);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 5, budgetHeldCents: 20 });
      expect(await hold(db, ak, h.reservationId)).toMatchObject({ status: 'held', amount: 200_000 });
    });

    it('happy: reserve with the same idempotencyKey holds once and returns the first hold, also after it is settled', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const first = reserved(await ak.reserve(key, { costCents: 30, idempotencyKey: 'hold-1', ttl: '10m' }));
      const before = await state(db, ak);
      const again = await ak.reserve(key, { costCents: 30, idempotencyKey: 'hold-1', ttl: '10m' });
      expect(again).toEqual({ ...first, replayed: true, reservationStatus: 'held' });
      expect(await state(db, ak)).toBe(before);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 30, budgetRemainingCents: 70 });
      expect((await holds(db, ak)).map((h) => [h.id, h.idempotency_key])).toEqual([[first.reservationId, 'hold-1']]);

      committed(await ak.commit(first.reservationId, { costCents: 10 }));
      // A retry after the commit gets the same reservation back, says it is settled, and holds nothing again.
      expect(await ak.reserve(key, { costCents: 30, idempotencyKey: 'hold-1' })).toMatchObject({
        success: true,
        replayed: true,
        reservationStatus: 'committed',
        reservationId: first.reservationId,
        expiresAt: first.expiresAt,
      });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 10, budgetHeldCents: 0, budgetRemainingCents: 90 });
      expect(await counts(db, ak)).toEqual({ ledger: 2, holds: 1 });
      await expectAudited(ak);
    });

    it('happy: concurrent retries with one idempotencyKey charge and hold exactly once', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const charges = await Promise.all(Array.from({ length: 20 }, () => ak.trackUsage(key, { costCents: 3, idempotencyKey: 'same' })));
      expect(charges.every((c) => c.success)).toBe(true);
      expect(charges.filter((c) => c.success && !c.replayed)).toHaveLength(1);
      const holdsMade = await Promise.all(Array.from({ length: 20 }, () => ak.reserve(key, { costCents: 4, idempotencyKey: 'same-hold' })));
      expect(new Set(holdsMade.map((h) => reserved(h).reservationId)).size).toBe(1);
      expect(holdsMade.filter((h) => h.success && !h.replayed)).toHaveLength(1);
      expect(await spentMicros(db, ak, id)).toBe(30_000);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 3, budgetHeldCents: 4 });
      expect(await counts(db, ak)).toEqual({ ledger: 2, holds: 1 });
      await expectAudited(ak);
    });

    it('security: idempotency keys are per key: two keys may use the same one, and neither sees the other', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const a = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const b = await ak.create({ accountId: 'acct_b', budgetCents: 100 });
      expect(await ak.trackUsage(a.key, { costCents: 5, idempotencyKey: 'shared' })).toEqual({ success: true, budgetUsedCents: 5, budgetRemainingCents: 95 });
      // Another cost under the same idempotency key on another key is no conflict, and no replay.
      expect(await ak.trackUsage(b.key, { costCents: 7, idempotencyKey: 'shared' })).toEqual({ success: true, budgetUsedCents: 7, budgetRemainingCents: 93 });
      const ha = reserved(await ak.reserve(a.key, { costCents: 10, idempotencyKey: 'shared-hold' }));
      const hb = reserved(await ak.reserve(b.key, { costCents: 10, idempotencyKey: 'shared-hold' }));
      expect(ha.reservationId).not.toBe(hb.reservationId);
      expect(ha.replayed).toBeUndefined();
      expect(hb.replayed).toBeUndefined();
      expect(await spentMicros(db, ak, a.id)).toBe(50_000);
      expect(await spentMicros(db, ak, b.id)).toBe(70_000);
      await expectAudited(ak);
    });

    it('happy: a refused charge leaves no record, so a retry with the same idempotencyKey after a refund succeeds', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 10 });
      await ak.trackUsage(key, { costCents: 8 });
      const before = await state(db, ak);
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'retry-me' })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.reserve(key, { costCents: 5, idempotencyKey: 'retry-hold' })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await state(db, ak)).toBe(before);

      expect(await ak.adjust(id, { costCents: -5, reason: 'refund: provider outage' })).toEqual({ success: true, budgetUsedCents: 3, budgetRemainingCents: 7 });
      const retried = await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'retry-me' });
      expect(retried).toEqual({ success: true, budgetUsedCents: 8, budgetRemainingCents: 2 });
      expect(await ak.trackUsage(key, { costCents: 10, idempotencyKey: 'retry-hold' })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      await expectAudited(ak);
    });

    it('security: an idempotency key that looks like SQL is just a string', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const idem = `x'); DELETE FROM ${ak.tableName}; --`;
      expect(await ak.trackUsage(key, { costCents: 1, idempotencyKey: idem })).toMatchObject({ success: true });
      expect(await ak.trackUsage(key, { costCents: 1, idempotencyKey: idem })).toMatchObject({ success: true, replayed: true });
      expect((await ledger(db, ak)).map((r) => r.idempotency_key)).toEqual([idem]);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 1 });
    });
  });

  describe('the ledger', () => {
    it('records every charge, hold, commit, release, expiry, reset and adjustment as exactly one row, and equals the counters after each', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_l', budgetCents: 1000, budgetPeriod: 'month' });
      const other = await ak.create({ accountId: 'acct_other', budgetCents: 1000 });
      const row = (kind: string, amount: number, extra: Partial<LedgerRow> = {}): LedgerRow => ({
        key_id: id,
        account_id: 'acct_l',
        kind,
        amount,
        reservation_id: null,
        idempotency_key: null,
        metadata: null,
        ...extra,
      });
      const expected: LedgerRow[] = [];
      const check = async (label: string) => {
        expect(await ledger(db, ak, id), label).toEqual(expected);
        await expectAudited(ak);
      };
      const call = { model: 'gpt-4o-mini', inputTokens: 1200, outputTokens: 350 };

      await ak.trackUsage(key, { costCents: 1.5, idempotencyKey: 'c1', metadata: call });
      expected.push(row('charge', 15_000, { idempotency_key: 'c1', metadata: call }));
      await check('charge');

      const h1 = reserved(await ak.reserve(key, { costCents: 20, idempotencyKey: 'h1', metadata: { model: 'gpt-4o' } }));
      expected.push(row('hold', 200_000, { reservation_id: h1.reservationId, idempotency_key: 'h1', metadata: { model: 'gpt-4o' } }));
      await check('hold');

      const real = { model: 'gpt-4o', inputTokens: 800, outputTokens: 1_000 };
      committed(await ak.commit(h1.reservationId, { costCents: 12.5, metadata: real }));
      expected.push(row('commit', 125_000, { reservation_id: h1.reservationId, metadata: real }));
      await check('commit');

      const h2 = reserved(await ak.reserve(key, { costCents: 5 }));
      expected.push(row('hold', 50_000, { reservation_id: h2.reservationId }));
      await ak.release(h2.reservationId);
      expected.push(row('release', -50_000, { reservation_id: h2.reservationId }));
      await check('release');

      const h3 = reserved(await ak.reserve(key, { costCents: 7, ttl: '1s' }));
      expected.push(row('hold', 70_000, { reservation_id: h3.reservationId }));
      await waitPastExpiry(db, ak, [h3.reservationId]);
      expect(await ak.sweepExpiredHolds()).toBe(1);
      expected.push(row('expire', -70_000, { reservation_id: h3.reservationId }));
      await check('expire');

      await ak.adjust(id, { costCents: 2, reason: 'correction: provider bill' });
      expected.push(row('adjust', 20_000, { metadata: { reason: 'correction: provider bill' } }));
      await ak.adjust(String(id), { costCents: -1, reason: 'refund', metadata: { ticket: 'T-1' } });
      expected.push(row('adjust', -10_000, { metadata: { ticket: 'T-1', reason: 'refund' } }));
      await check('adjust');

      // Spent this period: 1.5 + 12.5 + 2 - 1 = 15 cents.
      expect(await spentMicros(db, ak, id)).toBe(150_000);
      await endPeriod(db, ak, id);
      expect(await ak.trackUsage(key, { costCents: 0.5 })).toEqual({ success: true, budgetUsedCents: 0.5, budgetRemainingCents: 999.5 });
      expected.push(row('reset', -150_000));
      expected.push(row('charge', 5_000));
      await check('reset');
      expect(await spentMicros(db, ak, id)).toBe(5_000);

      // Refused and invalid calls add nothing.
      await ak.trackUsage(key, { costCents: 5_000 });
      await ak.reserve(key, { costCents: 5_000 });
      await ak.trackUsage(key, { costCents: -1 });
      await check('refusals');
      // The other key's rows are its own.
      await ak.trackUsage(other.key, { costCents: 3 });
      expect(await ledger(db, ak, other.id)).toEqual([{ ...row('charge', 30_000), key_id: other.id, account_id: 'acct_other' }]);
      await check('other key');

      // usage() counts the spend rows (charges, commits, adjustments), not holds, releases, expiries or resets.
      expect(await ak.usage({ keyId: id })).toEqual({ totalCents: 15.5, count: 5, overageCents: 0, buckets: [] });
    });

    it('happy: a period reset with nothing spent writes no reset row', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'day' });
      await endPeriod(db, ak, id);
      await ak.trackUsage(key, { costCents: 1 });
      expect((await ledger(db, ak)).map((r) => r.kind)).toEqual(['charge']);
      await expectAudited(ak);
    });

    it('happy: a reset forgets last period spend but not live holds', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(key, { costCents: 60 });
      const h = reserved(await ak.reserve(key, { costCents: 30 }));
      await endPeriod(db, ak, id);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 0, budgetHeldCents: 30, budgetRemainingCents: 70 });
      expect(await ak.trackUsage(key, { costCents: 70.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 0, budgetRemainingCents: 70 });
      // The failed call rolled the period over: the reset is in the ledger once.
      expect((await ledger(db, ak)).filter((r) => r.kind === 'reset').map((r) => r.amount)).toEqual([-600_000]);
      expect(await ak.commit(h.reservationId, { costCents: 25 })).toMatchObject({ success: true, budgetUsedCents: 25, budgetRemainingCents: 75 });
      expect((await ledger(db, ak)).filter((r) => r.kind === 'reset')).toHaveLength(1);
      await expectAudited(ak);
    });

    it('security: the ledger is append-only: UPDATE and DELETE raise', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 5 });
      const before = await ledger(db, ak);
      const attempts = [
        `UPDATE ${ledgerName(ak)} SET amount_micros = 0`,
        `UPDATE ${ledgerName(ak)} SET kind = 'adjust' WHERE key_id = ${id}`,
        `DELETE FROM ${ledgerName(ak)}`,
        `DELETE FROM ${ledgerName(ak)} WHERE key_id = ${id}`,
      ];
      for (const sql of attempts) {
        await expect(db.query(sql), sql).rejects.toThrow(/append-only/);
      }
      expect(await ledger(db, ak)).toEqual(before);
      await expectAudited(ak);
    });

    it('security: audit() detects a counter changed behind its back, and names the key', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const a = await ak.create({ accountId: 'a', budgetCents: 100 });
      const b = await ak.create({ accountId: 'b', budgetCents: 100 });
      await ak.trackUsage(a.key, { costCents: 10 });
      await ak.trackUsage(b.key, { costCents: 4 });
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 2, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });

      // Someone "gives back" 6 cents of spend by editing the counter.
      await db.query(`UPDATE ${ak.tableName} SET spent_micros = 40000 WHERE id = $1`, [a.id]);
      expect(await ak.audit()).toEqual({ ok: false, keysChecked: 2, mismatches: [{ keyId: a.id, counterCents: 4, ledgerCents: 10 }], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await ak.audit({ keyId: a.id })).toEqual({ ok: false, keysChecked: 1, mismatches: [{ keyId: a.id, counterCents: 4, ledgerCents: 10 }], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await ak.audit({ keyId: String(b.id) })).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });

      // So is an overage counter edited by hand, or an overage row forged.
      await db.query(`UPDATE ${ak.tableName} SET overage_micros = 5 WHERE id = $1`, [b.id]);
      expect(await ak.audit({ keyId: b.id })).toMatchObject({ ok: false, mismatches: [], overageMismatches: [{ keyId: b.id, counterCents: 0.0005, ledgerCents: 0 }] });
      await db.query(`INSERT INTO ${ledgerName(ak)} (key_id, account_id, kind, amount_micros) VALUES ($1, 'b', 'overage', 5)`, [b.id]);
      expect(await ak.audit({ keyId: b.id })).toMatchObject({ ok: true, overageMismatches: [], overageCents: 0.0005 });

      // A forged ledger row (inserts are allowed) is caught too.
      await db.query(
        `INSERT INTO ${ledgerName(ak)} (key_id, account_id, kind, amount_micros) VALUES ($1, 'b', 'charge', 1)`,
        [b.id],
      );
      expect((await ak.audit()).mismatches.sort((x, y) => x.keyId - y.keyId)).toEqual([
        { keyId: a.id, counterCents: 4, ledgerCents: 10 },
        { keyId: b.id, counterCents: 4, ledgerCents: 4.0001 },
      ].sort((x, y) => x.keyId - y.keyId));
    });

    it('error: audit() with a bad key id or an unknown option throws invalid_argument', async () => {
      const ak = await getDb().agentKey();
      await rejectsWith(() => ak.audit({ keyId: 'abc' }), 'invalid_argument', 'keyId abc');
      await rejectsWith(() => ak.audit({ keyId: 0 }), 'invalid_argument', 'keyId 0');
      await rejectsWith(() => ak.audit({ key: 1 } as never), 'invalid_argument', 'unknown option');
      expect(await ak.audit({ keyId: 999_999 })).toEqual({ ok: true, keysChecked: 0, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });
  });

  describe('usage()', () => {
    /** Three keys of two accounts, with ledger rows at chosen times (inserted with SQL). */
    async function seeded(db: TestDb, ak: AgentKey) {
      const a = await ak.create({ accountId: 'acct_1' });
      const b = await ak.create({ accountId: 'acct_1' });
      const c = await ak.create({ accountId: 'acct_2' });
      const rows: [number, string, string, number, string][] = [
        [a.id, 'acct_1', 'charge', 10_000, '2025-03-01T10:15:00Z'],
        [a.id, 'acct_1', 'hold', 999_999, '2025-03-01T10:20:00Z'],
        [a.id, 'acct_1', 'charge', 20_000, '2025-03-01T10:45:00Z'],
        [a.id, 'acct_1', 'release', -999_999, '2025-03-01T10:50:00Z'],
        [a.id, 'acct_1', 'commit', 30_000, '2025-03-01T11:05:00Z'],
        [a.id, 'acct_1', 'expire', -5, '2025-03-01T11:06:00Z'],
        [b.id, 'acct_1', 'charge', 5_000, '2025-03-01T23:59:59.999Z'],
        [b.id, 'acct_1', 'adjust', -2_000, '2025-03-02T00:00:00Z'],
        [b.id, 'acct_1', 'reset', -3_000, '2025-03-02T00:00:01Z'],
        [c.id, 'acct_2', 'charge', 7_000, '2025-03-02T05:00:00Z'],
      ];
      for (const [keyId, account, kind, amount, at] of rows) {
        await db.query(
          `INSERT INTO ${ledgerName(ak)} (key_id, account_id, kind, amount_micros, created_at) VALUES ($1, $2, $3, $4, $5::timestamptz)`,
          [keyId, account, kind, amount, at],
        );
      }
      return { a, b, c };
    }

    it('happy: totals and counts of spend rows for a key, an account, everything, since and until', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { a, b, c } = await seeded(db, ak);
      expect(await ak.usage()).toEqual({ totalCents: 7, count: 6, overageCents: 0, buckets: [] });
      expect(await ak.usage({})).toEqual({ totalCents: 7, count: 6, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: a.id })).toEqual({ totalCents: 6, count: 3, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: String(b.id) })).toEqual({ totalCents: 0.3, count: 2, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: c.id })).toEqual({ totalCents: 0.7, count: 1, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_1' })).toEqual({ totalCents: 6.3, count: 5, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_2' })).toEqual({ totalCents: 0.7, count: 1, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_none' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: a.id, accountId: 'acct_2' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      // [since, until): since is inclusive, until exclusive.
      expect(await ak.usage({ since: '2025-03-01T11:05:00Z' })).toEqual({ totalCents: 4, count: 4, overageCents: 0, buckets: [] });
      expect(await ak.usage({ until: '2025-03-02T00:00:00Z' })).toEqual({ totalCents: 6.5, count: 4, overageCents: 0, buckets: [] });
      expect(await ak.usage({ since: new Date('2025-03-01T10:45:00Z'), until: new Date('2025-03-01T23:59:59.999Z') })).toEqual({ totalCents: 5, count: 2, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_1', since: '2025-03-02' })).toEqual({ totalCents: -0.2, count: 1, overageCents: 0, buckets: [] });
      expect(await ak.usage({ since: '2030-01-01T00:00:00Z' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
    });

    it("happy: bucket 'hour' and 'day' give UTC-aligned buckets in time order", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await seeded(db, ak);
      expect(await ak.usage({ accountId: 'acct_1', bucket: 'hour' })).toEqual({
        totalCents: 6.3,
        count: 5,
        overageCents: 0,
        buckets: [
          { start: '2025-03-01T10:00:00.000Z', costCents: 3, count: 2, overageCents: 0 },
          { start: '2025-03-01T11:00:00.000Z', costCents: 3, count: 1, overageCents: 0 },
          { start: '2025-03-01T23:00:00.000Z', costCents: 0.5, count: 1, overageCents: 0 },
          { start: '2025-03-02T00:00:00.000Z', costCents: -0.2, count: 1, overageCents: 0 },
        ],
      });
      expect(await ak.usage({ bucket: 'day' })).toEqual({
        totalCents: 7,
        count: 6,
        overageCents: 0,
        buckets: [
          { start: '2025-03-01T00:00:00.000Z', costCents: 6.5, count: 4, overageCents: 0 },
          { start: '2025-03-02T00:00:00.000Z', costCents: 0.5, count: 2, overageCents: 0 },
        ],
      });
      expect(await ak.usage({ bucket: 'day', since: '2025-03-02T00:00:00Z' })).toEqual({
        totalCents: 0.5,
        count: 2,
        overageCents: 0,
        buckets: [{ start: '2025-03-02T00:00:00.000Z', costCents: 0.5, count: 2, overageCents: 0 }],
      });
      expect(await ak.usage({ bucket: 'hour', accountId: 'acct_none' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
    });

    it('happy: buckets stay UTC-aligned when the database session runs in another time zone', async () => {
      const db = getDb();
      const table = db.freshTable();
      const zone = 'Asia/Kolkata'; // UTC+05:30: local days and hours are not UTC ones
      let pool: pg.Pool | undefined;
      if (db.name === 'postgres') {
        pool = new pg.Pool({ connectionString: db.url, max: 2, options: `-c TimeZone=${zone}` });
      } else {
        await db.query(`SET TIME ZONE '${zone}'`);
      }
      try {
        const ak = new AgentKey({ pool: pool ?? db.pool, tableName: table });
        await ak.migrate();
        const [tz] = await (pool ? pool.query(`SHOW TimeZone`).then((r) => r.rows) : db.query(`SHOW TimeZone`));
        expect(Object.values(tz as object)[0]).toBe(zone);
        await seeded(db, ak);
        expect((await ak.usage({ bucket: 'day' })).buckets).toEqual([
          { start: '2025-03-01T00:00:00.000Z', costCents: 6.5, count: 4, overageCents: 0 },
          { start: '2025-03-02T00:00:00.000Z', costCents: 0.5, count: 2, overageCents: 0 },
        ]);
        expect((await ak.usage({ bucket: 'hour', accountId: 'acct_1' })).buckets.map((b) => b.start)).toEqual([
          '2025-03-01T10:00:00.000Z',
          '2025-03-01T11:00:00.000Z',
          '2025-03-01T23:00:00.000Z',
          '2025-03-02T00:00:00.000Z',
        ]);
      } finally {
        if (pool) await pool.end();
        else await db.query('RESET TIME ZONE');
      }
    });

    it('happy: usage() reports what the API spent', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_u', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 0.03 });
      const h = reserved(await ak.reserve(key, { costCents: 10 }));
      await ak.commit(h.reservationId, { costCents: 4 });
      const r = reserved(await ak.reserve(key, { costCents: 10 }));
      await ak.release(r.reservationId);
      await ak.adjust(id, { costCents: -1, reason: 'refund' });
      const report = await ak.usage({ accountId: 'acct_u', bucket: 'hour' });
      expect(report).toMatchObject({ totalCents: 3.03, count: 3 });
      expect(report.buckets.length).toBeGreaterThanOrEqual(1);
      expect(report.buckets.reduce((s, b) => s + b.count, 0)).toBe(3);
      for (const b of report.buckets) expect(new Date(b.start).getTime() % 3_600_000).toBe(0);
    });

    it('error: a bad bucket, bad dates, bad ids or unknown options throw invalid_argument', async () => {
      const ak = await getDb().agentKey();
      const bad: [string, unknown][] = [
        ['bucket week', { bucket: 'week' }],
        ['bucket HOUR', { bucket: 'HOUR' }],
        ['bucket null', { bucket: null }],
        ['bucket number', { bucket: 1 }],
        ['since not a date', { since: 'yesterday' }],
        ['since number', { since: 1_700_000_000_000 }],
        ['until invalid Date', { until: new Date(NaN) }],
        ['until object', { until: {} }],
        ['keyId negative', { keyId: -1 }],
        ['keyId text', { keyId: 'abc' }],
        ['accountId empty', { accountId: '' }],
        ['unknown option', { from: '2025-01-01' }],
        ['not an object', 'acct_1'],
        ['null', null],
      ];
      for (const [label, query] of bad) {
        await rejectsWith(() => ak.usage(query as never), 'invalid_argument', label);
      }
    });
  });

  describe('adjust()', () => {
    it('happy: a refund and a correction change spend at once, so a refused charge then fits; recorded with the reason', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_adj', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 90 });
      expect(await ak.trackUsage(key, { costCents: 20 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      expect(await ak.adjust(id, { costCents: -15, reason: 'refund: provider outage' })).toEqual({ success: true, budgetUsedCents: 75, budgetRemainingCents: 25 });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 75, budgetRemainingCents: 25 });
      expect(await ak.trackUsage(key, { costCents: 20 })).toEqual({ success: true, budgetUsedCents: 95, budgetRemainingCents: 5 });

      // A correction upwards may take the key over its budget; nothing more is charged then.
      expect(await ak.adjust(String(id), { costCents: 30, reason: 'correction: late provider bill' })).toEqual({ success: true, budgetUsedCents: 125, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 125 });
      expect(await ak.reserve(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      expect((await ledger(db, ak)).filter((r) => r.kind === 'adjust')).toEqual([
        { key_id: id, account_id: 'acct_adj', kind: 'adjust', amount: -150_000, reservation_id: null, idempotency_key: null, metadata: { reason: 'refund: provider outage' } },
        { key_id: id, account_id: 'acct_adj', kind: 'adjust', amount: 300_000, reservation_id: null, idempotency_key: null, metadata: { reason: 'correction: late provider bill' } },
      ]);
      expect(await spentMicros(db, ak, id)).toBe(1_250_000);
      await expectAudited(ak);
    });

    it('happy: a refund counts live holds when saying what remains', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 50 });
      reserved(await ak.reserve(key, { costCents: 40 }));
      expect(await ak.adjust(id, { costCents: -20, reason: 'refund' })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 30 });
    });

    it('happy: a revoked or expired key can still be refunded', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      await ak.revoke(id);
      expect(await ak.adjust(id, { costCents: -10, reason: 'refund after revocation' })).toMatchObject({ success: true, budgetUsedCents: 0 });
      await expectAudited(ak);
    });

    it("error: a refund larger than the spend is 'refund_exceeds_spend' and writes nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      const before = await state(db, ak);
      expect(await ak.adjust(id, { costCents: -10.0001, reason: 'too much' })).toEqual({ success: false, reason: 'refund_exceeds_spend' });
      expect(await state(db, ak)).toBe(before);
      expect(await ak.adjust(id, { costCents: -10, reason: 'all of it' })).toEqual({ success: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      await expectAudited(ak);
    });

    it("error: a missing reason, a zero, NaN or non-numeric cost, or unknown options throw; an unknown key id is 'invalid_key'", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      const before = await state(db, ak);
      const bad: [string, unknown, string][] = [
        ['missing reason', { costCents: -1 }, 'invalid_argument'],
        ['empty reason', { costCents: -1, reason: '' }, 'invalid_argument'],
        ['reason not a string', { costCents: -1, reason: 42 }, 'invalid_argument'],
        ['zero', { costCents: 0, reason: 'x' }, 'invalid_cost'],
        ['NaN', { costCents: NaN, reason: 'x' }, 'invalid_cost'],
        ['Infinity', { costCents: -Infinity, reason: 'x' }, 'invalid_cost'],
        ['non-decimal string cost', { costCents: '-1e0', reason: 'x' }, 'invalid_cost'],
        ['zero string cost', { costCents: '-0.00', reason: 'x' }, 'invalid_cost'],
        ['missing cost', { reason: 'x' }, 'invalid_cost'],
        ['over MAX_CENTS', { costCents: -(MAX_CENTS + 1), reason: 'x' }, 'invalid_cost'],
        ['unknown option', { costCents: -1, reason: 'x', note: 'y' }, 'invalid_argument'],
        ['bad metadata', { costCents: -1, reason: 'x', metadata: [1] }, 'invalid_argument'],
        ['no options', undefined, 'invalid_argument'],
      ];
      for (const [label, options, code] of bad) {
        await rejectsWith(() => ak.adjust(id, options as never), code, label);
      }
      for (const keyId of [0, -1, 1.5, 'abc', null]) {
        await rejectsWith(() => ak.adjust(keyId as never, { costCents: -1, reason: 'x' }), 'invalid_argument', `keyId ${String(keyId)}`);
      }
      expect(await ak.adjust(999_999, { costCents: -1, reason: 'x' })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.adjust(999_999, { costCents: 1, reason: 'x' })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await state(db, ak)).toBe(before);
    });
  });

  describe('precision and concurrency in one process', () => {
    it('happy: 2000 concurrent charges of 0.03 cents add up to exactly 60 cents (600000 micros), 2000 ledger rows, audit ok', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_p', budgetCents: 60 });
      const results = await Promise.all(Array.from({ length: 2000 }, () => ak.trackUsage(key, { costCents: 0.03 })));
      expect(results.filter((r) => !r.success)).toEqual([]);
      expect(await spentMicros(db, ak, id)).toBe(600_000);
      // Spent to the cent: validate refuses the key; getKey shows its figures.
      expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 60, spentCents: 60, heldCents: 0, remainingCents: 0 });
      const rows = await ledger(db, ak);
      expect(rows).toHaveLength(2000);
      expect(rows.every((r) => r.kind === 'charge' && r.amount === 300)).toBe(true);
      expect(await ak.usage({ keyId: id })).toEqual({ totalCents: 60, count: 2000, overageCents: 0, buckets: [] });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });

    it('happy: float noise is not charged (500 charges of 0.1 + 0.2 cost 150 cents); decimal strings are exact everywhere', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_f', budgetCents: '150' });
      const results = await Promise.all(Array.from({ length: 500 }, () => ak.trackUsage(key, { costCents: 0.1 + 0.2 })));
      expect(results.filter((r) => !r.success)).toEqual([]);
      expect(await spentMicros(db, ak, id)).toBe(1_500_000);
      expect((await ledger(db, ak)).every((r) => r.amount === 3_000)).toBe(true);
      // strings: a budget, a charge, a hold, a commit and an adjustment
      const s = await ak.create({ accountId: 'acct_f', budgetCents: '10.5' });
      expect(s.budgetCents).toBe(10.5);
      expect(await ak.trackUsage(s.key, { costCents: '0.30000000000000004' })).toMatchObject({ success: true, budgetUsedCents: 0.3001 });
      const hold = await ak.reserve(s.key, { costCents: '2' });
      if (!hold.success) throw new Error('hold failed');
      expect(await ak.commit(hold.reservationId, { costCents: '1.25' })).toMatchObject({ success: true, costCents: 1.25, releasedCents: 0.75 });
      expect(await ak.adjust(s.id, { costCents: '-0.5', reason: 'refund' })).toMatchObject({ success: true, budgetUsedCents: 1.0501 });
      expect(await ak.setAccountBudget('acct_f', { budgetCents: '1000.25' })).toMatchObject({ budgetCents: 1000.25 });
      await expectAudited(ak);
    });

    it('security: concurrent reserves, charges, commits and releases never pass the budget; ledger equals counters', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const ops = Array.from({ length: 200 }, async (_, i) => {
        if (i % 3 === 0) return ak.trackUsage(key, { costCents: 1.5 });
        const r = await ak.reserve(key, { costCents: 4 });
        if (!r.success) return r;
        return i % 2 === 0 ? ak.commit(r.reservationId, { costCents: 2.5 }) : ak.release(r.reservationId);
      });
      await Promise.all(ops);
      const spent = await spentMicros(db, ak, id);
      expect(spent).toBeLessThanOrEqual(1_000_000);
      expect(spent).toBeGreaterThan(0);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 0 });
      expect((await holds(db, ak)).filter((h) => h.status === 'held')).toEqual([]);
      await expectAudited(ak);
    });
  });

  describe('subjects (ensureSubject)', () => {
    it('happy: reserveBySubject holds against the subject row; trackUsageBySubject and commit see the hold', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_1', { budgetCents: 100 });
      const h = reserved(await ak.reserveBySubject('mch_1', { costCents: 40, idempotencyKey: 'sub-h' }));
      expect(h.budgetRemainingCents).toBe(60);
      expect(valid(await ak.validateBySubject('mch_1'))).toMatchObject({ accountId: 'mch_1', budgetHeldCents: 40, budgetRemainingCents: 60 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetRemainingCents: 60 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60, idempotencyKey: 'sub-c' })).toEqual({ success: true, budgetUsedCents: 60, budgetRemainingCents: 0 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60, idempotencyKey: 'sub-c' })).toMatchObject({ success: true, replayed: true, budgetUsedCents: 60 });
      expect(await ak.reserveBySubject('mch_1', { costCents: 40, idempotencyKey: 'sub-h' })).toMatchObject({ success: true, replayed: true, reservationId: h.reservationId });
      expect(await ak.commit(h.reservationId, { costCents: 30 })).toMatchObject({ success: true, releasedCents: 10, budgetUsedCents: 90, budgetRemainingCents: 10 });
      expect(valid(await ak.validateBySubject('mch_1'))).toMatchObject({ budgetUsedCents: 90, budgetHeldCents: 0, budgetRemainingCents: 10 });

      const subjectId = valid(await ak.validateBySubject('mch_1')).keyId;
      expect((await ledger(db, ak)).map((r) => [r.key_id, r.account_id, r.kind, r.amount])).toEqual([
        [subjectId, 'mch_1', 'hold', 400_000],
        [subjectId, 'mch_1', 'charge', 600_000],
        [subjectId, 'mch_1', 'commit', 300_000],
      ]);
      await expectAudited(ak);
    });

    it("error: an unknown subject is 'invalid_key'; a bad subject or bad options throw", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_2', { budgetCents: 10 });
      const before = await state(db, ak);
      expect(await ak.reserveBySubject('mch_unknown', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.reserveBySubject('mch_2', { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
      await rejectsWith(() => ak.reserveBySubject('', { costCents: 1 }), 'invalid_argument', 'empty subject');
      await rejectsWith(() => ak.reserveBySubject(42 as never, { costCents: 1 }), 'invalid_argument', 'numeric subject');
      await rejectsWith(() => ak.reserveBySubject('mch_2', { costCents: 1, extra: 1 } as never), 'invalid_argument', 'unknown option');
      expect(await state(db, ak)).toBe(before);
      // A hold of a subject cannot be taken through a raw key path and vice versa: the subject is not a key.
      expect(await ak.reserve('mch_2', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
    });
  });
});

describe('storage failures', () => {
  it('error: a pool that is down makes reserve, commit, release and the ledger calls reject with storage_error', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    const key = mintKey('ak_').raw;
    const rid = unknownReservationId();
    const calls: [string, () => Promise<unknown>][] = [
      ['reserve', () => ak.reserve(key, { costCents: 1 })],
      ['reserve with idempotencyKey', () => ak.reserve(key, { costCents: 1, idempotencyKey: 'k', ttl: '2s' })],
      ['reserveBySubject', () => ak.reserveBySubject('mch_1', { costCents: 1 })],
      ['commit', () => ak.commit(rid, { costCents: 1 })],
      ['release', () => ak.release(rid)],
      ['trackUsage with idempotencyKey', () => ak.trackUsage(key, { costCents: 1, idempotencyKey: 'k' })],
      ['adjust', () => ak.adjust(1, { costCents: -1, reason: 'refund' })],
      ['usage', () => ak.usage({ bucket: 'day' })],
      ['audit', () => ak.audit()],
      ['sweepExpiredHolds', () => ak.sweepExpiredHolds()],
    ];
    for (const [label, call] of calls) {
      const before = pool.calls;
      const err = await rejectsWith(call, 'storage_error', label);
      expect(err.message, label).toMatch(/ECONNREFUSED/);
      expect(pool.calls, label).toBeGreaterThan(before);
    }
  });

  it('security: input refused before the database costs no query', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    const key = mintKey('ak_').raw;
    expect(await ak.commit('abc', { costCents: 1 })).toEqual({ success: false, reason: 'reservation_not_found' });
    expect(await ak.release(42 as never)).toEqual({ success: false, reason: 'reservation_not_found' });
    expect(await ak.commit(unknownReservationId(), { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
    expect(await ak.reserve(key, { costCents: NaN })).toEqual({ success: false, reason: 'invalid_cost' });
    expect(await ak.reserve('not-a-key', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
    // A free charge needs no database call either.
    expect(await ak.trackUsage(key, { costCents: 0 })).toEqual({ success: true });
    await rejectsWith(() => ak.reserve(key, { costCents: 1, ttl: '0s' }), 'invalid_duration');
    await rejectsWith(() => ak.usage({ bucket: 'week' as never }), 'invalid_argument');
    await rejectsWith(() => ak.adjust(1, { costCents: 0, reason: 'x' }), 'invalid_cost');
    expect(pool.calls).toBe(0);
  });
});
