import pg from 'pg';
import { afterEach, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { type Deliverer, startDeliverer } from '../src/webhooks/index.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { sleep, until } from './helpers/wait.js';
import { type Receiver, startReceiver, writeOutbox } from './helpers/webhooks.js';

/**
 * Bugs a review of issue 17 found (budget windows and alerts, the outbox, webhooks), each
 * pinned by a test on both databases that failed before its fix.
 */

const running: { deliverers: Deliverer[]; receivers: Receiver[]; pools: pg.Pool[] } = { deliverers: [], receivers: [], pools: [] };
afterEach(async () => {
  await Promise.all(running.deliverers.splice(0).map((d) => d.stop()));
  await Promise.all(running.receivers.splice(0).map((r) => r.close()));
  await Promise.all(running.pools.splice(0).map((p) => p.end()));
});

async function thresholdDedupes(db: TestDb, table: string) {
  return db.query<{ window: string; percent: number; dedupe: string }>(
    `SELECT data->>'window' AS window, (data->>'percent')::int AS percent, dedupe FROM ${tableNames(table).outbox} WHERE type = 'budget.threshold' ORDER BY id`,
  );
}

/** Runs `step` on a connection whose session TimeZone is `tz` (another process's setting): an AgentKey on its own pool (PGlite: its one session, set back after). */
async function inTimeZone(db: TestDb, table: string, tz: string, step: (ak: AgentKey) => Promise<void>): Promise<void> {
  if (db.name === 'postgres') {
    const pool = new pg.Pool({ connectionString: db.url, max: 2, options: `-c TimeZone=${tz}` });
    running.pools.push(pool);
    const other = new AgentKey({ pool, tableName: table });
    await step(other);
    await other.close();
    return;
  }
  await db.query(`SET TimeZone = '${tz}'`);
  try {
    await step(new AgentKey({ pool: db.pool, tableName: table }));
  } finally {
    await db.query(`RESET TimeZone`);
  }
}

forEachDatabase((getDb) => {
  it('regression: a budget.threshold is written once per window, period and percent even when the crossing spend runs in another session time zone', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 100, period: 'day' }, { cents: 1000, period: 'week' }], alerts: [50] });
    expect(await ak.trackUsage(k.key, { costCents: 60 })).toMatchObject({ success: true });
    // A refund takes the day back under 50%; the same day's next spend crosses 50% again: the dedupe name must stop a second event.
    expect(await ak.adjust(k.id, { costCents: -60, reason: 'refund' })).toMatchObject({ success: true });
    expect(await ak.trackUsage(k.key, { costCents: 60 })).toMatchObject({ success: true });
    expect((await thresholdDedupes(db, ak.tableName)).length).toBe(1);
    await ak.adjust(k.id, { costCents: -60, reason: 'refund' });
    // The same crossing, from a process whose connections use another TimeZone.
    await inTimeZone(db, ak.tableName, 'Asia/Tokyo', async (other) => {
      expect(await other.trackUsage(k.key, { costCents: 60 })).toMatchObject({ success: true });
    });
    const events = await thresholdDedupes(db, ak.tableName);
    expect(events.map((e) => `${e.window} ${e.percent}`), JSON.stringify(events.map((e) => e.dedupe))).toEqual(['day 50']);
    await ak.close();
  });

  it('regression: two deliverers never send one event to one endpoint at the same time, even when a batch takes longer than the lease', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    // A slow endpoint: every answer (200) takes 2.5 s, under the 3 s timeout.
    const r = await startReceiver(async () => {
      await sleep(2_500);
      return 200;
    });
    running.receivers.push(r);
    const hook = await ak.createWebhook({ url: `${r.url}/a` });
    r.secrets.set('/a', hook.secret);
    await writeOutbox(db, ak.tableName, Array.from({ length: 16 }, (_, i) => ({ type: 'key.revoked', keyId: i + 1, data: { key_id: i + 1 } })));
    const deliveries = tableNames(ak.tableName).deliveries;
    // Deliverer A sends one at a time with a batch of 16 (about 40 s in all; its lease is 3 s + 30 s). It used to claim
    // all 16 at once and send the last ones after their lease ran out, while B sent them too; now it claims what it sends.
    const a = startDeliverer(ak, { timeoutMs: 3_000, concurrency: 1, batchSize: 16, pollMs: 20 });
    running.deliverers.push(a);
    await until(async () => (await db.query(`SELECT 1 FROM ${deliveries} WHERE lease IS NOT NULL`)).length >= 1, 'A to claim');
    expect((await db.query(`SELECT 1 FROM ${deliveries} WHERE lease IS NOT NULL`)).length).toBe(1);
    // Deliverer B (another instance on the same database) runs beside it.
    const b = startDeliverer(ak, { timeoutMs: 3_000, concurrency: 10, batchSize: 50, pollMs: 200 });
    running.deliverers.push(b);
    await until(async () => (await db.query(`SELECT 1 FROM ${deliveries} WHERE status = 'delivered'`)).length === 16, 'all delivered', {
      timeoutMs: 90_000,
      everyMs: 200,
    });
    await sleep(3_000);
    const perEvent = new Map<string, number>();
    for (const x of r.received) perEvent.set(x.id, (perEvent.get(x.id) ?? 0) + 1);
    const twice = [...perEvent].filter(([, n]) => n > 1).map(([id]) => id);
    // Every answer was a 200: nothing called for a second send, least of all one overlapping the first.
    expect({ sentTwice: twice, maxInFlight: r.maxInFlight }).toEqual({ sentTwice: [], maxInFlight: 1 });
    await ak.close();
  }, 150_000);
});
