import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { committed, reserved } from './helpers/results.js';

/**
 * The outbox's writers other than alerts (test/windows.test.ts): a revocation, a hold that
 * ends unsettled and a commit's overage each write one event in the transaction that made
 * them; a refused step writes none. On PostgreSQL and PGlite.
 */

async function outbox(db: TestDb, ak: AgentKey) {
  return db.query<{ type: string; key_id: string | null; account_id: string; data: Record<string, unknown> }>(
    `SELECT type, key_id::text, account_id, data FROM ${tableNames(ak.tableName).outbox} ORDER BY id`,
  );
}

forEachDatabase((getDb) => {
  describe('outbox events', () => {
    it('happy: revoking a tree writes one key.revoked per key, with who did it', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id });
      expect(await ak.revoke(root.id)).toBe(true);
      expect(await ak.revoke(root.id)).toBe(false);
      const rows = await outbox(db, ak);
      expect(rows.map((r) => [r.type, Number(r.key_id), r.account_id])).toEqual([
        ['key.revoked', root.id, 'acc'],
        ['key.revoked', child.id, 'acc'],
      ]);
      expect(rows[0]!.data).toMatchObject({ key_id: root.id, account_id: 'acc', actor: 'library', revoked_at: expect.any(String) });
    });

    it('happy: a hold that ends unsettled writes hold.expired once, whether swept or passed by a charge; settled holds write none', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 'acc', budgetCents: 1000 });
      const a = reserved(await ak.reserve(k.key, { costCents: 30 }));
      const b = reserved(await ak.reserve(k.key, { costCents: 40 }));
      const c = reserved(await ak.reserve(k.key, { costCents: 50 }));
      expect(await ak.release(c.reservationId)).toMatchObject({ success: true });
      await db.query(`UPDATE ${tableNames(ak.tableName).holds} SET expires_at = now() - interval '1 second' WHERE id = ANY($1::text[])`, [
        [a.reservationId, b.reservationId],
      ]);
      // A charge on the key ends its lapsed holds on its way; the sweep finds none left.
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: true });
      expect(await ak.sweepExpiredHolds()).toBe(0);
      const rows = await outbox(db, ak);
      expect(rows.map((r) => [r.type, r.data.hold_id, r.data.amount_micros]).sort()).toEqual(
        [
          ['hold.expired', a.reservationId, '300000'],
          ['hold.expired', b.reservationId, '400000'],
        ].sort(),
      );
      const d = reserved(await ak.reserve(k.key, { costCents: 5 }));
      await db.query(`UPDATE ${tableNames(ak.tableName).holds} SET expires_at = now() - interval '1 second' WHERE id = $1`, [d.reservationId]);
      expect(await ak.sweepExpiredHolds()).toBe(1);
      expect(await ak.sweepExpiredHolds()).toBe(0);
      expect((await outbox(db, ak)).filter((r) => r.data.hold_id === d.reservationId)).toHaveLength(1);
    });

    it('happy: a commit past the budget writes overage.recorded with the part no budget took and the budget that stopped it; one within writes none', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 1000 }, { cents: 120, period: 'day' }] });
      const within = reserved(await ak.reserve(k.key, { costCents: 50 }));
      committed(await ak.commit(within.reservationId, { costCents: 40 }));
      expect(await outbox(db, ak)).toEqual([]);
      const h = reserved(await ak.reserve(k.key, { costCents: 50 }));
      expect(committed(await ak.commit(h.reservationId, { costCents: 100 }))).toMatchObject({ overageCents: 20 });
      const rows = await outbox(db, ak);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({
        type: 'overage.recorded',
        account_id: 'acc',
        data: { hold_id: h.reservationId, overage_micros: '200000', cost_micros: '1000000', limited_by: { kind: 'key', key_id: k.id, window: 'day' } },
      });
      // A replay of the commit writes nothing more.
      expect(await ak.commit(h.reservationId, { costCents: 100 })).toMatchObject({ success: true, replayed: true });
      expect(await outbox(db, ak)).toHaveLength(1);
    });

    it('the outbox is append-only: updates and deletes are refused', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 'acc' });
      await ak.revoke(k.id);
      const t = tableNames(ak.tableName);
      await expect(db.query(`UPDATE ${t.outbox} SET type = 'key.expired'`)).rejects.toThrow(/append-only|not allowed|refuse/i);
      await expect(db.query(`DELETE FROM ${t.outbox}`)).rejects.toThrow(/append-only|not allowed|refuse/i);
      expect(await outbox(db, ak)).toHaveLength(1);
    });
  });
});
