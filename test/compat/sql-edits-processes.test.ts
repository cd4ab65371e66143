import { expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { packageTableSql } from '../helpers/package.js';
import { startWorker, useWorkerBundle, type Worker } from '../helpers/processes.js';

/**
 * An operator's SQL on the @katrinalaszlo/agentkey package's columns reaches another process at once: that process
 * (test/fixtures/watch-worker.mjs) keeps the key in a cache with a ten-minute ttl, so only
 * the change notification can make it read the key again.
 */

const bundle = useWorkerBundle('watch');

interface Seen {
  type: 'ready' | 'result';
  result: Record<string, unknown>;
  stats: { misses: number; invalidations: number };
}

forEachDatabase(
  (getDb) => {
    it("happy: SQL edits of each of the package's columns take effect in another process's ten-minute cache", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(packageTableSql(table));
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const k = await ak.create({ accountId: 'acct_watch', scopes: ['read'], budgetCents: 100, budgetPeriod: 'month', name: 'first' });
      await ak.trackUsage(k.key, { costCents: 40 });

      const worker: Worker = startWorker('test/fixtures/watch-worker.mjs', [bundle(), JSON.stringify({ url: db.url, table, key: k.key, ttlMs: 600_000 })]);
      const ready = (await worker.nextMessage()) as Seen;
      expect(ready, worker.stderr()).toMatchObject({ type: 'ready', result: { valid: true, budgetUsedCents: 40, name: 'first' } });

      const edits: [string, unknown[], Record<string, unknown>][] = [
        [`UPDATE ${table} SET budget_used_cents = 0 WHERE id = $1`, [k.id], { valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 }],
        [`UPDATE ${table} SET budget_cents = 250 WHERE id = $1`, [k.id], { valid: true, budgetCents: 250, budgetRemainingCents: 250 }],
        [`UPDATE ${table} SET budget_period = 'day' WHERE id = $1`, [k.id], { valid: true, budgetPeriod: 'day' }],
        [`UPDATE ${table} SET budget_used_cents = 40 WHERE id = $1`, [k.id], { valid: true, budgetUsedCents: 40, budgetRemainingCents: 210 }],
        // The period's end moved into the past: the next read rolls it over.
        [`UPDATE ${table} SET budget_reset_at = NOW() - INTERVAL '1 hour' WHERE id = $1`, [k.id], { valid: true, budgetUsedCents: 0, budgetRemainingCents: 250 }],
        [`UPDATE ${table} SET budget_period = NULL WHERE id = $1`, [k.id], { valid: true, budgetPeriod: null, budgetResetAt: null }],
        [`UPDATE ${table} SET scopes = '{read,write}' WHERE id = $1`, [k.id], { valid: true, scopes: ['read', 'write'] }],
        [`UPDATE ${table} SET name = 'second' WHERE id = $1`, [k.id], { valid: true, name: 'second' }],
        [`UPDATE ${table} SET budget_used_cents = 250 WHERE id = $1`, [k.id], { valid: false, reason: 'budget_exceeded' }],
        [`UPDATE ${table} SET budget_used_cents = 10 WHERE id = $1`, [k.id], { valid: true, budgetUsedCents: 10 }],
        [`UPDATE ${table} SET expires_at = NOW() - INTERVAL '1 hour' WHERE id = $1`, [k.id], { valid: false, reason: 'expired' }],
        [`UPDATE ${table} SET expires_at = NULL WHERE id = $1`, [k.id], { valid: true, expiresAt: null }],
        [`UPDATE ${table} SET revoked_at = NOW() WHERE id = $1`, [k.id], { valid: false, reason: 'revoked' }],
      ];
      let misses = ready.stats.misses;
      for (const [text, params, expected] of edits) {
        await db.query(text, params);
        const seen = (await worker.nextMessage()) as Seen;
        expect(seen.result, text).toMatchObject(expected);
        // Read again from the database because it was told, never because the ttl ran out.
        expect(seen.stats.misses, text).toBeGreaterThan(misses);
        misses = seen.stats.misses;
      }
      worker.child.send('stop');
      expect(await worker.exited, worker.stderr()).toBe(0);
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [] });
    }, 60_000);
  },
  ['postgres'],
);
