import { randomBytes } from 'node:crypto';
import { expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { ALL_VERSIONS, appliedVersions } from '../helpers/catalog.js';
import { forEachDatabase } from '../helpers/databases.js';
import { sha256Hex } from '../helpers/package.js';
import { startWorker, useWorkerBundle } from '../helpers/processes.js';

/**
 * Several OS processes run migrate() at once on one PostgreSQL. Each worker imports the
 * package built from the current src/ (into node_modules/.cache, so it never tests a stale
 * dist/), connects, says 'ready', and migrates when all are told 'go' together.
 */

const WORKER = 'test/fixtures/migrate-worker.mjs';
const bundle = useWorkerBundle('migrate');

interface Report {
  ran?: number[];
  error?: { name?: string; code?: string; message?: string };
}

/** Starts one worker per table, waits until all are connected, then lets them all migrate at once. */
async function migrateInProcesses(url: string, tables: string[], alongside?: () => Promise<unknown>): Promise<{ reports: Report[]; alongside: unknown }> {
  const workers = tables.map((table) => startWorker(WORKER, [bundle(), JSON.stringify({ url, table })]));
  expect(await Promise.all(workers.map((w) => w.nextMessage()))).toEqual(workers.map(() => 'ready'));
  const done = workers.map((w) => w.nextMessage() as Promise<Report>);
  for (const w of workers) w.child.send('go');
  const [reports, other] = await Promise.all([Promise.all(done), alongside?.()]);
  expect(await Promise.all(workers.map((w) => w.exited))).toEqual(workers.map(() => 0));
  return { reports, alongside: other };
}

forEachDatabase(
  (getDb) => {
    it('several processes migrating one fresh table at once: all succeed, exactly one applies each version', async () => {
      const db = getDb();
      const table = db.freshTable();
      const { reports, alongside } = await migrateInProcesses(
        db.url!,
        Array.from({ length: 5 }, () => table),
        () => new AgentKey({ pool: db.pool, tableName: table }).migrate(),
      );
      const results = [...reports.map((r) => r.ran ?? r.error), alongside];
      expect(reports.filter((r) => r.error)).toEqual([]);
      expect(results.filter((r) => Array.isArray(r) && r.length > 0)).toEqual([ALL_VERSIONS]);
      expect(results.filter((r) => Array.isArray(r) && r.length === 0)).toHaveLength(results.length - 1);
      expect(await appliedVersions(db, table)).toEqual(ALL_VERSIONS);

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual([]);
      const key = await ak.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'month' });
      expect(await ak.trackUsage(key.key, { costCents: 10 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
    }, 120_000);

    it("several processes migrating a legacy table of the package's shape at once keep every key and its spend", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(`CREATE TABLE ${table} (id SERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL,
        key_prefix TEXT, name TEXT, created_at TIMESTAMPTZ DEFAULT now(), last_used_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ)`);
      await db.query(`ALTER TABLE ${table}
        ADD COLUMN IF NOT EXISTS user_id TEXT, ADD COLUMN IF NOT EXISTS scopes TEXT[],
        ADD COLUMN IF NOT EXISTS budget_cents INTEGER, ADD COLUMN IF NOT EXISTS budget_used_cents INTEGER DEFAULT 0,
        ADD COLUMN IF NOT EXISTS budget_period TEXT, ADD COLUMN IF NOT EXISTS budget_reset_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ, ADD COLUMN IF NOT EXISTS delegated_by TEXT`);
      const keys = Array.from({ length: 3 }, () => 'ak_' + randomBytes(24).toString('hex'));
      const ids: number[] = [];
      for (const raw of keys) {
        const [row] = await db.query<{ id: number }>(
          `INSERT INTO ${table} (account_id, key_hash, budget_cents, budget_used_cents, budget_period, budget_reset_at)
           VALUES ('acct_1', $1, 5000, 1200, 'month', now() + interval '5 days') RETURNING id`,
          [sha256Hex(raw)],
        );
        ids.push(Number(row!.id));
      }

      const { reports } = await migrateInProcesses(db.url!, Array.from({ length: 4 }, () => table));
      expect(reports.filter((r) => r.error)).toEqual([]);
      expect(reports.filter((r) => r.ran!.length > 0).map((r) => r.ran)).toEqual([ALL_VERSIONS]);
      expect(await appliedVersions(db, table)).toEqual(ALL_VERSIONS);

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      for (const [i, raw] of keys.entries()) {
        expect(await ak.validate(raw)).toMatchObject({ valid: true, keyId: ids[i], budgetCents: 5000, budgetUsedCents: 1200, budgetRemainingCents: 3800 });
      }
      expect(await ak.trackUsage(keys[0]!, { costCents: 3800.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    }, 120_000);

    it('processes migrating different tables at once each apply their own versions', async () => {
      const db = getDb();
      const [a, b, c] = [db.freshTable(), db.freshTable(), db.freshTable()];
      const { reports } = await migrateInProcesses(db.url!, [a, b, c, a, b, c]);
      expect(reports.filter((r) => r.error)).toEqual([]);
      for (const [i, table] of [a, b, c].entries()) {
        const ran = [reports[i]!.ran, reports[i + 3]!.ran];
        expect(ran.filter((r) => r!.length > 0), table).toEqual([ALL_VERSIONS]);
        expect(await appliedVersions(db, table)).toEqual(ALL_VERSIONS);
      }
    }, 120_000);
  },
  ['postgres'],
);
