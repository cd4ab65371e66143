import { afterEach, expect, it } from 'vitest';
import { AgentKey, type AgentKeyEvent } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { runTogether, startWorker, useWorkerBundle, type Worker } from './helpers/processes.js';
import { until } from './helpers/wait.js';
import { type Receiver, outboxOf, startReceiver, writeOutbox } from './helpers/webhooks.js';

/**
 * Webhooks across OS processes on one PostgreSQL database: two deliverers share the
 * deliveries of many events to two endpoints with no (event, endpoint) sent twice at the
 * same time and none missing, while the receiver fails some requests; and onEvent() in the
 * test's process hears the events another process writes.
 */

const WORKER = 'test/fixtures/webhook-worker.mjs';
const bundle = useWorkerBundle('webhooks-core');
const webhooksBundle = useWorkerBundle('webhooks-deliverer', 'src/webhooks/index.ts');

let receiver: Receiver | null = null;
afterEach(async () => {
  await receiver?.close();
  receiver = null;
});

forEachDatabase((getDb) => {
  it('happy: two deliverers in two processes deliver every event to every endpoint, never one (event, endpoint) twice at once, and record every attempt', async () => {
    const db = getDb();
    const table = db.freshTable();
    const ak = new AgentKey({ pool: db.pool, tableName: table });
    await ak.migrate();
    // Requests are slow at random, and one in five fails: retries cross the two processes.
    let n = 0;
    receiver = await startReceiver(async () => {
      n++;
      await new Promise((resolve) => setTimeout(resolve, n % 7));
      return n % 5 === 0 ? 500 : 200;
    });
    const r = receiver;
    const a = await ak.createWebhook({ url: `${r.url}/a` });
    const b = await ak.createWebhook({ url: `${r.url}/b` });
    r.secrets.set('/a', a.secret);
    r.secrets.set('/b', b.secret);
    const EVENTS = 80;
    const config = (worker: number) => JSON.stringify({ mode: 'deliver', url: db.url, table, worker, webhooks: webhooksBundle() });
    const workers: Worker[] = [startWorker(WORKER, [bundle(), config(1)]), startWorker(WORKER, [bundle(), config(2)])];
    expect(await Promise.all(workers.map((w) => w.nextMessage()))).toEqual(['ready', 'ready']);
    for (const w of workers) w.child.send('go');
    // Events keep coming while both work.
    const ids: number[] = [];
    for (let i = 0; i < EVENTS; i += 10) {
      ids.push(...(await writeOutbox(db, table, Array.from({ length: 10 }, () => ({ type: 'hold.expired', data: { amount_micros: '10000' } })))));
    }
    const delivered = () => new Set(r.received.filter((x) => x.answered === 200).map((x) => `${x.id} ${x.path}`));
    await until(() => delivered().size === 2 * EVENTS, 'every event at both endpoints', { timeoutMs: 60_000 });
    await until(async () => (await ak.webhookStats()).pending === 0, 'nothing pending', { timeoutMs: 30_000 });
    for (const w of workers) w.child.send('stop');
    await Promise.all(workers.map((w) => w.exited));

    expect(r.maxInFlight).toBe(1);
    expect(r.received.every((x) => x.verified)).toBe(true);
    const want = new Set(ids.flatMap((id) => [`evt_${id} /a`, `evt_${id} /b`]));
    expect(delivered()).toEqual(want);
    // Each (event, endpoint) answered 200 exactly once: none sent again after it was taken.
    expect(r.received.filter((x) => x.answered === 200)).toHaveLength(2 * EVENTS);
    // Every request is an attempt on record, and every attempt a line from one of the workers.
    const [counted] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${table}_webhook_attempts"`);
    expect(Number(counted!.n)).toBe(r.received.length);
    const lines = workers.flatMap((w) => w.lines as { type: string; worker: number; outcome?: string }[]);
    expect(lines.filter((l) => l.type === 'error')).toEqual([]);
    expect(lines.filter((l) => l.type === 'attempt')).toHaveLength(r.received.length);
    const perWorker = [1, 2].map((w) => lines.filter((l) => l.type === 'attempt' && l.worker === w).length);
    // Both took part (each claims a batch of 10 at a time out of 160+).
    expect(perWorker.every((count) => count > 0)).toBe(true);
    expect(lines.filter((l) => l.outcome === 'lost')).toEqual([]);
    const deliveries = await ak.webhookDeliveries({ limit: 1000 });
    expect(deliveries).toHaveLength(2 * EVENTS);
    expect(deliveries.every((d) => d.status === 'delivered' && d.attemptLog.length === d.attempts)).toBe(true);
  }, 120_000);

  it('happy: onEvent() hears, in order, the events another process writes', async () => {
    const db = getDb();
    const table = db.freshTable();
    const ak = new AgentKey({ pool: db.pool, tableName: table, ...(db.directUrl ? { directUrl: db.directUrl } : {}) });
    await ak.migrate();
    const heard: AgentKeyEvent[] = [];
    const stop = await ak.onEvent((e) => {
      heard.push(e);
    }, { pollMs: 60_000 });
    try {
      const writer = startWorker(WORKER, [bundle(), JSON.stringify({ mode: 'write', url: db.url, table, count: 30 })]);
      await runTogether([writer]);
      const written = (writer.lines as { type: string; id: number }[]).filter((l) => l.type === 'written').map((l) => `evt_${l.id}`);
      expect(written).toHaveLength(30);
      // pollMs is a minute: only the notification can have woken it this soon.
      await until(() => heard.length === 30, 'the 30 events', { timeoutMs: 20_000 });
      expect(heard.map((e) => e.id)).toEqual(written);
      expect(heard[0]).toMatchObject({ type: 'key.revoked', data: { keyId: 1, accountId: 'acct_w' } });
    } finally {
      await stop();
    }
    void outboxOf;
  }, 60_000);
}, ['postgres']);
