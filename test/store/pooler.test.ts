import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../../src/index.js';
import { detectPooler } from '../../src/store/pooler.js';
import { uniqueName } from '../helpers/databases.js';
import { usePgBouncer } from '../helpers/pgbouncer.js';
import { sleep, until } from '../helpers/wait.js';

/**
 * agentkey behind PgBouncer in transaction mode (Debian's pgbouncer, started by the test):
 * the pooler is detected; LISTEN goes to `directUrl` when given; without it the cache runs
 * its fallback (entries live `cache.fallbackTtlMs`), and no feature keeps session state on
 * pooled connections. The whole suite also runs through PgBouncer: `npm run test:pooled`.
 */

// Two server connections for everything: session state left on one would reach another caller.
const urls = usePgBouncer({ poolSize: 2 });
const pools: pg.Pool[] = [];
const keys: AgentKey[] = [];
const table = `pooled_${process.pid}`;

function pool(url: string, max = 10): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max });
  pools.push(p);
  return p;
}

function agentKey(options: Partial<ConstructorParameters<typeof AgentKey>[0]> & { pool: pg.Pool }): AgentKey {
  const ak = new AgentKey({ tableName: table, ...options });
  keys.push(ak);
  return ak;
}

/** Validates until the cache is in `mode` (the listener's connection is checked on the first validation). */
async function untilMode(ak: AgentKey, key: string, mode: 'notify' | 'fallback' | 'off'): Promise<void> {
  await until(async () => (await ak.validate(key)).valid && ak.cacheStats()?.mode === mode, `the cache to be in mode ${mode}`);
  // A read that was out when the mode changed is not kept: this one is.
  await ak.validate(key);
}

/** Backends in LISTEN-waiting state on the database (the cache's listener sits idle there). */
async function listeners(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const { rows } = await c.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND query = 'SELECT 1 AS agentkey_listen_heartbeat' AND pid <> pg_backend_pid()`,
    );
    return rows[0].n as number;
  } finally {
    await c.end();
  }
}

beforeAll(async () => {
  await agentKey({ pool: pool(urls().pooled) }).migrate();
});

afterAll(async () => {
  for (const ak of keys) await ak.close().catch(() => {});
  for (const p of pools) await p.end().catch(() => {});
});

describe('detecting a pooler', () => {
  it('happy: a pool through PgBouncer is pooled, a direct one is not, and PGlite has nothing in between', async () => {
    expect(await detectPooler(pool(urls().pooled))).toBe(true);
    expect(await detectPooler(pool(urls().direct))).toBe(false);
    const lite = await PGlite.create();
    try {
      expect(await detectPooler(lite)).toBeNull();
    } finally {
      await lite.close();
    }
  });
});

describe('the cache behind a pooler', () => {
  it('security: without directUrl the cache falls back: it serves from memory, and another process\'s revocation shows within fallbackTtlMs', async () => {
    const fallbackTtlMs = 400;
    const ak = agentKey({ pool: pool(urls().pooled), cache: { ttlMs: 60_000, fallbackTtlMs } });
    const other = agentKey({ pool: pool(urls().direct) });
    const k = await other.create({ accountId: uniqueName('acct_pool') });
    await untilMode(ak, k.key, 'fallback');
    expect(ak.cacheStats()).toMatchObject({ listening: false, mode: 'fallback', fallbackTtlMs });
    // Served from memory: a hit.
    const before = ak.cacheStats()!;
    expect(await ak.validate(k.key)).toMatchObject({ valid: true });
    expect(ak.cacheStats()!.hits).toBe(before.hits + 1);

    await other.revoke(k.id);
    // Any validation that starts fallbackTtlMs after the revocation committed reads it.
    await sleep(fallbackTtlMs + 50);
    expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });

    // A change made by this process shows at once, whatever the fallback.
    const own = await ak.create({ accountId: uniqueName('acct_pool') });
    expect(await ak.validate(own.key)).toMatchObject({ valid: true });
    expect(await ak.validate(own.key)).toMatchObject({ valid: true });
    await ak.revoke(own.id);
    expect(await ak.validate(own.key)).toEqual({ valid: false, reason: 'revoked' });
  });

  it('security: with directUrl the cache hears changes on the direct connection (entries that would otherwise live a minute)', async () => {
    const ak = agentKey({ pool: pool(urls().pooled), directUrl: urls().direct, cache: { ttlMs: 60_000, fallbackTtlMs: 60_000 } });
    const other = agentKey({ pool: pool(urls().direct) });
    const k = await other.create({ accountId: uniqueName('acct_pool') });
    await untilMode(ak, k.key, 'notify');
    expect(ak.cacheStats()).toMatchObject({ listening: true, mode: 'notify' });
    const before = ak.cacheStats()!;
    expect(await ak.validate(k.key)).toMatchObject({ valid: true });
    expect(ak.cacheStats()!.hits).toBe(before.hits + 1);
    await other.revoke(k.id);
    // Only the notification can drop the entry before a minute is up.
    await until(async () => !(await ak.validate(k.key)).valid, 'the revocation to be heard', { timeoutMs: 10_000 });
    expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
  });

  it('security: a directUrl that is itself pooled is detected too, and the cache falls back', async () => {
    const ak = agentKey({ pool: pool(urls().pooled), directUrl: urls().pooled, cache: { fallbackTtlMs: 300 } });
    const k = await ak.create({ accountId: uniqueName('acct_pool') });
    await untilMode(ak, k.key, 'fallback');
  });

  it('happy: fallbackTtlMs 0 serves nothing from memory behind a pooler: every validation reads the database', async () => {
    const ak = agentKey({ pool: pool(urls().pooled), cache: { ttlMs: 60_000, fallbackTtlMs: 0 } });
    const other = agentKey({ pool: pool(urls().direct) });
    const k = await other.create({ accountId: uniqueName('acct_pool') });
    // The listener's connection was looked at, and found pooled (nothing is listening, and nothing is kept).
    await until(async () => (await ak.validate(k.key)).valid && (await listeners(urls().direct)) === 0, 'the first validation');
    await sleep(200);
    for (let i = 0; i < 5; i++) expect(await ak.validate(k.key)).toMatchObject({ valid: true });
    expect(ak.cacheStats()).toMatchObject({ hits: 0, size: 0, mode: 'off' });
    // So another process's revocation shows on the next validation.
    await other.revoke(k.id);
    expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
  });
});

describe('no session state on pooled connections', () => {
  it('happy: three AgentKeys on two server connections: concurrent migrations, charges, holds, idempotent retries and rate limits all keep their guarantees', async () => {
    const aks = [0, 1, 2].map(() => agentKey({ pool: pool(urls().pooled, 8), timeoutMs: 10_000 }));
    expect((await Promise.all(aks.map((ak) => ak.migrate()))).flat()).toEqual([]);
    const account = uniqueName('acct_pool');
    const k = await aks[0]!.create({ accountId: account, budgetCents: 100, rateLimit: { requests: 1_000, per: '1m' } });
    // 150 charges of 1 cent from three AgentKeys at once on a 100-cent budget: exactly 100 land.
    const outcomes = await Promise.all(
      Array.from({ length: 150 }, (_, i) => aks[i % 3]!.trackUsage(k.key, { costCents: 1, idempotencyKey: `c${i}` })),
    );
    expect(outcomes.filter((o) => o.success)).toHaveLength(100);
    // Retries through other AgentKeys replay.
    const replays = await Promise.all([0, 1, 2].map((i) => aks[(i + 1) % 3]!.trackUsage(k.key, { costCents: 1, idempotencyKey: `c${i}` })));
    expect(replays.map((r) => r.success)).toEqual(outcomes.slice(0, 3).map((o) => o.success));
    expect((await aks[2]!.getKey(k.id))?.spentCents).toBe(100);

    const k2 = await aks[1]!.create({ accountId: account, budgetCents: 50 });
    const held = await Promise.all(Array.from({ length: 8 }, (_, i) => aks[i % 3]!.reserve(k2.key, { costCents: 10, ttl: '1m' })));
    expect(held.filter((h) => h.success)).toHaveLength(5);
    for (const [i, h] of held.entries()) if (h.success) await aks[(i + 1) % 3]!.commit(h.reservationId, { costCents: 4 });
    expect((await aks[0]!.getKey(k2.id))?.spentCents).toBe(20);

    const limited = await aks[0]!.create({ accountId: account, rateLimit: { requests: 5, per: '1m' } });
    const checks = await Promise.all(Array.from({ length: 12 }, (_, i) => aks[i % 3]!.validate(limited.key)));
    expect(checks.filter((c) => c.valid)).toHaveLength(5);
    expect(checks.filter((c) => !c.valid).every((c) => !c.valid && c.reason === 'rate_limited')).toBe(true);
  });
});

describe('options', () => {
  it('sad: directUrl and readPool refuse what cannot work, with the reason', async () => {
    const p = pool(urls().pooled);
    const bad = (options: Record<string, unknown>) => {
      try {
        new AgentKey({ pool: p, tableName: table, ...options } as never);
      } catch (err) {
        expect(err).toBeInstanceOf(AgentKeyError);
        return (err as AgentKeyError).message;
      }
      throw new Error('expected a refusal');
    };
    expect(bad({ directUrl: 'http://example.com/db' })).toMatch(/directUrl must be a postgres:\/\/ URL/);
    expect(bad({ directUrl: 42 })).toMatch(/directUrl must be a postgres:\/\/ URL/);
    expect(bad({ cache: { fallbackTtlMs: -1 } })).toMatch(/cache.fallbackTtlMs must be a whole number/);
    expect(bad({ cache: { fallbackTtlMs: 1.5 } })).toMatch(/cache.fallbackTtlMs must be a whole number/);
    expect(bad({ readPool: p })).toMatch(/not the same pool/);
    expect(bad({ readPool: { query() {} } })).toMatch(/readPool must be a node-postgres Pool/);
    const lite = await PGlite.create();
    try {
      expect(() => new AgentKey({ pool: lite, directUrl: urls().direct })).toThrow(/directUrl is for a node-postgres Pool/);
      expect(() => new AgentKey({ pool: lite, readPool: p as never })).toThrow(/readPool needs a node-postgres Pool/);
    } finally {
      await lite.close();
    }
  });
});
