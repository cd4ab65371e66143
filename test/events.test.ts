import { describe, expect, it } from 'vitest';
import type { AgentKey, KeyEvent } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb, uniqueName } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { packageKey, packageTableSql } from './helpers/package.js';
import { ISO } from './helpers/results.js';

/**
 * The key event log, on PostgreSQL and PGlite: every change to a key (made, updated,
 * rotated, revoked), every ceiling set and every adjustment appears exactly once, with the
 * fields it changed and who made it (the library, the admin, the CLI, a key through
 * self-serve, or SQL caught by the trigger); spending writes none; a refused change writes
 * none; the log refuses updates and deletes.
 */

const newAccount = () => uniqueName('acct_events');

/** The events of `accountId`, oldest first (keyEvents answers newest first). */
async function eventsOf(ak: AgentKey, accountId: string): Promise<KeyEvent[]> {
  return (await ak.keyEvents({ accountId, limit: 1000 })).reverse();
}

async function eventCount(db: TestDb, ak: AgentKey): Promise<number> {
  const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${tableNames(ak.tableName).events}`);
  return Number(row!.n);
}

forEachDatabase((getDb) => {
  describe('the key event log', () => {
    it('happy: each change appears once with its fields before and after, and who made it', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const root = await ak.create({ accountId: account, name: 'root', scopes: ['a', 'b'], budgetCents: 1000, budgetPeriod: 'month' });
      const child = await ak.create({ accountId: account, parentId: root.id, scopes: ['a'], budgetCents: 5 });
      await ak.update(root.id, { name: 'renamed', budgetCents: '12.5' });
      await ak.rotate(root.id, { gracePeriod: '1h' });
      await ak.setAccountBudget(account, { budgetCents: 2000, budgetPeriod: 'day' });
      expect((await ak.adjust(root.id, { costCents: 3, reason: 'late usage report' })).success).toBe(true);
      await ak.clearAccountBudget(account);
      await ak.revoke(root.id);

      const events = await eventsOf(ak, account);
      expect(events.map((e) => [e.kind, e.keyId])).toEqual([
        ['created', root.id],
        ['created', child.id],
        ['updated', root.id],
        ['rotated', root.id],
        ['budget_set', null],
        ['adjusted', root.id],
        ['budget_set', null],
        // A revoke takes the subtree: one event per key.
        ['revoked', root.id],
        ['revoked', child.id],
      ]);
      for (const e of events) {
        expect(e).toMatchObject({ accountId: account, actor: 'library', actorKeyId: null, at: expect.stringMatching(ISO) });
      }
      const [created, createdChild, updated, rotated, ceiling, adjusted, cleared, revoked] = events;
      expect(created!.changes).toEqual({
        name: { after: 'root' },
        scopes: { after: ['a', 'b'] },
        budgetCents: { after: 1000 },
        budgetPeriod: { after: 'month' },
      });
      expect(createdChild!.changes).toMatchObject({ parentId: { after: root.id }, budgetCents: { after: 5 }, scopes: { after: ['a'] } });
      expect(updated!.changes).toEqual({ name: { before: 'root', after: 'renamed' }, budgetCents: { before: 1000, after: 12.5 } });
      expect(Object.keys(rotated!.changes)).toEqual(['previousKeyValidUntil']);
      expect(rotated!.changes.previousKeyValidUntil!.after).toMatch(ISO);
      expect(ceiling!.changes).toEqual({ budgetCents: { before: null, after: 2000 }, budgetPeriod: { before: null, after: 'day' } });
      expect(adjusted!.changes).toEqual({ costCents: { after: 3 }, reason: { after: 'late usage report' } });
      expect(cleared!.changes).toEqual({ budgetCents: { before: 2000, after: null }, budgetPeriod: { before: 'day', after: null } });
      expect(revoked!.changes).toEqual({ revokedAt: { before: null, after: expect.stringMatching(ISO) } });

      // Newest first, filtered by key, paged with before.
      const ofRoot = await ak.keyEvents({ keyId: root.id });
      expect(ofRoot.map((e) => e.kind)).toEqual(['revoked', 'adjusted', 'rotated', 'updated', 'created']);
      const page1 = await ak.keyEvents({ keyId: root.id, limit: 2 });
      const page2 = await ak.keyEvents({ keyId: root.id, limit: 2, before: page1[1]!.id });
      expect([...page1, ...page2].map((e) => e.id)).toEqual(ofRoot.slice(0, 4).map((e) => e.id));
    });

    it('happy: spending, validating and no-op writes record nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account, budgetCents: 100, budgetPeriod: 'day' });
      await ak.setAccountBudget(account, { budgetCents: 1000 });
      const n = await eventCount(db, ak);
      await ak.validate(k.key);
      await ak.trackUsage(k.key, { costCents: 1 });
      const hold = await ak.reserve(k.key, { costCents: 5 });
      if (!hold.success) throw new Error('reserve failed');
      await ak.commit(hold.reservationId, { costCents: 4 });
      const hold2 = await ak.reserve(k.key, { costCents: 5 });
      if (hold2.success) await ak.release(hold2.reservationId);
      await ak.flush();
      // A period rolling over is not a change anyone made.
      await db.query(`UPDATE ${tableNames(ak.tableName).table} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [k.id]);
      await ak.trackUsage(k.key, { costCents: 1 });
      // The same ceiling again, and an SQL write of a value it already has.
      await ak.setAccountBudget(account, { budgetCents: 1000 });
      await db.query(`UPDATE ${tableNames(ak.tableName).table} SET name = name WHERE id = $1`, [k.id]);
      expect(await eventCount(db, ak)).toBe(n);
    });

    it('happy: a change made with by is the key\'s; an admin or CLI process is recorded as such; an SQL edit is "sql"', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const root = await ak.create({ accountId: account, budgetCents: 100 });
      const child = await ak.create({ accountId: account, parentId: root.id, budgetCents: 50 });
      const grandchild = await ak.create({ accountId: account, parentId: child.id, budgetCents: 20 });
      await ak.update(child.id, { budgetCents: 40 }, { by: root.id });
      await ak.revoke(grandchild.id, null, { by: child.id });
      const admin = await db.agentKey({ tableName: ak.tableName, actor: 'admin' });
      await admin.update(root.id, { name: 'by the admin' });
      const cli = await db.agentKey({ tableName: ak.tableName, actor: 'cli' });
      await cli.rotate(root.id);
      await db.query(`UPDATE ${tableNames(ak.tableName).table} SET budget_cents = 70, delegated_by = 'ops' WHERE id = $1`, [root.id]);

      const events = (await eventsOf(ak, account)).slice(3);
      expect(events.map((e) => [e.kind, e.keyId, e.actor, e.actorKeyId])).toEqual([
        ['updated', child.id, 'key', root.id],
        ['revoked', grandchild.id, 'key', child.id],
        ['updated', root.id, 'admin', null],
        ['rotated', root.id, 'cli', null],
        ['updated', root.id, 'sql', null],
      ]);
      // The SQL edit of the package's cents column shows as the budget it became.
      expect(events[4]!.changes).toEqual({ budgetCents: { before: 100, after: 70 }, delegatedBy: { before: null, after: 'ops' } });
    });

    it('happy: a cascade narrows every descendant, each with its own event, in the transaction of the change', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const root = await ak.create({ accountId: account, scopes: ['a', 'b'] });
      const kids = [];
      for (let i = 0; i < 3; i++) kids.push(await ak.create({ accountId: account, parentId: root.id, scopes: ['a', 'b'] }));
      const n = await eventCount(db, ak);
      await ak.update(root.id, { scopes: ['a'] }, { cascade: true });
      const events = (await eventsOf(ak, account)).slice(-4);
      expect(events.map((e) => e.keyId).sort()).toEqual([root.id, ...kids.map((k) => k.id)].sort());
      for (const e of events) expect(e).toMatchObject({ kind: 'updated', changes: { scopes: { before: ['a', 'b'], after: ['a'] } } });
      expect(await eventCount(db, ak)).toBe(n + 4);
    });

    it('concurrency: many callers changing keys at once: each change that returned has exactly one event, in the order the changes committed', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const keys = await Promise.all(Array.from({ length: 4 }, () => ak.create({ accountId: account, budgetCents: 1000 })));
      const n = await eventCount(db, ak);
      // 40 updates, 10 per key, all at once: each sets a budget no other call sets.
      const calls = Array.from({ length: 40 }, (_, i) => ak.update(keys[i % 4]!.id, { budgetCents: 2000 + i }).then(() => i));
      const done = await Promise.all(calls);
      expect(await eventCount(db, ak)).toBe(n + done.length);
      const events = (await eventsOf(ak, account)).slice(4);
      for (const key of keys) {
        const mine = events.filter((e) => e.keyId === key.id);
        expect(mine).toHaveLength(10);
        // Each event's before is the after of the one before it: none lost, none invented.
        for (let j = 1; j < mine.length; j++) expect(mine[j]!.changes.budgetCents!.before).toBe(mine[j - 1]!.changes.budgetCents!.after);
        expect(mine[mine.length - 1]!.changes.budgetCents!.after).toBe((await ak.getKey(key.id))!.budgetCents);
      }
    });

    it("happy: on the package's table a key with no account (its account_id may be NULL) is made, edited and revoked, with events under account ''", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(packageTableSql(table));
      const ak = await db.agentKey({ tableName: table });
      const k = packageKey();
      const [row] = await db.query<{ id: number }>(`INSERT INTO ${table} (key_hash, key_prefix) VALUES ($1, $2) RETURNING id`, [k.hash, k.prefix]);
      const id = Number(row!.id);
      await db.query(`UPDATE ${table} SET name = 'edited in SQL' WHERE id = $1`, [id]);
      expect(await ak.revoke(id)).toBe(true);
      const events = await ak.keyEvents({ keyId: id });
      expect(events.map((e) => [e.kind, e.actor, e.accountId])).toEqual([
        ['revoked', 'library', ''],
        ['updated', 'sql', ''],
        ['created', 'sql', ''],
      ]);
      expect(events[1]!.changes).toEqual({ name: { before: 'default', after: 'edited in SQL' } });
    });

    it('unhappy: rows inserted by SQL with changes agentkey never writes are read as they are, never an error that hides the log', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account, name: 'ok' });
      const events = tableNames(ak.tableName).events;
      const odd = [
        '{"name": "not an object"}',
        '{"expires_at": {"after": "garbage"}, "budget_micros": {"after": "abc"}}',
        '{"__proto__": {"after": 1}, "toString": {"after": 2}}',
        '[1, 2]',
      ];
      for (const changes of odd) {
        await db.query(`INSERT INTO ${events} (key_id, account_id, kind, actor, changes) VALUES ($1, $2, 'updated', 'sql', $3::jsonb)`, [k.id, account, changes]);
      }
      const read = await ak.keyEvents({ keyId: k.id });
      expect(read).toHaveLength(5);
      const [arr, proto, bad, notObject] = read;
      expect(arr!.changes).toEqual({});
      expect(Object.getPrototypeOf(proto!.changes)).toBe(Object.prototype);
      expect(Object.keys(proto!.changes).sort()).toEqual(['__proto__', 'toString']);
      expect(proto!.changes.toString).toEqual({ after: 2 });
      expect(bad!.changes).toEqual({ expiresAt: { after: 'garbage' }, budgetCents: { after: 'abc' } });
      expect(notObject!.changes).toEqual({ name: { after: 'not an object' } });
      expect(read[4]).toMatchObject({ kind: 'created', changes: { name: { after: 'ok' } } });
    });

    it('unhappy: a refused change writes no event; the log refuses updates and deletes; bad queries are refused', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const root = await ak.create({ accountId: account, budgetCents: 100 });
      const child = await ak.create({ accountId: account, parentId: root.id, budgetCents: 100 });
      const n = await eventCount(db, ak);
      await rejectsWith(() => ak.update(root.id, { budgetCents: 10 }), 'narrows_children');
      await rejectsWith(() => ak.update(child.id, { budgetCents: 1000 }), 'budget_exceeds_parent');
      await rejectsWith(() => ak.rotate(999_999), 'key_not_found');
      expect((await ak.adjust(root.id, { costCents: -5, reason: 'refund' })).success).toBe(false);
      expect(await eventCount(db, ak)).toBe(n);

      const events = tableNames(ak.tableName).events;
      await expect(db.query(`UPDATE ${events} SET kind = 'updated'`)).rejects.toThrow(/append-only/);
      await expect(db.query(`DELETE FROM ${events}`)).rejects.toThrow(/append-only/);
      expect(await eventCount(db, ak)).toBe(n);

      await rejectsWith(() => ak.keyEvents({ limit: 0 }), 'invalid_argument', 'limit 0');
      await rejectsWith(() => ak.keyEvents({ limit: 1001 }), 'invalid_argument', 'limit too big');
      await rejectsWith(() => ak.keyEvents({ keyId: 'x' }), 'invalid_argument', 'bad keyId');
      await rejectsWith(() => ak.keyEvents({ before: -1 }), 'invalid_argument', 'bad before');
      await rejectsWith(() => ak.keyEvents({ kind: 'created' } as never), 'invalid_argument', 'unknown option');
      expect(() => new (ak.constructor as typeof AgentKey)({ pool: db.pool, actor: 'root' as never })).toThrow(/actor/);
    });
  });
});
