import { describe, expect, it } from 'vitest';
import type { TrackUsageResult } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { committed, reserved, valid } from './helpers/results.js';
import { expectAuditOk, holdRow, holdRows, ledgerAndHoldCounts, ledgerRows, spentMicros, tableState } from './helpers/tables.js';

/**
 * Idempotent charges and holds, on PostgreSQL and PGlite: a retry with the same idempotency key
 * replays the first answer and charges nothing more; the same key with another amount is refused.
 */

forEachDatabase((getDb) => {
  describe('idempotency', () => {
    it('happy: trackUsage with the same idempotencyKey charges once and returns the first result (replayed: true)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const first = await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' });
      expect(first).toEqual({ success: true, budgetUsedCents: 5, budgetRemainingCents: 95 });
      const before = await tableState(db, ak);
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' })).toEqual({ ...(first as TrackUsageResult), replayed: true });
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1', metadata: { retry: 2 } })).toMatchObject({ success: true, replayed: true });
      expect(await tableState(db, ak)).toBe(before);
      expect(await spentMicros(db, ak, id)).toBe(50_000);
      expect(await ledgerRows(db, ak)).toEqual([
        { key_id: id, account_id: 'a', kind: 'charge', amount: 50_000, reservation_id: null, idempotency_key: 'req-1', metadata: null },
      ]);
      // Another idempotency key is another charge.
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-2' })).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 90 });
      // After other spend, a replay still charges nothing.
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' })).toMatchObject({ success: true, replayed: true });
      expect(await spentMicros(db, ak, id)).toBe(100_000);
      await expectAuditOk(ak);
    });

    it("error: the same idempotencyKey with another cost is 'idempotency_conflict' and charges nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'req-1' });
      const h = reserved(await ak.reserve(key, { costCents: 20, idempotencyKey: 'hold-1' }));
      const before = await tableState(db, ak);
      expect(await ak.trackUsage(key, { costCents: 5.0001, idempotencyKey: 'req-1' })).toEqual({ success: false, reason: 'idempotency_conflict' });
      // A free call records nothing and needs no database call, so it is never checked against the key: it succeeds, charging nothing.
      expect(await ak.trackUsage(key, { costCents: 0, idempotencyKey: 'req-1' })).toEqual({ success: true });
      expect(await ak.reserve(key, { costCents: 21, idempotencyKey: 'hold-1' })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(await tableState(db, ak)).toBe(before);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 5, budgetHeldCents: 20 });
      expect(await holdRow(db, ak, h.reservationId)).toMatchObject({ status: 'held', amount: 200_000 });
    });

    it('happy: reserve with the same idempotencyKey holds once and returns the first hold, also after it is settled', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const first = reserved(await ak.reserve(key, { costCents: 30, idempotencyKey: 'hold-1', ttl: '10m' }));
      const before = await tableState(db, ak);
      const again = await ak.reserve(key, { costCents: 30, idempotencyKey: 'hold-1', ttl: '10m' });
      expect(again).toEqual({ ...first, replayed: true, reservationStatus: 'held' });
      expect(await tableState(db, ak)).toBe(before);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 30, budgetRemainingCents: 70 });
      expect((await holdRows(db, ak)).map((h) => [h.id, h.idempotency_key])).toEqual([[first.reservationId, 'hold-1']]);

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
      expect(await ledgerAndHoldCounts(db, ak)).toEqual({ ledger: 2, holds: 1 });
      await expectAuditOk(ak);
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
      expect(await ledgerAndHoldCounts(db, ak)).toEqual({ ledger: 2, holds: 1 });
      await expectAuditOk(ak);
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
      await expectAuditOk(ak);
    });

    it('happy: a refused charge leaves no record, so a retry with the same idempotencyKey after a refund succeeds', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 10 });
      await ak.trackUsage(key, { costCents: 8 });
      const before = await tableState(db, ak);
      expect(await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'retry-me' })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.reserve(key, { costCents: 5, idempotencyKey: 'retry-hold' })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await tableState(db, ak)).toBe(before);

      expect(await ak.adjust(id, { costCents: -5, reason: 'refund: provider outage' })).toEqual({ success: true, budgetUsedCents: 3, budgetRemainingCents: 7 });
      const retried = await ak.trackUsage(key, { costCents: 5, idempotencyKey: 'retry-me' });
      expect(retried).toEqual({ success: true, budgetUsedCents: 8, budgetRemainingCents: 2 });
      expect(await ak.trackUsage(key, { costCents: 10, idempotencyKey: 'retry-hold' })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      await expectAuditOk(ak);
    });

    it('security: an idempotency key that looks like SQL is just a string', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const idem = `x'); DELETE FROM ${ak.tableName}; --`;
      expect(await ak.trackUsage(key, { costCents: 1, idempotencyKey: idem })).toMatchObject({ success: true });
      expect(await ak.trackUsage(key, { costCents: 1, idempotencyKey: idem })).toMatchObject({ success: true, replayed: true });
      expect((await ledgerRows(db, ak)).map((r) => r.idempotency_key)).toEqual([idem]);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 1 });
    });
  });
});
