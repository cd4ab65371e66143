/**
 * What every benchmark workload uses: the run's settings (from the command line), load driven
 * by concurrent callers and timed per call, seeded costs, the results table, and keys made
 * through the library's own API.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { AgentKey, type AgentKeyOptions } from '../src/index.js';
import { seededRandom } from '../test/helpers/random.js';

export const URL = process.env.BENCH_DATABASE_URL as string;
export const CALLERS = 64;
export const POOL_SIZE = 10;
export const quick = process.argv.includes('--quick');
export const SECONDS = quick ? 1 : 3;
export const CHARGES = quick ? 2_000 : 10_000;
/** How long the locked-row workload holds its lock. */
export const LOCK_SECONDS = 8;
export const PAIRS = quick ? 600 : 3_000;
const onlyAt = process.argv.indexOf('--only');
/** `--only charge` runs the workloads whose name contains "charge". */
export const only = onlyAt >= 0 ? (process.argv[onlyAt + 1] ?? '') : null;
const lanesAt = process.argv.indexOf('--lanes');
const LANES = lanesAt >= 0 ? Number(process.argv[lanesAt + 1]) : undefined;

export type Impl = 'agentkey' | 'plain';

export interface Run {
  ops: number;
  seconds: number;
  p50: number;
  p99: number;
}

/** One workload measured on both implementations, with the checks made after it. */
export interface Row {
  workload: string;
  target: number | null;
  runs: Record<Impl, Run>;
  checks: Record<Impl, string[]>;
  failed: string[];
}

/** Every workload's row, in the order they ran. */
export const rows: Row[] = [];

export function newRow(workload: string, target: number | null): Row {
  const row: Row = { workload, target, runs: {} as Row['runs'], checks: { agentkey: [], plain: [] }, failed: [] };
  rows.push(row);
  return row;
}

export function record(row: Row, impl: Impl, ok: boolean, what: string): void {
  row.checks[impl].push(`${ok ? 'ok' : 'FAILED'}: ${what}`);
  if (!ok) row.failed.push(`${impl}: ${what}`);
}

// --- driving load -------------------------------------------------------------------------

/** `callers` loops calling `op(i)` for a fixed count of ops (or for `seconds`), timing each call. */
export async function drive(limit: { ops: number } | { seconds: number }, op: (i: number) => Promise<void>, callers = CALLERS): Promise<Run> {
  const latencies: number[] = [];
  let next = 0;
  const start = performance.now();
  const stopAt = 'seconds' in limit ? start + limit.seconds * 1000 : Infinity;
  const total = 'ops' in limit ? limit.ops : Infinity;
  const caller = async () => {
    while (next < total && performance.now() < stopAt) {
      const i = next++;
      const t0 = performance.now();
      await op(i);
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: callers }, caller));
  const seconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  return { ops: latencies.length, seconds, p50: at(0.5), p99: at(0.99) };
}

/** Costs in micro-dollars: 1 to 100 cent-hundredths (0.01 to 1.00 cents). */
export function costs(n: number, seed: number): number[] {
  const r = seededRandom(seed);
  return Array.from({ length: n }, () => (1 + Math.floor(r() * 100)) * 100);
}

/** `n` picks among `of` items (0 to of - 1). */
export function picks(n: number, of: number, seed: number): number[] {
  const r = seededRandom(seed);
  return Array.from({ length: n }, () => Math.floor(r() * of));
}

export function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

export function sha256(raw: string): string {
  return createHash('sha256').update(raw).digest('hex');
}

// --- agentkey side -----------------------------------------------------------------------

let tableCounter = 0;

/** A migrated AgentKey on a table of its own (with `--lanes n`, that many batching lanes). */
export async function freshAgentKey(pool: pg.Pool, options: Partial<AgentKeyOptions> = {}): Promise<AgentKey> {
  const batching = LANES === undefined ? {} : { batching: { lanes: LANES } };
  const ak = new AgentKey({ pool, tableName: `bench_${process.pid}_${++tableCounter}`, ...batching, ...options });
  await ak.migrate();
  return ak;
}

/**
 * Makes `budgets.length` keys of `accountId` on `ak`'s table with create() (budgets in
 * micro-dollars, null for none), and returns the raw keys and their ids. Setup, not measured:
 * it runs on a pool of its own without waiting for each commit to reach the disk
 * (synchronous_commit off), so a hundred thousand keys take seconds, not minutes.
 */
export async function createKeys(ak: AgentKey, accountId: string, budgets: (number | null)[]): Promise<{ raws: string[]; ids: number[] }> {
  const pool = new pg.Pool({ connectionString: URL, max: POOL_SIZE, options: '-c synchronous_commit=off' });
  const setup = new AgentKey({ pool, tableName: ak.tableName, cache: false });
  const raws: string[] = new Array(budgets.length);
  const ids: number[] = new Array(budgets.length);
  let next = 0;
  const lane = async () => {
    for (let i = next++; i < budgets.length; i = next++) {
      const b = budgets[i] as number | null;
      const k = await setup.create({ accountId, budgetCents: b === null ? null : b / 10_000 });
      raws[i] = k.key;
      ids[i] = k.id;
    }
  };
  await Promise.all(Array.from({ length: POOL_SIZE * 2 }, lane));
  await setup.close();
  await pool.end();
  return { raws, ids };
}
