import { afterEach, expect, it } from 'vitest';
import { startCli, cliEnv } from './helpers/cli.js';
import { type Instance, call, metricSum, startInstance, stopInstances, within } from './helpers/instances.js';
import { usePgBouncer } from './helpers/pgbouncer.js';
import { useCliBundle } from './helpers/processes.js';

/**
 * `agentkey serve` on a DATABASE_URL through PgBouncer in transaction mode: it says at start
 * which mode its key cache runs in and why; with AGENTKEY_DIRECT_URL a revocation reaches
 * another instance by LISTEN, without it within the fallback's second; a direct URL that is
 * pooled too, or one without DATABASE_URL, is a start-up error.
 */

const cli = useCliBundle('server-pooled');
const urls = usePgBouncer();
const ADMIN = 'akadmin_pooled_0123456789abcdefghij';
let running: Instance[] = [];
let tables = 0;

afterEach(async () => {
  await stopInstances(running);
  running = [];
});

async function cluster(extraArgs: string[]): Promise<Instance[]> {
  const table = `pooled_serve_${process.pid}_${++tables}`;
  // One at a time: the first migrates, the others find the tables.
  for (const name of ['a', 'b']) running.push(await startInstance(cli(), name, { databaseUrl: urls().pooled, table, adminKey: ADMIN, extraArgs }));
  return running;
}

/** The start-up line about the connection (it follows the "listening" line). */
function connectionLine(i: Instance): Promise<Record<string, unknown>> {
  return i.proc.waitForLog(/^PostgreSQL: /, 10_000);
}

const metric = async (i: Instance, name: string, labels?: RegExp) => metricSum((await call(i, 'GET', '/metrics')).body as string, name, labels);

/** A key made on `a`, validated on `b` until `b` serves it from memory (its cache in `mode`), then revoked on `a`. */
async function cachedThenRevoked(a: Instance, b: Instance, mode: 'notify' | 'fallback'): Promise<{ key: string }> {
  const k = (await call(a, 'POST', '/v1/keys', { accountId: `acct_${process.pid}_${tables}`, scopes: ['chat'] }, ADMIN)).body;
  await within(10_000, `instance b's cache in mode ${mode}, serving the key`, async () => {
    const hits = await metric(b, 'agentkey_cache_hits_total');
    expect((await call(b, 'POST', '/v1/verify', { key: k.key })).body).toMatchObject({ valid: true });
    return { mode: await metric(b, 'agentkey_cache_mode', new RegExp(`mode="${mode}"`)), hit: (await metric(b, 'agentkey_cache_hits_total')) > hits };
  }, (r) => r.mode === 1 && r.hit);
  expect(await call(a, 'POST', `/v1/keys/${k.id}/revoke`, undefined, ADMIN)).toMatchObject({ status: 200 });
  return k;
}

it('happy: with AGENTKEY_DIRECT_URL, two instances behind PgBouncer hear each other\'s revocations, and a retried charge replays across them', async () => {
  const [a, b] = (await cluster(['--direct-url', urls().direct])) as [Instance, Instance];
  for (const i of [a, b]) {
    expect(await connectionLine(i)).toMatchObject({ level: 30, connection: { pooled: true, directUrl: true, readReplica: false } });
    expect((await connectionLine(i)).msg).toContain('hears changes by LISTEN on AGENTKEY_DIRECT_URL');
  }
  const invalidations = await metric(b, 'agentkey_cache_invalidations_total');
  const revoked = await cachedThenRevoked(a, b, 'notify');
  // Within b's cache ttl (5 s): and the entry was dropped by the notification, not by age.
  await within(4_000, 'instance b refusing the revoked key', async () => (await call(b, 'POST', '/v1/verify', { key: revoked.key })).body, (r) => r.valid === false);
  expect((await call(b, 'POST', '/v1/verify', { key: revoked.key })).body).toEqual({ valid: false, reason: 'revoked' });
  expect(await metric(b, 'agentkey_cache_invalidations_total')).toBeGreaterThan(invalidations);
  const k = (await call(a, 'POST', '/v1/keys', { accountId: `acct_${process.pid}_idem`, budgetCents: 500 }, ADMIN)).body;
  const first = await call(a, 'POST', '/v1/charge', { key: k.key, costCents: 120, idempotencyKey: 'pooled-1' });
  expect(first).toMatchObject({ status: 200, body: { success: true, budgetUsedCents: 120 } });
  const retry = await call(b, 'POST', '/v1/charge', { key: k.key, costCents: 120, idempotencyKey: 'pooled-1' });
  expect(retry).toMatchObject({ status: 200, body: { ...first.body, replayed: true } });
  expect((await call(b, 'GET', `/v1/keys/${k.id}`, undefined, ADMIN)).body).toMatchObject({ spentCents: 120 });
});

it('security: without AGENTKEY_DIRECT_URL each instance warns that its cache is in the fallback, and a revocation still shows on the other within a second or so', async () => {
  const [a, b] = (await cluster([])) as [Instance, Instance];
  for (const i of [a, b]) {
    expect(await connectionLine(i)).toMatchObject({ level: 40, connection: { pooled: true, directUrl: false } });
    expect((await connectionLine(i)).msg).toContain('AGENTKEY_DIRECT_URL is not set');
    expect((await connectionLine(i)).msg).toContain('within 1 s');
  }
  const revoked = await cachedThenRevoked(a, b, 'fallback');
  // No read was out at the revocation: any validation that starts over a second later reads it.
  await new Promise((resolve) => setTimeout(resolve, 1_100));
  expect((await call(b, 'POST', '/v1/verify', { key: revoked.key })).body).toEqual({ valid: false, reason: 'revoked' });
});

it('sad: a direct URL that is pooled too, or one without DATABASE_URL, stops the service at start with the reason', async () => {
  const pooledTwice = startCli(cli(), ['serve', '--port', '0', '--database-url', urls().pooled, '--direct-url', urls().pooled], { env: cliEnv({ AGENTKEY_ADMIN_KEY: ADMIN }) });
  const one = await pooledTwice.exited;
  expect(one.code).not.toBe(0);
  expect(one.stderr).toContain('goes through a connection pooler too');
  const noDatabase = startCli(cli(), ['serve', '--port', '0', '--direct-url', urls().direct], { env: cliEnv({ AGENTKEY_ADMIN_KEY: ADMIN }) });
  const two = await noDatabase.exited;
  expect(two.code).not.toBe(0);
  expect(two.stderr).toContain('AGENTKEY_DIRECT_URL (--direct-url) is for PostgreSQL: set DATABASE_URL too');
  // The password never shows.
  expect(one.stderr).not.toMatch(/:postgres@/);
});
