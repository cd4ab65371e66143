import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentKey, type AgentKeyEvent } from '../src/index.js';
import { type Deliverer, startDeliverer } from '../src/webhooks/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { until } from './helpers/wait.js';
import { type Receiver, freePort, oneOfEach, outboxOf, startReceiver, writeOutbox } from './helpers/webhooks.js';

/**
 * Webhooks and the outbox's other consumers through the library, on both databases:
 * deliveries verified by a local receiver with standardwebhooks, retries after failures
 * (500, timeout, connection refused) with every attempt recorded, retryFor running out,
 * filters, key.expired written once by racing sweepers, onEvent(), and bad input.
 */

const running: { deliverers: Deliverer[]; receivers: Receiver[]; stops: (() => Promise<void>)[] } = { deliverers: [], receivers: [], stops: [] };
afterEach(async () => {
  await Promise.all(running.deliverers.splice(0).map((d) => d.stop()));
  await Promise.all(running.stops.splice(0).map((s) => s()));
  await Promise.all(running.receivers.splice(0).map((r) => r.close()));
});

const fast = { pollMs: 20, minBackoffMs: 20, maxBackoffMs: 60, timeoutMs: 2_000 };

function deliver(ak: AgentKey, options: Parameters<typeof startDeliverer>[1] = {}): Deliverer {
  const d = startDeliverer(ak, { ...fast, ...options });
  running.deliverers.push(d);
  return d;
}

async function receiver(respond?: Parameters<typeof startReceiver>[0], port?: number): Promise<Receiver> {
  const r = await startReceiver(respond, port);
  running.receivers.push(r);
  return r;
}

forEachDatabase((getDb) => {
  describe('deliveries', () => {
    it('happy: each event is posted once to the endpoint, signed per Standard Webhooks, with a stable webhook-id and data in camelCase cents', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const r = await receiver();
      const hook = await ak.createWebhook({ url: `${r.url}/all`, description: 'everything' });
      expect(hook.secret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/);
      r.secrets.set('/all', hook.secret);
      const ids = await writeOutbox(db, table, oneOfEach());
      deliver(ak);
      await until(() => r.received.length >= 5, 'five deliveries');
      expect(r.received.every((x) => x.verified)).toBe(true);
      expect(r.received.map((x) => x.id).sort()).toEqual(ids.map((id) => `evt_${id}`).sort());
      const byType = Object.fromEntries(r.received.map((x) => [x.body.type, x.body]));
      expect(byType['budget.threshold']!.data).toEqual({
        keyId: 7, accountId: 'acct_1', window: 'day', percent: 80, budgetCents: 1000, spentCents: 800.03,
        periodStartAt: '2026-12-01T00:00:00.000Z', resetAt: '2026-12-02T00:00:00.000Z',
      });
      expect(byType['hold.expired']!.data).toEqual({ holdId: 'rsv_1', keyId: 7, accountId: 'acct_1', amountCents: 0.0001 });
      // Past MAX_CENTS, an exact decimal string.
      expect(byType['overage.recorded']!.data).toMatchObject({ overageCents: '9223372036854.7758' });
      expect(byType['key.expired']!.timestamp).toMatch(/^\d{4}-\d\d-\d\dT/);

      await until(async () => (await ak.webhookDeliveries({ webhookId: hook.id, status: 'delivered' })).length === 5, 'recorded');
      const deliveries = await ak.webhookDeliveries({ webhookId: hook.id });
      expect(deliveries).toHaveLength(5);
      for (const d of deliveries) {
        expect(d).toMatchObject({ webhookId: hook.id, status: 'delivered', attempts: 1, lastStatus: 200, lastError: null, nextAttemptAt: null });
        expect(d.attemptLog).toEqual([{ attempt: 1, at: expect.any(String), status: 200, error: null, durationMs: expect.any(Number) }]);
      }
      expect(await ak.webhookStats()).toEqual({ pending: 0, failing: 0, failed: 0 });
      // Nothing is sent twice.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(r.received).toHaveLength(5);
      // The outbox as the library reads it: newest first, the same shape.
      const events = await ak.outboxEvents({ limit: 2 });
      expect(events.map((e) => e.id)).toEqual([`evt_${ids[4]}`, `evt_${ids[3]}`]);
      expect((await ak.outboxEvents({ before: events[1]!.id, type: 'key.revoked' })).map((e) => e.type)).toEqual(['key.revoked']);
    });

    it('happy: an endpoint gets only its event types and its account; one created later gets only later events; a disabled one none', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const r = await receiver();
      const early = await writeOutbox(db, table, [{ type: 'key.revoked' }]);
      const types = await ak.createWebhook({ url: `${r.url}/types`, events: ['key.expired', 'hold.expired'] });
      const account = await ak.createWebhook({ url: `${r.url}/account`, accountId: 'acct_2' });
      const off = await ak.createWebhook({ url: `${r.url}/off`, enabled: false });
      for (const h of [types, account, off]) r.secrets.set(new URL(h.url).pathname, h.secret);
      await writeOutbox(db, table, [...oneOfEach('acct_1'), ...oneOfEach('acct_2')]);
      deliver(ak);
      await until(() => r.received.length >= 4 + 5, 'nine deliveries');
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(r.received.every((x) => x.verified)).toBe(true);
      const at = (path: string) => r.received.filter((x) => x.path === path);
      expect(at('/types').map((x) => x.body.type).sort()).toEqual(['hold.expired', 'hold.expired', 'key.expired', 'key.expired']);
      expect(at('/account')).toHaveLength(5);
      expect(at('/account').every((x) => x.body.data.accountId === 'acct_2')).toBe(true);
      expect(at('/off')).toHaveLength(0);
      expect(r.received.some((x) => x.id === `evt_${early[0]}`)).toBe(false);
      expect(await ak.webhookDeliveries({ webhookId: off.id })).toEqual([]);
    });

    it('error: a receiver that answers 500, then times out, then cuts the connection is retried until it takes the event; every attempt is recorded', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const plan: (number | 'hang' | 'drop')[] = [500, 'hang', 'drop', 503, 204];
      const r = await receiver((_, nth) => plan[nth] ?? 200);
      const hook = await ak.createWebhook({ url: `${r.url}/flaky` });
      r.secrets.set('/flaky', hook.secret);
      const [id] = await writeOutbox(db, table, [{ type: 'key.revoked', data: { key_id: 1, account_id: 'acct_1', revoked_at: '2026-12-01T00:00:00Z' } }]);
      deliver(ak, { timeoutMs: 300 });
      await until(async () => (await ak.webhookDeliveries({ webhookId: hook.id }))[0]?.status === 'delivered', 'delivered at last');
      const [d] = await ak.webhookDeliveries({ webhookId: hook.id });
      expect(d).toMatchObject({ eventId: `evt_${id}`, eventType: 'key.revoked', status: 'delivered', attempts: 5, lastStatus: 204, lastError: null });
      expect(d!.attemptLog.map((a) => [a.attempt, a.status, a.error])).toEqual([
        [1, 500, 'HTTP 500'],
        [2, null, 'timeout after 300 ms'],
        [3, null, expect.stringMatching(/connection|network|fetch failed|socket/i)],
        [4, 503, 'HTTP 503'],
        [5, 204, null],
      ]);
      expect(r.received).toHaveLength(5);
      expect(r.received.every((x) => x.verified && x.id === `evt_${id}`)).toBe(true);
      // The same webhook-id on every retry; the signature is made again for each.
      expect(new Set(r.received.map((x) => x.id)).size).toBe(1);
    });

    it('error: an endpoint that refuses connections is retried until a receiver listens there', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const port = await freePort();
      const hook = await ak.createWebhook({ url: `http://127.0.0.1:${port}/later` });
      await writeOutbox(db, table, [{ type: 'key.expired' }]);
      deliver(ak);
      await until(async () => ((await ak.webhookDeliveries({ webhookId: hook.id }))[0]?.attempts ?? 0) >= 2, 'two refused attempts');
      const stats = await ak.webhookStats();
      expect(stats).toMatchObject({ pending: 1, failing: 1, failed: 0 });
      const r = await receiver(() => 200, port);
      r.secrets.set('/later', hook.secret);
      await until(async () => (await ak.webhookDeliveries({ webhookId: hook.id }))[0]?.status === 'delivered', 'delivered');
      const [d] = await ak.webhookDeliveries({ webhookId: hook.id });
      const log = d!.attemptLog;
      expect(log.length).toBe(d!.attempts);
      expect(log.slice(0, -1).every((a) => a.status === null && a.error === 'connection refused')).toBe(true);
      expect(log.at(-1)).toMatchObject({ status: 200, error: null });
      expect(r.received.filter((x) => x.verified)).toHaveLength(1);
    });

    it('error: once retryFor has passed, a delivery that never succeeded is failed and tried no more', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const r = await receiver(() => 500);
      const hook = await ak.createWebhook({ url: `${r.url}/down` });
      r.secrets.set('/down', hook.secret);
      await writeOutbox(db, table, [{ type: 'hold.expired' }]);
      deliver(ak, { retryFor: '1s', minBackoffMs: 100, maxBackoffMs: 200 });
      await until(async () => (await ak.webhookDeliveries({ webhookId: hook.id }))[0]?.status === 'failed', 'failed');
      const [d] = await ak.webhookDeliveries({ webhookId: hook.id, status: 'failed' });
      expect(d).toMatchObject({ status: 'failed', lastStatus: 500, lastError: 'HTTP 500', nextAttemptAt: null, deliveredAt: null });
      expect(d!.attempts).toBeGreaterThanOrEqual(2);
      expect(d!.attemptLog).toHaveLength(d!.attempts);
      expect(await ak.webhookStats()).toEqual({ pending: 0, failing: 0, failed: 1 });
      const sent = r.received.length;
      expect(sent).toBe(d!.attempts);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(r.received.length).toBe(sent);
    });

    it('happy: stop() waits for the sends in flight and records them', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      let release: () => void = () => {};
      const gate = new Promise<void>((resolve) => (release = resolve));
      const r = await receiver(async () => {
        await gate;
        return 200;
      });
      const hook = await ak.createWebhook({ url: `${r.url}/slow` });
      r.secrets.set('/slow', hook.secret);
      await writeOutbox(db, table, [{ type: 'key.expired' }, { type: 'key.expired' }]);
      const d = startDeliverer(ak, fast);
      await until(() => r.received.length === 2, 'two sends in flight');
      let stopped = false;
      const stopping = d.stop().then(() => (stopped = true));
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(stopped).toBe(false);
      release();
      await stopping;
      expect((await ak.webhookDeliveries({ webhookId: hook.id, status: 'delivered' })).length).toBe(2);
    });
  });

  describe('key.expired', () => {
    it('happy: written once per key and expiry, even with sweepers racing on several connections; not for revoked keys', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const keys = await Promise.all(Array.from({ length: 30 }, (_, i) => ak.create({ accountId: `acct_${i % 3}`, expiresIn: '1h' })));
      const revoked = await ak.create({ accountId: 'acct_0', expiresIn: '1h' });
      await ak.revoke(revoked.id);
      await db.query(`UPDATE "${table}" SET expires_at = now() - interval '1 second'`);
      // Several AgentKeys, each on connections of its own where there are several (PostgreSQL).
      const pools = db.name === 'postgres' ? [0, 1, 2].map(() => new pg.Pool({ connectionString: db.url, max: 4 })) : [];
      try {
        const sweepers = db.name === 'postgres' ? pools.map((pool) => new AgentKey({ pool, tableName: table })) : [ak, ak, ak];
        const counts = await Promise.all(sweepers.flatMap((s) => [s.sweepExpiredKeys(7), s.sweepExpiredKeys(1000), s.sweepExpiredKeys(3)]));
        let total = counts.reduce((a, b) => a + b, 0);
        while (total < 30) {
          const more = await ak.sweepExpiredKeys(10);
          if (more === 0) break;
          total += more;
        }
        expect(total).toBe(30);
      } finally {
        await Promise.all(pools.map((p) => p.end()));
      }
      const rows = await db.query<{ key_id: number; n: number }>(
        `SELECT key_id, count(*)::int AS n FROM ${outboxOf(table)} WHERE type = 'key.expired' GROUP BY key_id`,
      );
      expect(rows.map((r) => Number(r.key_id)).sort((a, b) => a - b)).toEqual(keys.map((k) => k.id).sort((a, b) => a - b));
      expect(rows.every((r) => Number(r.n) === 1)).toBe(true);
      expect(await ak.sweepExpiredKeys()).toBe(0);
      const [event] = await ak.outboxEvents({ type: 'key.expired', limit: 1 });
      expect(Object.keys(event!.data).sort()).toEqual(['accountId', 'expiresAt', 'keyId']);
      // A new expiry of the same key is a new event.
      await db.query(`UPDATE "${table}" SET expires_at = now() - interval '2 seconds' WHERE id = $1`, [keys[0]!.id]);
      expect(await ak.sweepExpiredKeys()).toBe(1);
      expect(await ak.sweepExpiredKeys()).toBe(0);
    });

    it('happy: the deliverer sweeps expired keys and posts key.expired', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const r = await receiver();
      const hook = await ak.createWebhook({ url: `${r.url}/exp`, events: ['key.expired'] });
      r.secrets.set('/exp', hook.secret);
      const key = await ak.create({ accountId: 'acct_9', expiresIn: '1h' });
      await db.query(`UPDATE "${table}" SET expires_at = now() - interval '1 second' WHERE id = $1`, [key.id]);
      deliver(ak);
      await until(() => r.received.length === 1, 'the key.expired delivery');
      expect(r.received[0]).toMatchObject({ verified: true, body: { type: 'key.expired', data: { keyId: key.id, accountId: 'acct_9' } } });
    });
  });

  describe('onEvent', () => {
    it('happy: handlers get the events written after subscribing, in order; a throwing handler stops no one; types filter; unsubscribe stops', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      await writeOutbox(db, table, [{ type: 'key.revoked' }]);
      const all: AgentKeyEvent[] = [];
      const expired: string[] = [];
      const errors: unknown[] = [];
      const stopAll = await ak.onEvent((e) => {
        all.push(e);
      });
      running.stops.push(stopAll);
      running.stops.push(await ak.onEvent(() => {
        throw new Error('boom');
      }, { onError: (err) => errors.push(err) }));
      running.stops.push(await ak.onEvent(async (e) => {
        expired.push(e.id);
      }, { types: ['key.expired'] }));
      const ids: number[] = [];
      for (let i = 0; i < 25; i++) ids.push(...(await writeOutbox(db, table, [{ type: i % 5 === 0 ? 'key.expired' : 'overage.recorded', data: { overage_micros: String(i * 10_000) } }])));
      await until(() => all.length === 25, 'all 25 events');
      expect(all.map((e) => e.id)).toEqual(ids.map((id) => `evt_${id}`));
      expect(all[3]!.data).toEqual({ overageCents: 3 });
      await until(() => expired.length === 5 && errors.length === 25, 'the filtered ones and the errors');
      expect(expired).toEqual(ids.filter((_, i) => i % 5 === 0).map((id) => `evt_${id}`));
      await stopAll();
      await writeOutbox(db, table, [{ type: 'key.revoked' }]);
      await until(() => expired.length === 5 && errors.length === 26, 'the still-subscribed handler');
      expect(all).toHaveLength(25);
    });
  });

  describe('bad input', () => {
    it('error: createWebhook, updateWebhook, deleteWebhook, webhookDeliveries, outboxEvents, onEvent and startDeliverer refuse bad input and change nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const ok = await ak.createWebhook({ url: 'https://example.com/hook' });
      const bad: [() => unknown, string, RegExp][] = [
        [() => ak.createWebhook({ url: 'ftp://example.com' }), 'invalid_argument', /http or https/],
        [() => ak.createWebhook({ url: 'not a url' }), 'invalid_argument', /absolute/],
        [() => ak.createWebhook({ url: '' }), 'invalid_argument', /url must be/],
        [() => ak.createWebhook({ url: 'https://example.com/\u0007' }), 'invalid_argument', /control characters/],
        [() => ak.createWebhook({} as never), 'invalid_argument', /url must be/],
        [() => ak.createWebhook({ url: 'https://e.com', events: [] }), 'invalid_argument', /non-empty array/],
        [() => ak.createWebhook({ url: 'https://e.com', events: ['key.deleted'] as never }), 'invalid_argument', /events must be one of/],
        [() => ak.createWebhook({ url: 'https://e.com', enabled: 'yes' as never }), 'invalid_argument', /enabled must be/],
        [() => ak.createWebhook({ url: 'https://e.com', secret: 'x' } as never), 'invalid_argument', /unknown option "secret"/],
        [() => ak.createWebhook({ url: 'https://e.com', description: 'x'.repeat(501) }), 'invalid_argument', /description/],
        [() => ak.updateWebhook(ok.id, { url: 'javascript:alert(1)' }), 'invalid_argument', /http or https/],
        [() => ak.updateWebhook(ok.id, { events: ['nope'] as never }), 'invalid_argument', /events must be one of/],
        [() => ak.updateWebhook(999_999, { enabled: false }), 'webhook_not_found', /999999/],
        [() => ak.updateWebhook('abc', { enabled: false }), 'invalid_argument', /webhookId/],
        [() => ak.deleteWebhook(-1), 'invalid_argument', /webhookId/],
        [() => ak.webhookDeliveries({ status: 'lost' as never }), 'invalid_argument', /status must be/],
        [() => ak.webhookDeliveries({ webhookId: 999_999 }), 'webhook_not_found', /999999/],
        [() => ak.webhookDeliveries({ limit: 0 }), 'invalid_argument', /limit/],
        [() => ak.outboxEvents({ type: 'x' as never }), 'invalid_argument', /type must be one of/],
        [() => ak.outboxEvents({ before: 'evt_x' }), 'invalid_argument', /before/],
        [() => ak.onEvent('no' as never), 'invalid_argument', /handler function/],
        [() => ak.onEvent(() => {}, { types: ['x'] as never }), 'invalid_argument', /types must be one of/],
        [() => ak.onEvent(() => {}, { pollMs: 1 }), 'invalid_argument', /pollMs/],
        [() => ak.sweepExpiredKeys(0), 'invalid_argument', /limit/],
        [() => startDeliverer(ak, { retryFor: 'forever' }), 'invalid_duration', /retryFor/],
        [() => startDeliverer(ak, { timeoutMs: 0 }), 'invalid_argument', /timeoutMs/],
        [() => startDeliverer(ak, { batchSize: 1.5 }), 'invalid_argument', /batchSize/],
        [() => startDeliverer(ak, { colour: 'red' } as never), 'invalid_argument', /Unknown deliverer option/],
      ];
      for (const [call, code, message] of bad) {
        const err = await rejectsWith(async () => call(), code, `${code} ${message}`);
        expect(err.message).toMatch(message);
      }
      expect(await ak.listWebhooks()).toEqual([{ ...ok, secret: undefined }].map(({ secret: _, ...w }) => w));
      expect(await ak.deleteWebhook(999_999)).toBe(false);
      const rotated = await ak.updateWebhook(ok.id, { rotateSecret: true, description: 'new' });
      expect(rotated.secret).toMatch(/^whsec_/);
      expect(rotated.secret).not.toBe(ok.secret);
      expect(await ak.deleteWebhook(ok.id)).toBe(true);
      expect(await ak.getWebhook(ok.id)).toBeNull();
    });
  });
});



