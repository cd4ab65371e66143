/**
 * The statements that lock keys name the key's account (issue 19, P3: one shard on Citus):
 * touch(), revoke(), update(), rotate() and a child's share lock on its parent read the
 * account first, unlocked, then lock with it. Behaviour stays as it was: a key gone between
 * the read and the lock is a missing key, a key of another account is not found, other keys
 * of the account are never waited for, a key without an account (the package's column allows
 * NULL) still works, and stamps of many accounts' keys go out in one flush.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { toDb } from '../src/store/db.js';
import { tableNames } from '../src/store/identifiers.js';
import { KeyStore } from '../src/store/keys.js';
import { type TestDb, forEachDatabase, uniqueName } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { holdRowLock } from './helpers/locks.js';
import { packageKey, packageTableSql } from './helpers/package.js';
import { until } from './helpers/wait.js';

const TIMEOUT_MS = 1_000;
const newAccount = () => uniqueName('acct_locks');

const lastUsed = async (db: TestDb, ak: AgentKey, id: number) =>
  (await db.query<{ at: Date | null }>(`SELECT last_used_at AS at FROM ${tableNames(ak.tableName).table} WHERE id = $1`, [id]))[0]?.at ?? null;

forEachDatabase((getDb) => {
  describe('locking keys by their account', () => {
    it('happy: one flush stamps the keys of several accounts', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const keys = [];
      for (const account of [newAccount(), newAccount(), newAccount()]) {
        keys.push(await ak.create({ accountId: account }), await ak.create({ accountId: account }));
      }
      for (const k of keys) expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      await ak.flush();
      for (const k of keys) expect(await lastUsed(db, ak, k.id), `key ${k.id}`).not.toBeNull();
      await ak.close();
    });

    it('error: another account\'s key is not found by revoke, update or rotate, and stays as it was', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account, name: 'mine' });
      const child = await ak.create({ accountId: account, parentId: k.id });
      expect(await ak.revoke(k.id, newAccount())).toBe(false);
      await rejectsWith(() => ak.update(k.id, { name: 'theirs' }, { accountId: newAccount() }), 'key_not_found');
      await rejectsWith(() => ak.rotate(k.id, { accountId: newAccount() }), 'key_not_found');
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, name: 'mine' });
      expect(await ak.validate(child.key)).toMatchObject({ valid: true });
      // With its own account each works, the subtree included.
      expect(await ak.update(k.id, { name: 'renamed' }, { accountId: account })).toMatchObject({ name: 'renamed' });
      const rotated = await ak.rotate(k.id, { accountId: account });
      expect(await ak.validate(rotated.key)).toMatchObject({ valid: true, keyId: k.id });
      expect(await ak.revoke(k.id, account)).toBe(true);
      expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
      await ak.close();
    });

    it('happy: a key without an account (a NULL account_id in the package\'s table) is stamped, updated, rotated and revoked', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(packageTableSql(table));
      const legacy = packageKey(48);
      const [row] = await db.query<{ id: number }>(
        `INSERT INTO ${table} (account_id, key_hash, key_prefix) VALUES (NULL, $1, $2) RETURNING id`,
        [legacy.hash, legacy.prefix],
      );
      const id = Number(row!.id);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      expect(await ak.validate(legacy.raw)).toMatchObject({ valid: true, keyId: id });
      await ak.flush();
      expect(await lastUsed(db, ak, id)).not.toBeNull();
      expect(await ak.update(id, { name: 'legacy' })).toMatchObject({ name: 'legacy' });
      const rotated = await ak.rotate(id);
      expect(await ak.validate(rotated.key)).toMatchObject({ valid: true, keyId: id });
      expect(await ak.revoke(id)).toBe(true);
      expect(await ak.validate(rotated.key)).toEqual({ valid: false, reason: 'revoked' });
      await ak.close();
    });
  });
});

forEachDatabase(
  (getDb) => {
    /** A transaction on another connection that did `sql` to one key row and holds it until commit() or rollback(). */
    async function holdWrite(db: TestDb, sql: string, params: unknown[]) {
      const client = new pg.Client({ connectionString: db.url! });
      await client.connect();
      await client.query('BEGIN');
      const pid = Number((await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid);
      expect((await client.query(sql, params)).rowCount).toBe(1);
      const end = async (how: 'COMMIT' | 'ROLLBACK') => {
        await client.query(how);
        await client.end();
      };
      return {
        /** Resolves once some other backend waits for this transaction. */
        waitedFor: () =>
          until(async () => (await db.query(`SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, [pid])).length > 0, 'a call waiting on the held row'),
        commit: () => end('COMMIT'),
        rollback: () => end('ROLLBACK'),
      };
    }

    describe('locking keys by their account, with other connections', () => {
      it('concurrency: a key deleted between the read of its account and its lock is a missing key to revoke, update, rotate and create-child', async () => {
        const db = getDb();
        const ak = await db.agentKey({ timeoutMs: 5_000 });
        const t = tableNames(ak.tableName);
        const account = newAccount();
        const calls: [string, (id: number) => Promise<unknown>][] = [
          ['revoke', async (id) => expect(await ak.revoke(id)).toBe(false)],
          ['update', (id) => rejectsWith(() => ak.update(id, { name: 'x' }), 'key_not_found')],
          ['rotate', (id) => rejectsWith(() => ak.rotate(id), 'key_not_found')],
          ['create child', (id) => rejectsWith(() => ak.create({ accountId: account, parentId: id }), 'parent_not_found')],
        ];
        for (const [label, call] of calls) {
          const k = await ak.create({ accountId: account });
          const deleting = await holdWrite(db, `DELETE FROM ${t.table} WHERE id = $1`, [k.id]);
          const answer = call(k.id);
          await deleting.waitedFor();
          await deleting.commit();
          await answer.catch((err: unknown) => {
            throw new Error(`${label}: ${String(err)}`);
          });
        }
        await ak.close();
      });

      it('concurrency: a child created while its parent is being revoked waits for the revoke, and is refused when it commits', async () => {
        const db = getDb();
        const ak = await db.agentKey({ timeoutMs: 5_000 });
        const t = tableNames(ak.tableName);
        const account = newAccount();
        const parent = await ak.create({ accountId: account, budgetCents: 100 });

        const undone = await holdWrite(db, `UPDATE ${t.table} SET revoked_at = now() WHERE id = $1`, [parent.id]);
        const kept = ak.create({ accountId: account, parentId: parent.id });
        await undone.waitedFor();
        await undone.rollback();
        expect(await ak.validate((await kept).key)).toMatchObject({ valid: true });

        const revoking = await holdWrite(db, `UPDATE ${t.table} SET revoked_at = now() WHERE id = $1`, [parent.id]);
        const refused = rejectsWith(() => ak.create({ accountId: account, parentId: parent.id }), 'parent_inactive');
        await revoking.waitedFor();
        await revoking.commit();
        await refused;
        await ak.close();
      });

      it('concurrency: revoke, update and rotate of a key never wait on the other keys of its account', async () => {
        const db = getDb();
        const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
        const t = tableNames(ak.tableName);
        const account = newAccount();
        const busy = await ak.create({ accountId: account });
        const root = await ak.create({ accountId: account, budgetCents: 100 });
        const child = await ak.create({ accountId: account, parentId: root.id, budgetCents: 50 });
        const lock = await holdRowLock(db.url!, t.table, 'id = $1', [busy.id]);
        try {
          expect(await ak.update(root.id, { budgetCents: 80 })).toMatchObject({ budgetCents: 80 });
          expect(await ak.update(child.id, { name: 'child' })).toMatchObject({ name: 'child' });
          const rotated = await ak.rotate(child.id);
          expect(await ak.validate(rotated.key)).toMatchObject({ valid: true });
          expect(await ak.revoke(root.id)).toBe(true);
          expect(await ak.validate(rotated.key)).toEqual({ valid: false, reason: 'revoked' });
        } finally {
          await lock.release();
        }
        expect(await ak.validate(busy.key)).toMatchObject({ valid: true });
        await ak.close();
      });

      it('concurrency: a flush over several accounts skips only the key another connection holds, and stamps it later', async () => {
        const db = getDb();
        const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
        const t = tableNames(ak.tableName);
        const [a, b] = [newAccount(), newAccount()];
        const keys = [await ak.create({ accountId: a }), await ak.create({ accountId: b }), await ak.create({ accountId: b }), await ak.create({ accountId: a })];
        const held = keys[2]!;
        const lock = await holdRowLock(db.url!, t.table, 'id = $1', [held.id]);
        try {
          for (const k of keys) expect(await ak.validate(k.key)).toMatchObject({ valid: true });
          await ak.flush();
          for (const k of keys) expect(await lastUsed(db, ak, k.id) !== null, `key ${k.id}`).toBe(k !== held);
        } finally {
          await lock.release();
        }
        await ak.flush();
        expect(await lastUsed(db, ak, held.id)).not.toBeNull();
        await ak.close();
      });

      it('concurrency: one account at a time (as on a database sharded by account), a touch stamps every account\'s keys but the one another connection holds', async () => {
        const db = getDb();
        const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
        const t = tableNames(ak.tableName);
        const store = new KeyStore(toDb(db.pool), t, true);
        const [a, b, c] = [newAccount(), newAccount(), newAccount()];
        const keys = [await ak.create({ accountId: a }), await ak.create({ accountId: b }), await ak.create({ accountId: c }), await ak.create({ accountId: b })];
        const held = keys[3]!;
        const at = new Date('2026-01-02T03:04:05Z');
        const lock = await holdRowLock(db.url!, t.table, 'id = $1', [held.id]);
        try {
          expect(await store.touch(keys.map((k) => k.id), keys.map(() => at))).toEqual([held.id]);
        } finally {
          await lock.release();
        }
        for (const k of keys) expect(await lastUsed(db, ak, k.id), `key ${k.id}`).toEqual(k === held ? null : at);
        expect(await store.touch([held.id], [at])).toEqual([]);
        expect(await lastUsed(db, ak, held.id)).toEqual(at);
        await ak.close();
      });
    });
  },
  ['postgres'],
);
