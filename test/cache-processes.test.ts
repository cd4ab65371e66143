import { expect, it } from 'vitest';
import type { CacheStats } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb } from './helpers/databases.js';
import { startWorker, useWorkerBundle, type Worker } from './helpers/processes.js';

/**
 * A change in one process reaches the validation cache of another through
 * PostgreSQL LISTEN/NOTIFY. Each worker (test/fixtures/cache-worker.mjs) runs the package
 * bundled from the current src/ with a ten-minute cache ttl, so only a notification can
 * make it read the key again. How long the news took is printed, never asserted.
 */

const WORKER = 'test/fixtures/cache-worker.mjs';
const bundle = useWorkerBundle('cache');

interface Ready {
  type: 'ready';
  stats: CacheStats;
}

interface Seen {
  type: 'seen';
  result: { valid: false; reason: string };
  stats: CacheStats;
  readyStats: CacheStats;
  validations: number;
  msAfterTold: number | null;
}

function startCacheWorker(db: TestDb, table: string, key: string): Worker {
  return startWorker(WORKER, [bundle(), JSON.stringify({ url: db.url, directUrl: db.directUrl, table, key, ttlMs: 600_000 })]);
}

/** Waits until the worker serves the key from its cache, with notifications flowing. */
async function ready(worker: Worker): Promise<Ready> {
  const message = (await worker.nextMessage()) as Ready | Seen;
  expect(message, worker.stderr()).toMatchObject({ type: 'ready', stats: { listening: true } });
  expect((message as Ready).stats.hits).toBeGreaterThan(0);
  return message as Ready;
}

/** The worker's report that a validation said revoked: it re-read the key once, because it was told. */
async function seenRevoked(worker: Worker, what: string): Promise<Seen> {
  const seen = (await worker.nextMessage()) as Seen;
  expect(seen, worker.stderr()).toMatchObject({ type: 'seen', result: { valid: false, reason: 'revoked' } });
  // With a ten-minute ttl the only way to read the key again is a notification: one
  // invalidation at least, and exactly one more read of the key after it.
  expect(seen.stats.invalidations).toBeGreaterThan(seen.readyStats.invalidations);
  expect(seen.stats.misses).toBe(seen.readyStats.misses + 1);
  expect(seen.stats.hits).toBeGreaterThanOrEqual(seen.readyStats.hits);
  expect(await worker.exited, worker.stderr()).toBe(0);
  console.info(`${what}: the other process saw it ${seen.msAfterTold} ms after it was told (for information)`);
  return seen;
}

forEachDatabase(
  (getDb) => {
    it('security: a key revoked in this process is seen as revoked by the cache of another process', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = `acct_procs_${process.pid}`;
      const k = await ak.create({ accountId: account, budgetCents: 10 });
      const bystander = await ak.create({ accountId: account });

      const worker = startCacheWorker(db, ak.tableName, k.key);
      await ready(worker);
      // This process validates too, so its own cache listens; the revoke comes from a different AgentKey.
      expect(await ak.validate(k.key)).toMatchObject({ valid: true });

      expect(await ak.revoke(k.id)).toBe(true);
      worker.child.send({ type: 'revoked', at: Date.now() });
      await seenRevoked(worker, 'revoke');
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(bystander.key)).toMatchObject({ valid: true });
    }, 20_000);

    it('security: a parent revoked in this process is seen as revoking the child cached by another process', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = `acct_procs_tree_${process.pid}`;
      const parent = await ak.create({ accountId: account, budgetCents: 100 });
      const child = await ak.create({ accountId: account, budgetCents: 50, parentId: parent.id });
      const grandchild = await ak.create({ accountId: account, parentId: child.id });

      const workers = [startCacheWorker(db, ak.tableName, child.key), startCacheWorker(db, ak.tableName, grandchild.key)];
      for (const w of workers) await ready(w);

      expect(await ak.revoke(parent.id)).toBe(true);
      for (const w of workers) w.child.send({ type: 'revoked', at: Date.now() });
      await seenRevoked(workers[0]!, 'parent revoke, child');
      await seenRevoked(workers[1]!, 'parent revoke, grandchild');
    }, 20_000);

    it('security: a revoke written with plain SQL, not through agentkey, reaches the cache of another process', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const k = await ak.create({ accountId: `acct_procs_sql_${process.pid}` });

      const worker = startCacheWorker(db, ak.tableName, k.key);
      await ready(worker);
      await db.query(`UPDATE ${t.table} SET revoked_at = now() WHERE id = $1`, [k.id]);
      worker.child.send({ type: 'revoked', at: Date.now() });
      await seenRevoked(worker, 'plain SQL revoke');
    }, 20_000);
  },
  ['postgres'],
);

forEachDatabase((getDb) => {
  it('happy: AgentKeys dropped without close() leave the hub, and the last one ends the listening connection', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const { key } = await ak.create({ accountId: 'acct_1' });
    const worker = startWorker('test/fixtures/dropped-worker.mjs', [bundle(), JSON.stringify({ url: db.url, directUrl: db.directUrl, table: ak.tableName, key, count: 40 })]);
    expect(await worker.exited, worker.stderr()).toBe(0);
    // 40 AgentKeys, each listening in turn, shared one connection; once they were collected it ended.
    expect(worker.lines).toEqual([{ used: 40, whileUsed: 1, after: 0 }]);
  }, 60_000);
}, ['postgres']);
