/**
 * Single calls, agentkey alone: one caller, one call at a time, so every call is a batch of
 * one and pays the spend function's whole fixed cost. A key with a parent under an account
 * ceiling (every budget a charge can meet), charged with `trackUsage` and held and committed
 * with `reserve` + `commit`, with `batching: false` and with batching on (the default). The two
 * settings take turns call by call, so the machine's load falls on both alike. Medians.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { AgentKey } from '../../src/index.js';
import { freshAgentKey, quick } from '../harness.js';

const CALLS = quick ? 300 : 1_500;

interface Side {
  name: string;
  ak: AgentKey;
  key: string;
  track: number[];
  pair: number[];
  charged: number;
}

async function side(pool: pg.Pool, name: string, batching: boolean): Promise<Side> {
  const ak = await freshAgentKey(pool, batching ? {} : { batching: false });
  const accountId = `acct_single_${batching ? 'b' : 's'}`;
  const root = await ak.create({ accountId, budgetCents: 1e9 });
  const child = await ak.create({ accountId, budgetCents: 1e8, parentId: root.id });
  await ak.setAccountBudget(accountId, { budgetCents: 1e10 });
  return { name, ak, key: child.key, track: [], pair: [], charged: 0 };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

export async function singleCalls(pool: pg.Pool): Promise<string[]> {
  const sides = [await side(pool, 'batching: false', false), await side(pool, 'batching on', true)];
  const failures: string[] = [];
  for (let i = 0; i < CALLS; i++) {
    for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
      let t0 = performance.now();
      const charged = await s.ak.trackUsage(s.key, { costCents: 1 });
      s.track.push(performance.now() - t0);
      if (!charged.success) failures.push(`${s.name}: a charge was refused`);
      t0 = performance.now();
      const held = await s.ak.reserve(s.key, { costCents: 2 });
      if (!held.success) failures.push(`${s.name}: a hold was refused`);
      else await s.ak.commit(held.reservationId, { costCents: 1 });
      s.pair.push(performance.now() - t0);
      s.charged += 2;
    }
  }
  const lines = ['', `Single calls (one caller, ${CALLS} of each, the two settings taking turns), median ms:`];
  for (const s of sides) {
    const key = await s.ak.getKey((await s.ak.identify(s.key)) as number);
    const audit = await s.ak.audit();
    if (Number(key?.spentCents) !== s.charged) failures.push(`${s.name}: spent ${key?.spentCents} cents, charged ${s.charged}`);
    if (!audit.ok) failures.push(`${s.name}: audit() found counters the ledger does not explain`);
    lines.push(`  ${s.name.padEnd(16)} trackUsage ${median(s.track).toFixed(3)}   reserve + commit ${median(s.pair).toFixed(3)}`);
    await s.ak.close();
  }
  lines.push(failures.length === 0 ? '  checks: every call accepted; spend and audit() ok' : `FAILED: ${failures.slice(0, 3).join('; ')}`);
  return lines;
}
