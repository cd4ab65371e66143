/**
 * Rate limits: validations of one hot key from the cache, with no limit, a local limit and
 * an exact limit (a limit no run reaches, so every validation is admitted and counted), and
 * 10,000 keys each under an exact limit. `npm run bench -- --only rate`.
 */
import type pg from 'pg';
import { CALLERS, SECONDS, createKeys, drive, fmt, freshAgentKey, picks } from '../harness.js';

export async function rateLimits(pool: pg.Pool): Promise<string[]> {
  const lines = [`\nRate limits (validate from the cache, ${CALLERS} concurrent callers, ${SECONDS} s each):`];
  const limit = { requests: 1_000_000_000, per: '1d' };
  for (const [label, mode, rateLimit] of [
    ['1 hot key, no limit', 'exact', null],
    ['1 hot key, local limit', 'local', limit],
    ['1 hot key, exact limit', 'exact', limit],
  ] as const) {
    const ak = await freshAgentKey(pool, { rateLimits: { mode } });
    const { key } = await ak.create({ accountId: 'acct_rl', ...(rateLimit ? { rateLimit } : {}) });
    await ak.validate(key);
    let bad = 0;
    const run = await drive({ seconds: SECONDS }, async () => {
      if (!(await ak.validate(key)).valid) bad++;
    });
    lines.push(`  ${label.padEnd(26)} ${fmt(run.ops / run.seconds).padStart(9)} ops/s  p50 ${run.p50.toFixed(2)} ms  p99 ${run.p99.toFixed(2)} ms${bad ? `  FAILED: ${bad} refused` : ''}`);
    await ak.close();
  }
  const ak = await freshAgentKey(pool, { rateLimits: { mode: 'exact' } });
  const n = 10_000;
  const { raws } = await createKeys(ak, 'acct_rl_many', Array(n).fill(null));
  await ak.setAccountRateLimit('acct_rl_many', { rateLimit: limit });
  const order = picks(1_000_000, n, 7);
  let bad = 0;
  const run = await drive({ seconds: SECONDS }, async (i) => {
    if (!(await ak.validate(raws[order[i % order.length] as number] as string)).valid) bad++;
  });
  lines.push(`  ${'10,000 keys, exact account limit'.padEnd(26)} ${fmt(run.ops / run.seconds).padStart(9)} ops/s  p50 ${run.p50.toFixed(2)} ms  p99 ${run.p99.toFixed(2)} ms${bad ? `  FAILED: ${bad} refused` : ''}`);
  await ak.close();
  return lines;
}
