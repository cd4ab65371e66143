import { describe, expect, it } from 'vitest';
import { forEachDatabase, uniqueName } from './helpers/databases.js';
import { runTogether, startWorker, useWorkerBundle } from './helpers/processes.js';

/**
 * Rate limits across OS processes (PostgreSQL: PGlite is one process's). Two processes
 * hammer one key, each far past the limit, 16 validations at a time. The exact mode admits
 * exactly `requests` in the window between them; the local mode admits exactly `requests`
 * in each process: N processes, at most N x requests, the bound the README states. The
 * window is a day, so the whole run falls in one (checked: every refusal names the same end).
 */

const WORKER = 'test/fixtures/rate-worker.mjs';
const bundle = useWorkerBundle('rate-limits');

interface Done {
  type: 'done';
  admitted: number;
  refused: number;
  resets: Record<string, number>;
  other: unknown[];
}

forEachDatabase((getDb) => {
  describe('rate limits across processes', () => {
    async function hammer(mode: 'exact' | 'local', limit: number, attempts: number) {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: uniqueName('acct_rlp'), rateLimit: { requests: limit, per: '1d' } });
      const config = { url: db.url, table: ak.tableName, key, mode, attempts, parallel: 16 };
      const workers = [0, 1].map(() => startWorker(WORKER, [bundle(), JSON.stringify(config)]));
      const codes = await runTogether(workers);
      expect(codes, workers.map((w) => w.stderr()).join('\n')).toEqual([0, 0]);
      const done = workers.map((w) => w.lines.find((l) => (l as Done).type === 'done') as Done);
      for (const d of done) {
        expect(d.other).toEqual([]);
        expect(d.admitted + d.refused).toBe(attempts);
      }
      const windows = new Set(done.flatMap((d) => Object.keys(d.resets)));
      // One window for the whole run (a run across UTC midnight would see two, and could admit twice as many).
      expect(windows.size).toBe(1);
      await ak.close();
      return done;
    }

    it('exact: two processes hammering one key never admit more than the limit in its window, together', async () => {
      const done = await hammer('exact', 40, 150);
      expect(done[0]!.admitted + done[1]!.admitted).toBe(40);
    }, 60_000);

    it('local: each process admits at most the limit, so two admit at most twice it (the documented bound)', async () => {
      const done = await hammer('local', 40, 150);
      for (const d of done) expect(d.admitted).toBe(40);
      expect(done[0]!.admitted + done[1]!.admitted).toBeLessThanOrEqual(2 * 40);
    }, 60_000);
  });
}, ['postgres']);
