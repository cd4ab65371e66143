import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentKeyError } from '../src/errors.js';
import { tableNames } from '../src/store/identifiers.js';
import { startDeliverer } from '../src/webhooks/deliverer.js';
import { stopCliProcesses } from './helpers/cli.js';
import { type TestDb, forEachDatabase, uniqueName } from './helpers/databases.js';
import { type Instance, call, metricSum, roundRobin, startInstance, stopInstances, within } from './helpers/instances.js';
import { useCliBundle } from './helpers/processes.js';
import { sleep, until } from './helpers/wait.js';
import { type Receiver, startReceiver } from './helpers/webhooks.js';

/**
 * Issue 19: N `agentkey serve` processes on one PostgreSQL database behave as one. Two and
 * three real service processes (bundled from the current src/) on one database and keys
 * table: a revocation or an update made on one is refused or seen by the others (which had
 * the key cached) within a deadline; a charge retried on another instance with its
 * Idempotency-Key replays, and one sent to all at once is spent once; concurrent charges
 * across instances never pass a budget; expired holds and expired keys are swept, and their
 * events written and delivered, once, however many instances sweep and deliver; the admin
 * key the first instance created is the others' too.
 */

const cli = useCliBundle('server-instances');
afterAll(stopCliProcesses);

/** How long a change on one instance may take to reach another's cache (NOTIFY; the cache's TTL is 5 s). */
const PROPAGATION_MS = 2_000;
/** The service's key cache TTL (the AgentKey's default): how stale another instance's figures of spend may be. */
const CACHE_TTL_MS = 5_000;
/** After the expected count is reached, how long the test keeps looking for a second sweep or send (two deliverer polls). */
const QUIET_MS = 2_500;

const ADMIN_KEY_PATTERN = /akadmin_[A-Za-z0-9_-]{20,}/g;

let receiver: Receiver | null = null;
afterEach(async () => {
  await receiver?.close();
  receiver = null;
});

interface Cluster {
  instances: Instance[];
  adminKey: string;
  table: string;
}

/**
 * Starts `n` instances on a fresh keys table for the describe block (beforeAll) and stops
 * them in afterAll. With `adminKey: 'created'`, the first starts without AGENTKEY_ADMIN_KEY
 * (and creates one), the others after it, also without.
 */
function useCluster(getDb: () => TestDb, n: number, adminKey: 'env' | 'created'): () => Cluster {
  let cluster: Cluster | undefined;
  let started: Instance[] = [];
  beforeAll(async () => {
    const db = getDb();
    const table = db.freshTable();
    const names = ['A', 'B', 'C', 'D'].slice(0, n);
    const databaseUrl = db.url as string;
    if (adminKey === 'env') {
      const key = `akadmin_shared_${process.pid}_${'x'.repeat(20)}`;
      started = await Promise.all(names.map((name) => startInstance(cli(), name, { databaseUrl, directUrl: db.directUrl, table, adminKey: key })));
      cluster = { instances: started, adminKey: key, table };
    } else {
      const first = await startInstance(cli(), names[0] as string, { databaseUrl, directUrl: db.directUrl, table });
      started = [first];
      const rest = await Promise.all(names.slice(1).map((name) => startInstance(cli(), name, { databaseUrl, directUrl: db.directUrl, table })));
      started.push(...rest);
      const created = first.proc.stderr().match(ADMIN_KEY_PATTERN) ?? [];
      cluster = { instances: started, adminKey: created[0] ?? '', table };
    }
  }, 120_000);
  afterAll(async () => {
    const codes = await stopInstances(started);
    // A clean stop (SIGTERM: drain, flush, close) from every instance.
    expect(codes).toEqual(started.map(() => 0));
  }, 30_000);
  return () => {
    if (!cluster) throw new Error('the instances did not start');
    return cluster;
  };
}

/** Creates a key through `on` (admin route); returns its raw key and id. */
async function createKey(c: Cluster, on: Instance, body: Record<string, unknown>): Promise<{ key: string; id: number }> {
  const made = await call(on, 'POST', '/v1/keys', body, c.adminKey);
  expect(made.status, JSON.stringify(made.body)).toBe(201);
  return { key: made.body.key as string, id: made.body.id as number };
}

async function registerWebhook(c: Cluster, on: Instance, r: Receiver, path: string, body: Record<string, unknown>): Promise<number> {
  const made = await call(on, 'POST', '/v1/webhooks', { url: `${r.url}${path}`, ...body }, c.adminKey);
  expect(made.status, JSON.stringify(made.body)).toBe(201);
  r.secrets.set(path, made.body.secret as string);
  return made.body.id as number;
}

/** The webhook-ids the receiver answered 200 at `path`, each with how many times. */
function deliveredCounts(r: Receiver, path: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const x of r.received) if (x.path === path && x.answered === 200) counts.set(x.id, (counts.get(x.id) ?? 0) + 1);
  return counts;
}

/** A counter of each instance's /metrics, summed over its labels. */
async function metricOf(instances: Instance[], name: string): Promise<number[]> {
  return Promise.all(instances.map(async (i) => metricSum((await call(i, 'GET', '/metrics')).body as string, name)));
}

const webhookAttempts = (c: Cluster) => metricOf(c.instances, 'agentkey_webhook_attempts_total');

/**
 * Verifies `key` on `i` until an answer comes from its cache (its cache-hit counter moves):
 * an instance serves from its cache once it listens for key changes, which it starts on its
 * first validation. Resolves with that cached answer.
 */
async function cached(i: Instance, key: string, scope?: string): Promise<any> {
  const verify = async () => (await call(i, 'POST', '/v1/verify', { key, ...(scope ? { scope } : {}) })).body;
  const first = await verify();
  expect(first, i.name).toMatchObject({ valid: true });
  const { value } = await within(10_000, `instance ${i.name} answering from its cache`, async () => {
    const [before] = await metricOf([i], 'agentkey_cache_hits_total');
    const body = await verify();
    const [after] = await metricOf([i], 'agentkey_cache_hits_total');
    return { hit: (after as number) > (before as number), body };
  }, (v) => v.hit);
  return value.body;
}

forEachDatabase(
  (getDb) => {
    const shared = (n: number, getCluster: () => Cluster) => {
      it(`security: a key revoked on one of ${n} instances is refused by /v1/verify and /v1/charge on every other, which had it cached, within ${PROPAGATION_MS} ms`, async () => {
        const c = getCluster();
        const [a] = c.instances as [Instance];
        const accountId = uniqueName('acct_revoke');
        const k = await createKey(c, a, { accountId, budgetCents: 1_000, scopes: ['chat'] });
        for (const i of c.instances) await cached(i, k.key, 'chat');
        const others = c.instances.slice(1);
        const invalidations = await metricOf(others, 'agentkey_cache_invalidations_total');
        expect(await call(a, 'POST', `/v1/keys/${k.id}/revoke`, undefined, c.adminKey)).toMatchObject({ status: 200, body: { id: k.id, revoked: true } });
        for (const i of others) {
          await within(PROPAGATION_MS, `instance ${i.name} refusing the revoked key`, async () => (await call(i, 'POST', '/v1/verify', { key: k.key, scope: 'chat' })).body, (b) => b.valid === false);
          expect((await call(i, 'POST', '/v1/verify', { key: k.key })).body).toMatchObject({ valid: false, reason: 'revoked' });
        }
        // Dropped from the others' caches by the announcement, not by age.
        const dropped = (await metricOf(others, 'agentkey_cache_invalidations_total')).map((x, j) => x - (invalidations[j] as number));
        expect(dropped.every((x) => x >= 1), JSON.stringify(dropped)).toBe(true);
        for (const i of c.instances) {
          expect(await call(i, 'POST', '/v1/charge', { key: k.key, costCents: 1 }), i.name).toMatchObject({ status: 401, body: { error: { code: 'key_revoked' } } });
        }
        const [ledger] = await getDb().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${tableNames(c.table).ledger} WHERE key_id = $1`, [k.id]);
        expect(ledger!.n).toBe(0);
      });

      it(`happy: a budget and scope change made on one of ${n} instances is what every other instance's /v1/verify and /v1/charge go by, within ${PROPAGATION_MS} ms`, async () => {
        const c = getCluster();
        const accountId = uniqueName('acct_update');
        const k = await createKey(c, c.instances[0] as Instance, { accountId, budgetCents: 1_000, scopes: ['chat', 'embed'] });
        for (const i of c.instances) {
          expect(await cached(i, k.key, 'embed'), i.name).toMatchObject({ valid: true, budgetCents: 1_000 });
        }
        const invalidations = await metricOf(c.instances.slice(0, -1), 'agentkey_cache_invalidations_total');
        // Changed through the last instance; every instance (the others from their caches) follows.
        const last = c.instances.at(-1) as Instance;
        expect(await call(last, 'PATCH', `/v1/keys/${k.id}`, { budgetCents: 50, scopes: ['chat'] }, c.adminKey)).toMatchObject({
          status: 200,
          body: { budgetCents: 50, scopes: ['chat'] },
        });
        for (const i of c.instances) {
          await within(PROPAGATION_MS, `instance ${i.name} seeing the new budget and scopes`, async () => (await call(i, 'POST', '/v1/verify', { key: k.key, scope: 'chat' })).body, (b) => b.budgetCents === 50);
          expect((await call(i, 'POST', '/v1/verify', { key: k.key, scope: 'embed' })).body, i.name).toMatchObject({ valid: false, reason: 'insufficient_scope' });
        }
        // The others dropped it on the announcement (the last made the change itself).
        const dropped = (await metricOf(c.instances.slice(0, -1), 'agentkey_cache_invalidations_total')).map((x, j) => x - (invalidations[j] as number));
        expect(dropped.every((x) => x >= 1), JSON.stringify(dropped)).toBe(true);
        const first = c.instances[0] as Instance;
        expect(await call(first, 'POST', '/v1/charge', { key: k.key, costCents: 51 })).toMatchObject({ status: 429, body: { error: { code: 'budget_exceeded' } } });
        expect(await call(first, 'POST', '/v1/charge', { key: k.key, costCents: 50 })).toMatchObject({ status: 200, body: { success: true, budgetUsedCents: 50, budgetRemainingCents: 0 } });
        // A spend is not announced (only changes are): the others refuse at once, since every
        // charge is checked in the database, and their /v1/verify shows it once its cache entry ends.
        for (const i of c.instances) {
          expect(await call(i, 'POST', '/v1/charge', { key: k.key, costCents: 1 }), i.name).toMatchObject({ status: 429, body: { error: { code: 'budget_exceeded' } } });
        }
        for (const i of c.instances) {
          await within(CACHE_TTL_MS + 1_000, `instance ${i.name} seeing the spend`, async () => (await call(i, 'POST', '/v1/verify', { key: k.key })).body, (b) => b.valid === false);
          expect((await call(i, 'POST', '/v1/verify', { key: k.key })).body).toMatchObject({ valid: false, reason: 'budget_exceeded' });
        }
      });

      it(`happy: a charge retried on each of ${n} instances with its idempotencyKey replays the first (one ledger row), and another cost is a 409; a hold too`, async () => {
        const c = getCluster();
        const db = getDb();
        const t = tableNames(c.table);
        const accountId = uniqueName('acct_idem');
        const k = await createKey(c, c.instances[0] as Instance, { accountId, budgetCents: 1_000 });
        const first = await call(c.instances[0] as Instance, 'POST', '/v1/charge', { key: k.key, costCents: 125, idempotencyKey: 'call-1' });
        expect(first).toMatchObject({ status: 200, body: { success: true, budgetUsedCents: 125, budgetRemainingCents: 875 } });
        expect(first.body.replayed).toBeUndefined();
        for (const i of [...c.instances.slice(1), c.instances[0] as Instance]) {
          const retry = await call(i, 'POST', '/v1/charge', { key: k.key, costCents: 125, idempotencyKey: 'call-1' });
          expect(retry, i.name).toEqual({ status: 200, body: { ...first.body, replayed: true }, headers: expect.anything() });
        }
        expect(await call(c.instances.at(-1) as Instance, 'POST', '/v1/charge', { key: k.key, costCents: 126, idempotencyKey: 'call-1' })).toMatchObject({
          status: 409,
          body: { error: { code: 'idempotency_conflict' } },
        });
        const rows = await db.query<{ kind: string; amount_micros: string }>(`SELECT kind, amount_micros::text FROM ${t.ledger} WHERE key_id = $1 AND idempotency_key = 'call-1'`, [k.id]);
        expect(rows).toEqual([{ kind: 'charge', amount_micros: '1250000' }]);

        // A hold retried on another instance is the same hold.
        const held = await call(c.instances[0] as Instance, 'POST', '/v1/reservations', { key: k.key, costCents: 100, ttl: '10m', idempotencyKey: 'hold-1' });
        expect(held).toMatchObject({ status: 201, body: { success: true, reservationId: expect.stringMatching(/^rsv_/), budgetRemainingCents: 775 } });
        for (const i of c.instances.slice(1)) {
          const again = await call(i, 'POST', '/v1/reservations', { key: k.key, costCents: 100, ttl: '10m', idempotencyKey: 'hold-1' });
          expect(again, i.name).toMatchObject({ status: 201, body: { reservationId: held.body.reservationId, replayed: true } });
        }
        const [holds] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t.holds} WHERE key_id = $1`, [k.id]);
        expect(holds!.n).toBe(1);
        for (const i of c.instances) {
          expect(await call(i, 'GET', `/v1/keys/${k.id}`, undefined, c.adminKey), i.name).toMatchObject({ status: 200, body: { spentCents: 125, heldCents: 100 } });
        }
      });

      it(`happy: one idempotencyKey sent to all ${n} instances at once (5 times each) is spent exactly once, and every answer is that one charge`, async () => {
        const c = getCluster();
        const t = tableNames(c.table);
        const accountId = uniqueName('acct_idem_race');
        const k = await createKey(c, c.instances[0] as Instance, { accountId, budgetCents: 1_000 });
        for (let trial = 0; trial < 3; trial++) {
          const idem = `race-${trial}`;
          const answers = await Promise.all(
            Array.from({ length: 5 * n }, (_, j) => call(roundRobin(c.instances, j), 'POST', '/v1/charge', { key: k.key, costCents: 40, idempotencyKey: idem })),
          );
          const spent = 40 * (trial + 1);
          for (const a of answers) expect(a).toMatchObject({ status: 200, body: { success: true, budgetUsedCents: spent, budgetRemainingCents: 1_000 - spent } });
          // At most one was charged; the rest replayed it (several may have reached the row at once and all found it).
          expect(answers.filter((a) => a.body.replayed !== true).length).toBeLessThanOrEqual(1);
          const rows = await getDb().query<{ n: number; sum: string }>(
            `SELECT count(*)::int AS n, COALESCE(sum(amount_micros), 0)::text AS sum FROM ${t.ledger} WHERE key_id = $1 AND idempotency_key = $2`,
            [k.id, idem],
          );
          expect(rows).toEqual([{ n: 1, sum: '400000' }]);
        }
        for (const i of c.instances) {
          expect(await call(i, 'GET', `/v1/keys/${k.id}`, undefined, c.adminKey), i.name).toMatchObject({ status: 200, body: { spentCents: 120 } });
        }
      });

      it(`security: charges round-robin over ${n} instances at once on two keys under one account ceiling fill it exactly and never pass it; ledger == counters`, async () => {
        const c = getCluster();
        const db = getDb();
        const t = tableNames(c.table);
        const accountId = uniqueName('acct_race');
        const first = c.instances[0] as Instance;
        expect(await call(first, 'PUT', `/v1/accounts/${accountId}/budget`, { budgetCents: 1_500 }, c.adminKey)).toMatchObject({ status: 200 });
        const keys = [await createKey(c, first, { accountId, budgetCents: 1_000 }), await createKey(c, first, { accountId, budgetCents: 1_000 })];
        // 17-cent charges: each key alone could take 58 (986); together the account takes 88 (1496).
        const answers = await Promise.all(
          Array.from({ length: 200 }, (_, j) => call(roundRobin(c.instances, j), 'POST', '/v1/charge', { key: (keys[j % 2] as { key: string }).key, costCents: 17 })),
        );
        const ok = answers.filter((a) => a.status === 200);
        const refused = answers.filter((a) => a.status === 429);
        expect(ok.length + refused.length, JSON.stringify(answers.find((a) => a.status !== 200 && a.status !== 429)?.body)).toBe(200);
        expect(refused.every((a) => a.body.error.code === 'budget_exceeded')).toBe(true);
        expect(ok).toHaveLength(88);
        const [ledger] = await db.query<{ n: number; sum: string }>(
          `SELECT count(*)::int AS n, sum(amount_micros)::text AS sum FROM ${t.ledger} WHERE account_id = $1 AND kind = 'charge'`,
          [accountId],
        );
        expect(ledger).toEqual({ n: 88, sum: String(1_496 * 10_000) });
        const perKey = await Promise.all(keys.map(async (k) => (await call(first, 'GET', `/v1/keys/${k.id}`, undefined, c.adminKey)).body as { spentCents: number }));
        const [ledgerPerKey] = await db.query<{ a: string; b: string }>(
          `SELECT COALESCE(sum(amount_micros) FILTER (WHERE key_id = $1), 0)::text AS a, COALESCE(sum(amount_micros) FILTER (WHERE key_id = $2), 0)::text AS b
           FROM ${t.ledger} WHERE account_id = $3 AND kind = 'charge'`,
          [keys[0]!.id, keys[1]!.id, accountId],
        );
        expect(perKey.map((k) => k.spentCents * 10_000)).toEqual([Number(ledgerPerKey!.a), Number(ledgerPerKey!.b)]);
        expect(perKey.every((k) => k.spentCents <= 1_000)).toBe(true);
        expect(perKey[0]!.spentCents + perKey[1]!.spentCents).toBe(1_496);
        for (const i of c.instances) {
          expect(await call(i, 'GET', `/v1/accounts/${accountId}/budget`, undefined, c.adminKey), i.name).toMatchObject({ status: 200, body: { budgetCents: 1_500, spentCents: 1_496 } });
        }
      });
    };

    describe('two instances, both given AGENTKEY_ADMIN_KEY', () => {
      const getCluster = useCluster(getDb, 2, 'env');

      it('happy: the admin key works on both; another is refused by both', async () => {
        const c = getCluster();
        for (const i of c.instances) {
          expect((await call(i, 'GET', '/v1/keys?limit=1', undefined, c.adminKey)).status, i.name).toBe(200);
          expect(await call(i, 'GET', '/v1/keys?limit=1', undefined, `${c.adminKey}y`), i.name).toMatchObject({ status: 401, body: { error: { code: 'invalid_admin_key' } } });
          expect(i.proc.stderr()).not.toMatch(ADMIN_KEY_PATTERN);
        }
      });

      shared(2, getCluster);
    });

    describe('three instances, the admin key created by the first', () => {
      const getCluster = useCluster(getDb, 3, 'created');

      it('happy: the first start created one admin key (printed once, stored once) and the other two take it', async () => {
        const c = getCluster();
        const [a, b, cc] = c.instances as [Instance, Instance, Instance];
        expect(a.proc.stderr().match(ADMIN_KEY_PATTERN)).toEqual([c.adminKey]);
        expect(b.proc.stderr()).not.toMatch(ADMIN_KEY_PATTERN);
        expect(cc.proc.stderr()).not.toMatch(ADMIN_KEY_PATTERN);
        expect(await getDb().query('SELECT count(*)::int AS n FROM agentkey_admin_key')).toEqual([{ n: 1 }]);
        for (const i of c.instances) {
          expect((await call(i, 'GET', '/v1/keys?limit=1', undefined, c.adminKey)).status, i.name).toBe(200);
          expect(await call(i, 'GET', '/v1/keys?limit=1', undefined, 'akadmin_not-the-admin-key-at-all')).toMatchObject({ status: 401, body: { error: { code: 'invalid_admin_key' } } });
        }
      });

      shared(3, getCluster);

      it('happy: 60 holds taken across 3 instances expire once each (one expire row, one hold.expired event, one delivery) with 3 sweepers, and a charge racing them', async () => {
        const c = getCluster();
        const db = getDb();
        const t = tableNames(c.table);
        const accountId = uniqueName('acct_holds');
        receiver = await startReceiver();
        const r = receiver;
        const hook = await registerWebhook(c, c.instances[1] as Instance, r, '/holds', { events: ['hold.expired'], accountId });
        const keys = await Promise.all(Array.from({ length: 6 }, (_, j) => createKey(c, roundRobin(c.instances, j), { accountId, budgetCents: 10_000 })));
        const HOLDS = 60;
        const held = await Promise.all(
          Array.from({ length: HOLDS }, (_, j) => call(roundRobin(c.instances, j), 'POST', '/v1/reservations', { key: keys[j % keys.length]!.key, costCents: 10, ttl: '1s' })),
        );
        expect(held.map((h) => h.status)).toEqual(held.map(() => 201));
        const holdIds = new Set(held.map((h) => h.body.reservationId as string));
        expect(holdIds.size).toBe(HOLDS);

        // Once the database's clock is past every ttl, three keys also charge on every
        // instance at once: the charge expires its key's holds on its way, racing the sweeps.
        await until(async () => (await db.query<{ due: boolean }>(`SELECT bool_and(expires_at <= now()) AS due FROM ${t.holds} WHERE key_id = ANY($1)`, [keys.map((k) => k.id)]))[0]!.due, 'the holds to pass their ttl', { timeoutMs: 10_000 });
        const charges = await Promise.all(keys.slice(0, 3).flatMap((k) => c.instances.map((i) => call(i, 'POST', '/v1/charge', { key: k.key, costCents: 1 }))));
        expect(charges.map((x) => x.status)).toEqual(charges.map(() => 200));

        // Nothing else settles them: the instances' sweeps must.
        await until(async () => {
          const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t.holds} WHERE key_id = ANY($1) AND status = 'expired'`, [keys.map((k) => k.id)]);
          return row!.n === HOLDS;
        }, 'every hold marked expired by the instances', { timeoutMs: 15_000 });
        await until(() => deliveredCounts(r, '/holds').size === HOLDS, 'a hold.expired delivery per hold', { timeoutMs: 20_000 });
        await sleep(QUIET_MS);

        const expires = await db.query<{ reservation_id: string; n: number; sum: string; amount: string }>(
          `SELECT l.reservation_id, count(*)::int AS n, sum(l.amount_micros)::text AS sum, min(h.amount_micros)::text AS amount
           FROM ${t.ledger} l JOIN ${t.holds} h ON h.id = l.reservation_id
           WHERE l.account_id = $1 AND l.kind = 'expire' GROUP BY l.reservation_id`,
          [accountId],
        );
        expect(new Set(expires.map((e) => e.reservation_id))).toEqual(holdIds);
        for (const e of expires) expect(e, e.reservation_id).toEqual({ reservation_id: e.reservation_id, n: 1, sum: `-${e.amount}`, amount: '100000' });

        const events = await db.query<{ id: string; hold_id: string }>(`SELECT id::text, data->>'hold_id' AS hold_id FROM ${t.outbox} WHERE type = 'hold.expired' AND account_id = $1`, [accountId]);
        expect(events).toHaveLength(HOLDS);
        expect(new Set(events.map((e) => e.hold_id))).toEqual(holdIds);

        const deliveries = await db.query<{ outbox_id: string; status: string }>(`SELECT outbox_id::text, status FROM ${t.deliveries} WHERE webhook_id = $1`, [hook]);
        expect(deliveries.map((d) => d.outbox_id).sort()).toEqual(events.map((e) => e.id).sort());
        expect(deliveries.every((d) => d.status === 'delivered')).toBe(true);
        // The receiver always answers 200: one request per event, no retry and no second send.
        const counts = deliveredCounts(r, '/holds');
        expect(new Set(counts.keys())).toEqual(new Set(events.map((e) => `evt_${e.id}`)));
        expect([...counts.values()].every((n) => n === 1)).toBe(true);
        expect(r.received.filter((x) => x.path === '/holds')).toHaveLength(HOLDS);
        expect(r.received.every((x) => x.verified)).toBe(true);
        expect(r.maxInFlight).toBe(1);

        // The money is back: nothing held, only the charges spent.
        for (const [j, k] of keys.entries()) {
          expect(await call(c.instances[0] as Instance, 'GET', `/v1/keys/${k.id}`, undefined, c.adminKey)).toMatchObject({ status: 200, body: { heldCents: 0, spentCents: j < 3 ? 3 : 0 } });
        }
      }, 90_000);

      it('happy: 15 keys expiring while 3 instances sweep get one key.expired event and one delivery each', async () => {
        const c = getCluster();
        const db = getDb();
        const t = tableNames(c.table);
        const accountId = uniqueName('acct_expiry');
        receiver = await startReceiver();
        const r = receiver;
        await registerWebhook(c, c.instances[2] as Instance, r, '/expiry', { events: ['key.expired'], accountId });
        const KEYS = 15;
        const keys = await Promise.all(Array.from({ length: KEYS }, (_, j) => createKey(c, roundRobin(c.instances, j), { accountId, expiresIn: '1s' })));
        await until(() => deliveredCounts(r, '/expiry').size === KEYS, 'a key.expired delivery per key', { timeoutMs: 20_000 });
        await sleep(QUIET_MS);

        const events = await db.query<{ id: string; key_id: string }>(`SELECT id::text, key_id::text FROM ${t.outbox} WHERE type = 'key.expired' AND account_id = $1`, [accountId]);
        expect(events.map((e) => Number(e.key_id)).sort((x, y) => x - y)).toEqual(keys.map((k) => k.id).sort((x, y) => x - y));
        const counts = deliveredCounts(r, '/expiry');
        expect(new Set(counts.keys())).toEqual(new Set(events.map((e) => `evt_${e.id}`)));
        expect(r.received.filter((x) => x.path === '/expiry')).toHaveLength(KEYS);
        expect(r.received.every((x) => x.verified && x.body.type === 'key.expired')).toBe(true);
        for (const i of c.instances) {
          expect((await call(i, 'POST', '/v1/verify', { key: keys[0]!.key })).body, i.name).toMatchObject({ valid: false, reason: 'expired' });
        }
      }, 60_000);

      it('happy: events made on all 3 instances (thresholds, revocations) are each delivered once, while a receiver fails some first attempts; every attempt is one instance\'s', async () => {
        const c = getCluster();
        const db = getDb();
        const t = tableNames(c.table);
        const accountId = uniqueName('acct_hooks');
        // Every fourth event's first attempt is a 503: its retry may go to any instance.
        let n = 0;
        const failedFirst = new Set<string>();
        receiver = await startReceiver(async (x, nth) => {
          await sleep(++n % 5);
          if (nth === 0 && Number(x.id.slice(4)) % 4 === 0) {
            failedFirst.add(x.id);
            return 503;
          }
          return 200;
        });
        const r = receiver;
        const before = await webhookAttempts(c);
        const hook = await registerWebhook(c, c.instances[0] as Instance, r, '/all', { accountId });
        const KEYS = 30;
        await Promise.all(
          Array.from({ length: KEYS }, async (_, j) => {
            const k = await createKey(c, roundRobin(c.instances, j), { accountId, budgets: [{ cents: 100 }], alerts: [50] });
            // Crosses 50%: one budget.threshold, then a key.revoked, each made on another instance.
            expect((await call(roundRobin(c.instances, j + 1), 'POST', '/v1/charge', { key: k.key, costCents: 60 })).status).toBe(200);
            expect((await call(roundRobin(c.instances, j + 2), 'POST', `/v1/keys/${k.id}/revoke`, undefined, c.adminKey)).body).toMatchObject({ revoked: true });
          }),
        );
        const events = await db.query<{ id: string; type: string }>(`SELECT id::text, type FROM ${t.outbox} WHERE account_id = $1 ORDER BY id`, [accountId]);
        expect(events.filter((e) => e.type === 'budget.threshold')).toHaveLength(KEYS);
        expect(events.filter((e) => e.type === 'key.revoked')).toHaveLength(KEYS);
        expect(events).toHaveLength(2 * KEYS);
        const want = new Set(events.map((e) => `evt_${e.id}`));

        await until(() => deliveredCounts(r, '/all').size === want.size, 'every event delivered', { timeoutMs: 40_000 });
        await until(async () => {
          const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t.deliveries} WHERE webhook_id = $1 AND status <> 'delivered'`, [hook]);
          return row!.n === 0;
        }, 'no delivery left pending', { timeoutMs: 20_000 });
        await sleep(QUIET_MS);

        const counts = deliveredCounts(r, '/all');
        expect(new Set(counts.keys())).toEqual(want);
        expect([...counts.values()].every((x) => x === 1)).toBe(true);
        expect(failedFirst.size).toBeGreaterThan(0);
        const requests = r.received.filter((x) => x.path === '/all');
        expect(requests).toHaveLength(want.size + failedFirst.size);
        expect(requests.every((x) => x.verified)).toBe(true);
        expect(r.maxInFlight).toBe(1);
        const deliveries = await db.query<{ outbox_id: string; attempts: number; status: string }>(`SELECT outbox_id::text, attempts, status FROM ${t.deliveries} WHERE webhook_id = $1`, [hook]);
        expect(deliveries).toHaveLength(want.size);
        for (const d of deliveries) expect(d, d.outbox_id).toEqual({ outbox_id: d.outbox_id, attempts: failedFirst.has(`evt_${d.outbox_id}`) ? 2 : 1, status: 'delivered' });
        // Every request was an attempt of exactly one instance's deliverer (their /metrics add up to it).
        const after = await webhookAttempts(c);
        const perInstance = after.map((x, j) => x - (before[j] as number));
        expect(perInstance.reduce((x, y) => x + y, 0)).toBe(requests.length);
      }, 120_000);
    });

    describe("the deliverer's hold sweep (in this process)", () => {
      it('happy: sweepExpiredHolds (default true) marks expired holds on each tick; false leaves them; a non-boolean is invalid_argument', async () => {
        const db = getDb();
        const ak = await db.agentKey();
        try {
          expect(() => startDeliverer(ak, { sweepExpiredHolds: 'yes' } as never)).toThrow(AgentKeyError);
          expect(() => startDeliverer(ak, { sweepExpiredHolds: 1 } as never)).toThrow(/sweepExpiredHolds must be true or false/);
          const k = await ak.create({ accountId: uniqueName('acct_tick'), budgetCents: 100 });
          const hold = await ak.reserve(k.key, { costCents: 10, ttl: '1s' });
          if (!hold.success) throw new Error('the hold was refused');
          await until(async () => (await ak.getReservation(hold.reservationId))?.status === 'expired', 'the hold to pass its ttl', { timeoutMs: 10_000 });
          const off = startDeliverer(ak, { sweepExpiredHolds: false, pollMs: 3_600_000 });
          await off.tick();
          await off.stop();
          const t = tableNames(ak.tableName);
          const status = async () => (await db.query<{ status: string }>(`SELECT status FROM ${t.holds} WHERE id = $1`, [hold.reservationId]))[0]!.status;
          expect(await status()).toBe('held');
          const on = startDeliverer(ak, { pollMs: 3_600_000 });
          await on.tick();
          await on.stop();
          expect(await status()).toBe('expired');
          expect(await db.query(`SELECT kind, amount_micros::text AS amount FROM ${t.ledger} WHERE reservation_id = $1 AND kind = 'expire'`, [hold.reservationId])).toEqual([
            { kind: 'expire', amount: '-100000' },
          ]);
        } finally {
          await ak.close();
        }
      });
    });
  },
  ['postgres'],
);
