import { describe, expect, it } from 'vitest';
import { MAX_CENTS, type ReleaseResult } from '../src/index.js';
import { mintKey } from '../src/keys.js';
import { forEachDatabase } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { committed, ISO, reserved, unknownReservationId, valid } from './helpers/results.js';
import { expectAuditOk, holdRow, holdRows, ledgerAndHoldCounts, ledgerRows, spentMicros, tableState, waitPastExpiry } from './helpers/tables.js';

/**
 * Holds (reservations), on PostgreSQL and PGlite: reserve() counts against every budget at once,
 * commit() charges what was used and returns the rest (overage past the hold is recorded, never
 * counted against a cap), release() returns it all, and an expired hold returns its money by
 * itself.
 */

const RSV = /^rsv_[0-9A-Za-z]{24}$/;
const MINUTE = 60_000;
/** Allowed distance between the database clock and ours when checking an expiresAt. */
const CLOCK_SLACK = 5_000;

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

      const h = await holdRow(db, ak, reserved(r).reservationId);
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
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: id, window: 'lifetime' }, budgetUsedCents: 15, budgetRemainingCents: 0 });
      expect(await ak.reserve(key, { costCents: 0.0001 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: id, window: 'lifetime' }, budgetUsedCents: 15, budgetRemainingCents: 0 });
      // A free call still fits: it succeeds without figures and records nothing.
      const ledgerBefore = await ledgerAndHoldCounts(db, ak);
      expect(await ak.trackUsage(key, { costCents: 0 })).toEqual({ success: true });
      expect(await ledgerAndHoldCounts(db, ak)).toEqual(ledgerBefore);
      expect(await spentMicros(db, ak, id)).toBe(150_000);
      await expectAuditOk(ak);
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
      const before = await tableState(db, ak);
      expect(await ak.reserve(key, { costCents: 25.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'key', keyId: id, window: 'lifetime' },
        budgetUsedCents: 40,
        budgetRemainingCents: 25,
      });
      expect(await tableState(db, ak)).toBe(before);
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
      const before = await tableState(db, ak);

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
      expect(await tableState(db, ak)).toBe(before);
    });

    it("error: 'invalid_cost' for a negative, NaN, infinite, non-numeric, too large or missing cost, writing nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await tableState(db, ak);
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
      expect(await tableState(db, ak)).toBe(before);
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
      const before = await ledgerAndHoldCounts(db, ak);
      const snapshot = await tableState(db, ak);
      for (const ttl of ['0s', '0m', '25h', '2d', '1mo', 'abc', '', '-5m', '1.5m', 5, true, {}]) {
        await rejectsWith(() => ak.reserve(key, { costCents: 1, ttl: ttl as string }), 'invalid_duration', JSON.stringify(ttl));
        await rejectsWith(() => ak.reserveBySubject('mch_x', { costCents: 1, ttl: ttl as string }), 'invalid_duration', `subject ${JSON.stringify(ttl)}`);
      }
      expect(await ledgerAndHoldCounts(db, ak)).toEqual(before);
      expect(await tableState(db, ak)).toBe(snapshot);
    });

    it('error: unknown options, bad metadata or a bad idempotency key throw invalid_argument and write nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await tableState(db, ak);
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
      expect(await tableState(db, ak)).toBe(before);
      // Metadata just under the limit is fine.
      reserved(await ak.reserve(key, { costCents: 1, metadata: { blob: 'x'.repeat(8_000) } }));
    });

    it('security: metadata the database cannot store (a NUL character) is invalid_argument and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await tableState(db, ak);
      await rejectsWith(() => ak.reserve(key, { costCents: 1, metadata: { note: 'a\u0000b' } }), 'invalid_argument', 'reserve');
      await rejectsWith(() => ak.trackUsage(key, { costCents: 1, metadata: { note: 'a\u0000b' } }), 'invalid_argument', 'trackUsage');
      expect(await tableState(db, ak)).toBe(before);
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
      expect(await holdRow(db, ak, r.reservationId)).toMatchObject({ status: 'committed', committed: 120_000 });
      expect(await spentMicros(db, ak, id)).toBe(220_000);
      await expectAuditOk(ak);
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
      await expectAuditOk(ak);
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
      await expectAuditOk(ak);
    });

    it('happy: a commit after the key was revoked still records the money spent', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      await ak.revoke(id);
      expect(await ak.commit(r.reservationId, { costCents: 20 })).toMatchObject({ success: true, costCents: 20, budgetUsedCents: 20 });
      expect(await spentMicros(db, ak, id)).toBe(200_000);
      await expectAuditOk(ak);
    });

    it('happy: a second commit returns the first outcome with replayed: true and charges nothing more', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const first = committed(await ak.commit(r.reservationId, { costCents: 12 }));
      const spent = await spentMicros(db, ak, id);
      const before = await tableState(db, ak);

      expect(await ak.commit(r.reservationId, { costCents: 12 })).toEqual({ ...first, replayed: true });
      // Other metadata is still the same commit; another cost is a conflict, and the first outcome stands.
      expect(await ak.commit(r.reservationId, { costCents: 12, metadata: { retry: true } })).toEqual({ ...first, replayed: true });
      expect(await ak.commit(r.reservationId, { costCents: 99 })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(await ak.commit(r.reservationId, { costCents: '12.0001' })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(await spentMicros(db, ak, id)).toBe(spent);
      expect(await tableState(db, ak)).toBe(before);
      expect((await ledgerRows(db, ak)).filter((row) => row.kind === 'commit')).toHaveLength(1);
      await expectAuditOk(ak);
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
      expect((await ledgerRows(db, ak)).map((row) => row.kind)).toEqual(['hold', 'commit']);
      await expectAuditOk(ak);
    });

    it("error: release after commit is 'already_committed'; commit after release is 'already_released'; nothing written", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const a = reserved(await ak.reserve(key, { costCents: 30 }));
      const b = reserved(await ak.reserve(key, { costCents: 20 }));
      committed(await ak.commit(a.reservationId, { costCents: 10 }));
      expect(await ak.release(b.reservationId)).toMatchObject({ success: true, releasedCents: 20 });
      const before = await tableState(db, ak);

      expect(await ak.release(a.reservationId)).toEqual({ success: false, reason: 'already_committed' });
      expect(await ak.commit(b.reservationId, { costCents: 5 })).toEqual({ success: false, reason: 'already_released' });
      expect(await tableState(db, ak)).toBe(before);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 10, budgetHeldCents: 0, budgetRemainingCents: 90 });
      await expectAuditOk(ak);
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
      const before = await tableState(db, ak);
      const otherBefore = await tableState(db, other);

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
      expect(await tableState(db, ak)).toBe(before);
      expect(await tableState(db, other)).toBe(otherBefore);
      expect(await holdRow(db, other, foreign.reservationId)).toMatchObject({ status: 'held' });
      expect(await holdRow(db, ak, mine.reservationId)).toMatchObject({ status: 'held' });
    });

    it("error: a negative, NaN or missing cost is 'invalid_cost' and leaves the hold untouched", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const before = await tableState(db, ak);
      for (const options of [{ costCents: -1 }, { costCents: -0.0001 }, { costCents: NaN }, { costCents: Infinity }, { costCents: '5e0' }, { costCents: '-5' }, {}, null, undefined]) {
        expect(await ak.commit(r.reservationId, options as never), JSON.stringify(options)).toEqual({ success: false, reason: 'invalid_cost' });
      }
      expect(await tableState(db, ak)).toBe(before);
      expect(await holdRow(db, ak, r.reservationId)).toMatchObject({ status: 'held', committed: null });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 30, budgetUsedCents: 0 });
      // The hold can still be settled properly.
      expect(await ak.commit(r.reservationId, { costCents: 3 })).toMatchObject({ success: true, releasedCents: 27 });
    });

    it('error: unknown options or bad metadata throw invalid_argument and leave the hold untouched', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30 }));
      const before = await tableState(db, ak);
      await rejectsWith(() => ak.commit(r.reservationId, { costCents: 1, ttl: '5m' } as never), 'invalid_argument', 'unknown option');
      await rejectsWith(() => ak.commit(r.reservationId, { costCents: 1, metadata: 'x' as never }), 'invalid_argument', 'metadata string');
      await rejectsWith(() => ak.commit(r.reservationId, { costCents: 1, metadata: { blob: 'x'.repeat(9_000) } }), 'invalid_argument', 'metadata too big');
      expect(await tableState(db, ak)).toBe(before);
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
      expect(await holdRow(db, ak, r.reservationId)).toMatchObject({ status: 'released' });
      const before = await tableState(db, ak);

      expect(await ak.release(r.reservationId)).toEqual({ ...(first as ReleaseResult), replayed: true });
      expect(await tableState(db, ak)).toBe(before);
      expect(await spentMicros(db, ak, id)).toBe(0);
      // The money is free again.
      expect(await ak.trackUsage(key, { costCents: 30 })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 0 });
      await expectAuditOk(ak);
    });

    it('happy: releasing a hold that already expired gives back 0 with holdExpired: true', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const r = reserved(await ak.reserve(key, { costCents: 30, ttl: '1s' }));
      await waitPastExpiry(db, ak, [r.reservationId]);
      // Nothing was replayed: the first release says so.
      expect(await ak.release(r.reservationId)).toEqual({ success: true, reservationId: r.reservationId, releasedCents: 0, holdExpired: true });
      expect(await holdRow(db, ak, r.reservationId)).toMatchObject({ status: 'expired' });
      // The hold ended once: one 'expire' row, no 'release' row.
      expect((await ledgerRows(db, ak)).map((row) => [row.kind, row.amount])).toEqual([
        ['hold', 300_000],
        ['expire', -300_000],
      ]);
      expect(await ak.release(r.reservationId)).toMatchObject({ success: true, releasedCents: 0, holdExpired: true });
      expect(await ledgerAndHoldCounts(db, ak)).toEqual({ ledger: 2, holds: 1 });
      await expectAuditOk(ak);
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
      expect((await ledgerRows(db, ak)).map((row) => [row.kind, row.amount])).toEqual([
        ['hold', 300_000],
        ['expire', -300_000],
        ['commit', 120_000],
      ]);
      const before = await tableState(db, ak);
      expect(await ak.commit(r.reservationId, { costCents: 12 })).toEqual({ ...first, replayed: true });
      expect(await tableState(db, ak)).toBe(before);
      expect(await ak.release(r.reservationId)).toEqual({ success: false, reason: 'already_committed' });
      await expectAuditOk(ak);
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
      expect((await ledgerRows(db, ak)).map((row) => [row.kind, row.amount])).toEqual([
        ['hold', 300_000],
        ['expire', -300_000],
        ['charge', 950_000],
        ['commit', 50_000],
        ['overage', 70_000],
      ]);
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 100, overageCents: 7 });
      await expectAuditOk(ak);
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
      expect(await holdRow(db, ak, r.reservationId)).toMatchObject({ status: 'held' });

      expect(await ak.sweepExpiredHolds()).toBe(1);
      expect(await holdRow(db, ak, r.reservationId)).toMatchObject({ status: 'expired' });
      const expires = (await ledgerRows(db, ak)).filter((row) => row.kind === 'expire');
      expect(expires).toEqual([
        { key_id: expect.any(Number), account_id: 'a', kind: 'expire', amount: -800_000, reservation_id: r.reservationId, idempotency_key: null, metadata: null },
      ]);
      expect(await ak.sweepExpiredHolds()).toBe(0);

      expect(await ak.trackUsage(key, { costCents: 30 })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 70 });
      expect((await ledgerRows(db, ak)).filter((row) => row.kind === 'expire')).toHaveLength(1);
      await expectAuditOk(ak);
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
      const expired = (await ledgerRows(db, ak)).filter((row) => row.kind === 'expire');
      expect(expired.map((row) => [row.reservation_id, row.amount]).sort()).toEqual(
        [[a.reservationId, -500_000], [b.reservationId, -400_000]].sort(),
      );
      expect(await holdRow(db, ak, live.reservationId)).toMatchObject({ status: 'held' });
      expect(await ak.sweepExpiredHolds()).toBe(0);
      await expectAuditOk(ak);
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
      expect((await holdRows(db, ak)).map((h) => h.status).sort()).toEqual(['expired', 'expired', 'expired', 'held']);
      expect(await holdRow(db, ak, live.reservationId)).toMatchObject({ status: 'held' });
      expect((await ledgerRows(db, ak)).filter((row) => row.kind === 'expire')).toHaveLength(3);
      await expectAuditOk(ak);
    });

    it('error: sweepExpiredHolds with a limit that is not a positive whole number rejects with invalid_argument', async () => {
      const ak = await getDb().agentKey();
      for (const limit of [0, -1, 1.5, NaN, '10']) {
        await rejectsWith(() => ak.sweepExpiredHolds(limit as number), 'invalid_argument', String(limit));
      }
    });
  });
});
