/**
 * The validation cache, agentkey alone: the heap taken by a full cache and its bound, and how
 * long a revocation takes to reach another pool's cache through LISTEN/NOTIFY.
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { AgentKey } from '../../src/index.js';
import { URL, createKeys, drive, freshAgentKey, quick } from '../harness.js';

export async function cacheHeap(pool: pg.Pool): Promise<string[]> {
  const n = quick ? 20_000 : 100_000;
  const extra = n / 10;
  const ak = await freshAgentKey(pool, { cache: { maxKeys: n, ttlMs: 600_000 } });
  const { raws } = await createKeys(ak, 'acct_heap', Array(n + extra).fill(null));
  // Listening starts on the first validation; the cache keeps nothing before it is ready.
  await ak.validate(raws[0] as string);
  while (!ak.cacheStats()?.listening) await new Promise((r) => setTimeout(r, 10));
  const heap = () => {
    (globalThis as { gc?: () => void }).gc?.();
    return process.memoryUsage().heapUsed;
  };
  const before = heap();
  const t0 = performance.now();
  await drive({ ops: n }, async (i) => {
    await ak.validate(raws[i] as string);
  });
  const fillSeconds = (performance.now() - t0) / 1000;
  const filled = heap();
  const full = ak.cacheStats();
  await drive({ ops: extra }, async (i) => {
    await ak.validate(raws[n + i] as string);
  });
  const after = heap();
  const past = ak.cacheStats();
  await ak.close();
  const mb = (b: number) => `${(b / 1024 / 1024).toFixed(1)} MB`;
  return [
    `Heap with ${n.toLocaleString('en-US')} cached keys: ${mb(filled - before)} more than empty (${Math.round((filled - before) / n)} bytes a key); filled in ${fillSeconds.toFixed(1)} s (${Math.round(n / fillSeconds).toLocaleString('en-US')} cold validations/s).`,
    `Cache size after ${n.toLocaleString('en-US')}: ${full?.size}; after ${extra.toLocaleString('en-US')} more keys: ${past?.size} (bound ${n.toLocaleString('en-US')}, ${past?.evictions} evicted); heap then ${mb(after - before)} over empty.`,
    past !== null && past.size <= n ? 'ok: the cache stayed within its bound' : 'FAILED: the cache grew past its bound',
  ];
}

/**
 * How long a revocation takes to reach another AgentKey's cache (its own pool, so its own
 * listening connection, as in another process): revoke through one, poll the other.
 */
export async function revocationDelay(poolA: pg.Pool): Promise<string[]> {
  const poolB = new pg.Pool({ connectionString: URL, max: 2 });
  const a = await freshAgentKey(poolA);
  const b = new AgentKey({ pool: poolB, tableName: a.tableName, cache: { ttlMs: 600_000 } });
  const delays: number[] = [];
  for (let i = 0; i < 20; i++) {
    const { key, id } = await a.create({ accountId: 'acct_revoke' });
    await b.validate(key);
    while (!b.cacheStats()?.listening) await new Promise((r) => setTimeout(r, 5));
    await b.validate(key);
    const hits = b.cacheStats()?.hits ?? 0;
    await b.validate(key);
    if ((b.cacheStats()?.hits ?? 0) <= hits) throw new Error('the key was not served from the cache');
    const t0 = performance.now();
    await a.revoke(id);
    while ((await b.validate(key)).valid) await new Promise((r) => setImmediate(r));
    delays.push(performance.now() - t0);
  }
  await b.close();
  await a.close();
  await poolB.end();
  delays.sort((x, y) => x - y);
  const at = (q: number) => (delays[Math.min(delays.length - 1, Math.floor(q * delays.length))] as number).toFixed(1);
  return [
    `Revocation seen by another pool's cache (its own LISTEN connection; cached with a 10-minute TTL): median ${at(0.5)} ms, max ${at(1)} ms over ${delays.length} revocations (counted from the revoke call, which includes its own commit).`,
  ];
}
