// `npm run build && npm run bench -- --only cluster`: throughput of 1, 2 and 4 service
// instances on one PostgreSQL.
//
// What it measures. One PostgreSQL (the benchmark's, from bench/run.mjs: embedded, fsync on
// unless --fsync-off), one keys table migrated once, 1,000 keys over 100 accounts and one hot
// key, all with budgets far above what the run spends. For N = 1, 2, 4 it starts N separate
// `node dist/cli.js serve` processes on that database (same admin key, webhooks, proxy and
// request logs off), waits until each answers GET /healthz, and drives them from this process
// with a round-robin keep-alive HTTP client (bench/cluster-load.mjs), a fixed number of
// concurrent callers per phase, a warm-up and then a measured window:
//   - verify:          POST /v1/verify over the 1,000 keys (cached after the warm-up),
//   - charge:          POST /v1/charge, costCents 1, a unique idempotencyKey, over the 1,000 keys,
//   - charge, hot key: the same on one key (every instance's charges contend on one row).
// It prints per N and phase: requests/s, the scale against N = 1, p50/p99 latency, errors
// (any non-2xx, with the first error body), and where the CPU went in the window (this load
// generator, the instances, PostgreSQL, anything else on the machine, idle), in cores.
//
// Checks. After each charge phase the ledger's charges (queried directly) must sum to the
// number of charges answered 2xx (every charge is 1 cent), and at the end `ak.audit()` must
// find every counter equal to its ledger. It exits non-zero when a check fails. Every
// process it starts is stopped on exit, on an error and on Ctrl-C.
//
// Before each phase it waits (up to 5 s) until other work on the machine (builds, tests) uses
// under 0.25 cores. Options: --quick (1 s warm-up, 3 s windows, 32 callers only). It takes
// about 3 minutes on a quiet machine, 4 on a busy one.
import { spawn } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { freePort } from '../test/support/ports.mjs';
import { AgentKey } from '../dist/index.js';
import { cpuSnapshot, cpuSpent, drive } from './cluster-load.mjs';

const DATABASE_URL = process.env.BENCH_DATABASE_URL;
const quick = process.argv.includes('--quick');
const WARMUP_MS = quick ? 1000 : 2000;
const MEASURE_MS = quick ? 3000 : 8000;
const INSTANCES = [1, 2, 4];
const QUIET_CORES = 0.25; // see waitQuiet()
const QUIET_WAIT_MS = quick ? 2000 : 5000;
const KEYS = 1000;
const ACCOUNTS = 100;
const BUDGET_CENTS = 100_000_000; // $1M a key: never refused in a run
const ADMIN_KEY = `bench-cluster-admin-${process.pid}-0123456789`;
const TABLE = `bench_cluster_${process.pid}`;
const LEDGER = `"${TABLE}_ledger"`; // the ledger beside the keys table (src/store/identifiers.ts)
const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

/** The phases of each N: what each request is, and at how many concurrent callers. */
const PHASES = [
  { name: 'verify', callers: 32, charges: false },
  { name: 'verify', callers: 128, charges: false, full: true },
  { name: 'charge', callers: 32, charges: true },
  { name: 'charge', callers: 128, charges: true, full: true },
  { name: 'charge, hot key', callers: 128, charges: true, hot: true, full: true },
].filter((p) => !quick || !p.full);

// ---- Processes: started here, always stopped ------------------------------------------------

const children = new Set();

function killAll(signal = 'SIGKILL') {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill(signal);
}
process.on('exit', () => killAll());
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    console.error(`\n${signal}: stopping the instances`);
    killAll();
    process.exit(130);
  });
}


/** Starts one `agentkey serve` and resolves once its /healthz answers 200. */
async function startInstance() {
  const port = await freePort();
  const args = [CLI, 'serve', '--database-url', DATABASE_URL, '--table', TABLE, '--host', '127.0.0.1', '--port', String(port)];
  // Request logs are info lines on stdout, one per request: off, as a load test's would be.
  args.push('--no-webhooks', '--no-proxy', '--log-level', 'warn');
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AGENTKEY_ADMIN_KEY: ADMIN_KEY },
  });
  children.add(child);
  let output = '';
  const keep = (chunk) => (output = (output + chunk).slice(-4000));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`an instance exited (code ${child.exitCode}) before it was healthy:\n${output}`);
    const healthy = await fetch(`http://127.0.0.1:${port}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (healthy) return { child, port, output: () => output };
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`an instance did not answer /healthz within 30 s:\n${output}`);
}

/** Stops an instance (SIGTERM, then SIGKILL after 5 s) and waits until it has exited. */
function stopInstance({ child }) {
  return new Promise((resolve) => {
    const done = () => {
      children.delete(child);
      resolve();
    };
    if (child.exitCode !== null || child.signalCode !== null) return done();
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      done();
    });
    child.kill('SIGTERM');
  });
}

// ---- The run --------------------------------------------------------------------------------

const fmt = (n) => Math.round(n).toLocaleString('en-US');
const ms = (n) => n.toFixed(1);
const cores = (n) => n.toFixed(2);
const failures = [];

async function main() {
  if (!DATABASE_URL) throw new Error('BENCH_DATABASE_URL is not set: run it through bench/run.mjs (`npm run bench -- --only cluster`).');
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 10 });
  const ak = new AgentKey({ pool, tableName: TABLE });
  await ak.migrate();
  const [{ version }] = (await pool.query('SELECT version()')).rows;
  const [{ fsync }] = (await pool.query('SHOW fsync')).rows;

  // 1,000 keys over 100 accounts, and one hot key: created through the library, 25 at a time.
  const keys = [];
  for (let i = 0; i < KEYS; i += 25) {
    const batch = Array.from({ length: Math.min(25, KEYS - i) }, (_, j) =>
      ak.create({ accountId: `acct_cluster_${(i + j) % ACCOUNTS}`, name: `bench ${i + j}`, budgetCents: BUDGET_CENTS }),
    );
    for (const { key } of await Promise.all(batch)) keys.push(key);
  }
  const { key: hotKey } = await ak.create({ accountId: 'acct_cluster_hot', name: 'bench hot', budgetCents: BUDGET_CENTS });

  console.log(`\nSeveral instances: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version},`);
  console.log(`${version.split(' on ')[0]} with fsync ${fsync}; ${KEYS} keys over ${ACCOUNTS} accounts and 1 hot key;`);
  console.log(`each phase: ${WARMUP_MS / 1000} s warm-up, then ${MEASURE_MS / 1000} s measured.`);
  console.log(`Before each phase it waits (up to ${QUIET_WAIT_MS / 1000} s) for other work on the machine to use under ${QUIET_CORES} cores.\n`);

  let chargesOk = 0; // every charge answered 2xx so far, warm-ups included
  let chargesFailed = 0; // every charge answered otherwise (one may still have landed)
  let seq = 0; // for unique idempotency keys across the whole run
  const rows = [];
  for (const n of INSTANCES) {
    const instances = [];
    try {
      for (let i = 0; i < n; i++) instances.push(await startInstance());
      const ports = instances.map((x) => x.port);
      const pids = instances.map((x) => x.child.pid);
      for (const phase of PHASES) {
        const request = phase.charges
          ? (i) => ({
              path: '/v1/charge',
              body: { key: phase.hot ? hotKey : keys[i % KEYS], costCents: 1, idempotencyKey: `cluster-${process.pid}-${seq++}` },
            })
          : (i) => ({ path: '/v1/verify', body: { key: keys[i % KEYS] } });
        const quiet = await waitQuiet(pids);
        if (!quiet.met) console.log(`  (the machine stayed busy: other work used ${cores(quiet.other)} cores after ${QUIET_WAIT_MS / 1000} s)`);
        const cacheBefore = await cacheCounters(ports);
        const r = await drive({ ports, pids, callers: phase.callers, warmupMs: WARMUP_MS, measureMs: MEASURE_MS, request });
        const cache = diffCounters(cacheBefore, await cacheCounters(ports));
        const row = { n, phase: phase.name, callers: phase.callers, ...r, cache };
        if (phase.charges) {
          chargesOk += r.okTotal;
          chargesFailed += r.sentTotal - r.okTotal;
          row.check = await ledgerCheck(pool, chargesOk, chargesFailed);
        }
        rows.push(row);
        const base = rows.find((x) => x.n === INSTANCES[0] && x.phase === row.phase && x.callers === row.callers);
        row.scale = row.rps / base.rps;
        const c = r.cpu;
        console.log(
          `N=${n} ${row.phase} x${row.callers}: ${fmt(r.rps)}/s (${row.scale.toFixed(2)}x), p50 ${ms(r.p50)} / p99 ${ms(r.p99)} ms, ` +
            `${r.errors} errors; cores: client ${cores(c.client)}, instances ${cores(c.servers)}, PostgreSQL ${cores(c.postgres)}, ` +
            `other ${cores(c.other)}, idle ${cores(c.idle)}${row.check ? `; ${row.check.text}` : ''}`,
        );
        console.log(`  key cache over the phase (all instances): ${fmt(cache.hits)} hits, ${fmt(cache.misses)} misses, ${fmt(cache.invalidations)} invalidations`);
        if (r.firstError) console.log(`  first error: ${r.firstError}`);
      }
    } catch (err) {
      for (const x of instances) console.error(`instance on port ${x.port} said:\n${x.output()}`);
      throw err;
    } finally {
      await Promise.all(instances.map(stopInstance));
    }
  }

  const audit = await ak.audit();
  const auditText = audit.ok
    ? `audit ok: ${audit.keysChecked} keys' counters equal their ledger`
    : `audit FAILED: ${audit.mismatches.length} key and ${audit.accountMismatches.length} account mismatches`;
  if (!audit.ok) failures.push(auditText);
  await ak.close();
  await pool.end();

  printTable(rows);
  console.log(`\n${auditText}.`);
  if (failures.length) {
    console.log(`\nFAILED: ${failures.join('; ')}`);
    process.exitCode = 1;
  }
}

const CACHE_COUNTERS = { hits: 'agentkey_cache_hits_total', misses: 'agentkey_cache_misses_total', invalidations: 'agentkey_cache_invalidations_total' };

/** The key cache's counters, summed over the instances' GET /metrics (warm-up included). */
async function cacheCounters(ports) {
  const sum = { hits: 0, misses: 0, invalidations: 0 };
  for (const port of ports) {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    for (const [field, name] of Object.entries(CACHE_COUNTERS)) {
      const line = text.split('\n').find((l) => l.startsWith(`${name} `));
      sum[field] += line ? Number(line.split(' ')[1]) : 0;
    }
  }
  return sum;
}
const diffCounters = (a, b) => Object.fromEntries(Object.keys(a).map((k) => [k, b[k] - a[k]]));

/**
 * Other engineers' builds and tests share this machine: waits until, over one second, the
 * processes that are neither this one, the instances nor PostgreSQL use under QUIET_CORES.
 */
async function waitQuiet(pids) {
  const deadline = Date.now() + QUIET_WAIT_MS;
  let other = 0;
  do {
    const a = cpuSnapshot(pids);
    await new Promise((r) => setTimeout(r, 1000));
    ({ other } = cpuSpent(a, cpuSnapshot(pids)));
    if (other < QUIET_CORES) return { met: true, other };
  } while (Date.now() < deadline);
  return { met: false, other };
}

/**
 * The ledger's charges against what the client saw: every 2xx charge is a 1-cent row. A charge
 * answered otherwise may have landed all the same (a 503 after the database took it), so
 * with failures the ledger may hold up to that many more.
 */
async function ledgerCheck(pool, ok, failed) {
  const { rows } = await pool.query(`SELECT count(*)::int AS n, COALESCE(sum(amount_micros), 0)::text AS micros FROM ${LEDGER} WHERE kind = 'charge'`);
  const cents = Number(BigInt(rows[0].micros) / 10_000n);
  const exact = Number(BigInt(rows[0].micros) % 10_000n) === 0;
  const good = exact && cents >= ok && cents <= ok + failed;
  const text = good
    ? `ledger ok: ${fmt(cents)} cents = ${fmt(ok)} charges answered 2xx${failed ? ` (+${failed} failed)` : ''}`
    : `ledger MISMATCH: ${rows[0].micros} micros for ${ok} charges answered 2xx and ${failed} failed`;
  if (!good) failures.push(text);
  return { good, text };
}

function printTable(rows) {
  console.log('\n| N | phase | callers | req/s | vs N=1 | p50 / p99 ms | errors | CPU cores: client / instances / PostgreSQL / other / idle |');
  console.log('|---:|---|---:|---:|---:|---:|---:|---|');
  for (const r of rows) {
    const c = r.cpu;
    console.log(
      `| ${r.n} | ${r.phase} | ${r.callers} | ${fmt(r.rps)} | ${r.scale.toFixed(2)}x | ${ms(r.p50)} / ${ms(r.p99)} | ${r.errors} | ` +
        `${cores(c.client)} / ${cores(c.servers)} / ${cores(c.postgres)} / ${cores(c.other)} / ${cores(c.idle)} |`,
    );
  }
  const checks = rows.filter((r) => r.check);
  console.log(`\nLedger checks: ${checks.every((r) => r.check.good) ? `all ${checks.length} passed` : 'FAILED'}; last: ${checks.at(-1)?.check.text ?? 'none'}.`);
}

main().catch((err) => {
  console.error(err);
  killAll();
  process.exit(1);
});
