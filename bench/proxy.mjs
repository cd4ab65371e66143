// `npm run bench -- --only proxy` (after `npm run build`): the LLM proxy's added latency and
// throughput. Non-streaming chat completions from a client process to a fake upstream process,
// directly and through the proxy (this process: createProxy on @hono/node-server, an AgentKey
// on the benchmark's PostgreSQL), at a fixed concurrency. Each proxied call is a real one: key
// check (cached), model allow-list, estimate, a hold in the database, the upstream call, and a
// commit of its usage after the answer. Prints the figures, then checks that every proxied call
// was committed exactly once at its cost.
import { spawn } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { serve } from '@hono/node-server';
import pg from 'pg';
import { AgentKey } from '../dist/index.js';
import { createProxy } from '../dist/proxy.js';
import { stubKeyStore } from './proxy-stub.mjs';

const URL_ = process.env.BENCH_DATABASE_URL;
const quick = process.argv.includes('--quick');
const SECONDS = quick ? 1 : 3;
const CONCURRENCY = [1, 16];
const ROUNDS = 2;
const UPSTREAM_KEY = 'sk-bench-operator-0123456789';
const here = (file) => fileURLToPath(new URL(file, import.meta.url));

/** Starts `script` as a process; resolves with it and the first JSON line it prints. */
function child(script, args = [], env = {}) {
  const proc = spawn(process.execPath, [script, ...args], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.once('exit', (code) => {
      if (!out.includes('\n')) reject(new Error(`${script} exited (code ${code}) before it answered`));
    });
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.includes('\n')) resolve({ proc, message: JSON.parse(out.split('\n')[0]) });
    });
  });
}

async function load(url, bearer, seconds, callers) {
  const { proc, message } = await child(here('./proxy-client.mjs'), [url, bearer, String(seconds), String(callers)]);
  proc.stdin.end();
  return message;
}

const pct = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
const fmt = (n) => Math.round(n).toLocaleString('en-US');

/**
 * The scenarios: an upstream that answers at once (the proxy's whole cost shows, the targets'
 * case), and ones that think 50 ms and 300 ms (a fast model's time to a short answer).
 */
const SCENARIOS = [
  { name: 'openai', title: 'Upstream answering at once', delayMs: 0, concurrency: CONCURRENCY },
  { name: 'slow', title: 'Upstream answering after 50 ms', delayMs: 50, concurrency: [16] },
  { name: 'model', title: 'Upstream answering after 300 ms', delayMs: 300, concurrency: [16] },
];

async function main() {
  const upstreams = {};
  const procs = [];
  for (const s of SCENARIOS) {
    const up = await child(here('./proxy-upstream.mjs'), [], { BENCH_UPSTREAM_KEY: UPSTREAM_KEY, BENCH_UPSTREAM_DELAY_MS: String(s.delayMs) });
    procs.push(up.proc);
    upstreams[s.name] = { flavor: 'openai', apiKey: UPSTREAM_KEY, baseUrl: `http://127.0.0.1:${up.message.port}` };
  }
  const pool = new pg.Pool({ connectionString: URL_, max: 10 });
  const ak = new AgentKey({ pool, tableName: `bench_proxy_${process.pid}` });
  await ak.migrate();
  const { key, id } = await ak.create({ accountId: 'acct_bench_proxy', scopes: ['proxy.chat'], budgetCents: 1_000_000 });
  const overheads = [];
  const holds = [];
  const proxy = createProxy(ak, {
    upstreams,
    observer: {
      overhead: (e) => {
        overheads.push(e.seconds * 1000);
        holds.push(e.holdSeconds * 1000);
      },
    },
  });
  const server = serve({ fetch: proxy.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => server.once('listening', resolve));
  const proxyBase = `http://127.0.0.1:${server.address().port}/proxy`;

  const { rows: version } = await pool.query(`SELECT current_setting('server_version') AS v, current_setting('fsync') AS fsync`);
  console.log(`agentkey proxy benchmark — ${new Date().toISOString()}${quick ? ' (quick)' : ''}`);
  console.log(`Machine: ${os.cpus()[0]?.model ?? 'unknown cpu'}, ${os.cpus().length} cores; Node ${process.version}; PostgreSQL ${version[0]?.v} (fsync ${version[0]?.fsync}).`);
  console.log('Client, proxy (with its AgentKey) and fake upstream are processes of their own; non-streaming chat completions over keep-alive connections.\n');

  let proxiedOk = 0;
  let failed = 0;
  const rows = [];
  for (const s of SCENARIOS) {
    const directUrl = `${upstreams[s.name].baseUrl}/v1/chat/completions`;
    const proxyUrl = `${proxyBase}/${s.name}/v1/chat/completions`;
    // Warm-up: connections, JIT, the key's cache entry and allow-list.
    for (const [url, bearer] of [[directUrl, UPSTREAM_KEY], [proxyUrl, key]]) {
      const r = await load(url, bearer, 1, 4);
      failed += r.failed;
      if (url === proxyUrl) proxiedOk += r.ops - r.failed;
    }
    for (const callers of s.concurrency) {
      const runs = { direct: [], proxied: [] };
      overheads.length = 0;
      holds.length = 0;
      for (let round = 0; round < ROUNDS; round++) {
        runs.direct.push(await load(directUrl, UPSTREAM_KEY, SECONDS, callers));
        const cpu = process.cpuUsage();
        const p = await load(proxyUrl, key, SECONDS, callers);
        const used = process.cpuUsage(cpu);
        p.cpuMs = (used.user + used.system) / 1000;
        runs.proxied.push(p);
        proxiedOk += p.ops - p.failed;
      }
      for (const r of [...runs.direct, ...runs.proxied]) failed += r.failed;
      const sum = (list) => {
        const ops = list.reduce((t, r) => t + r.ops, 0);
        const seconds = list.reduce((t, r) => t + r.seconds, 0);
        return { rate: ops / seconds, p50: list.reduce((t, r) => t + r.p50, 0) / list.length, p99: list.reduce((t, r) => t + r.p99, 0) / list.length };
      };
      const sorted = [...overheads].sort((a, b) => a - b);
      const held = [...holds].sort((a, b) => a - b);
      const rest = overheads.map((o, i) => o - holds[i]).sort((a, b) => a - b);
      const cpuPerCall = runs.proxied.reduce((t, r) => t + r.cpuMs, 0) / runs.proxied.reduce((t, r) => t + r.ops, 0);
      const row = { scenario: s.title, callers, d: sum(runs.direct), p: sum(runs.proxied), own50: pct(sorted, 0.5), own99: pct(sorted, 0.99), hold50: pct(held, 0.5), rest50: pct(rest, 0.5), cpuPerCall };
      rows.push(row);
      const { d, p } = row;
      console.log(`${s.title}, ${callers} concurrent caller${callers > 1 ? 's' : ''} (${ROUNDS} rounds of ${SECONDS} s each way, alternating):`);
      console.log(`  direct   ${fmt(d.rate).padStart(7)} req/s  p50 ${d.p50.toFixed(2).padStart(6)} ms  p99 ${d.p99.toFixed(2).padStart(6)} ms`);
      console.log(`  proxied  ${fmt(p.rate).padStart(7)} req/s  p50 ${p.p50.toFixed(2).padStart(6)} ms  p99 ${p.p99.toFixed(2).padStart(6)} ms`);
      console.log(`  added    p50 ${(p.p50 - d.p50).toFixed(2)} ms, p99 ${(p.p99 - d.p99).toFixed(2)} ms; throughput ${((100 * p.rate) / d.rate).toFixed(0)}% of direct`);
      console.log(`  in the proxy before the upstream call (body, key, estimate, hold): p50 ${row.own50.toFixed(2)} ms, p99 ${row.own99.toFixed(2)} ms`);
      console.log(`    of which waiting for the hold (the database): p50 ${row.hold50.toFixed(2)} ms; the rest: p50 ${row.rest50.toFixed(2)} ms`);
      console.log(`  the proxy process's CPU (proxy, AgentKey and its database client): ${cpuPerCall.toFixed(3)} ms a call\n`);
    }
  }

  console.log('| upstream | callers | direct req/s | direct p50 / p99 ms | proxied req/s | proxied p50 / p99 ms | added p50 / p99 ms | throughput | before upstream p50 / p99 ms | hold p50 ms | proxy CPU ms/call |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.scenario.replace('Upstream answering ', '')} | ${r.callers} | ${fmt(r.d.rate)} | ${r.d.p50.toFixed(2)} / ${r.d.p99.toFixed(2)} | ${fmt(r.p.rate)} | ${r.p.p50.toFixed(2)} / ${r.p.p99.toFixed(2)} | ${(r.p.p50 - r.d.p50).toFixed(2)} / ${(r.p.p99 - r.d.p99).toFixed(2)} | ${((100 * r.p.rate) / r.d.rate).toFixed(0)}% | ${r.own50.toFixed(2)} / ${r.own99.toFixed(2)} | ${r.hold50.toFixed(2)} | ${r.cpuPerCall.toFixed(3)} |`,
    );
  }
  // Diagnostic: the same proxy on a stand-in key store with no database (bench/proxy-stub.mjs),
  // against the upstream answering at once: the proxy's own cost, apart from the holds and commits.
  const stub = stubKeyStore();
  const bare = createProxy(stub, { upstreams: { openai: upstreams.openai } });
  const bareServer = serve({ fetch: bare.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => bareServer.once('listening', resolve));
  const bareUrl = `http://127.0.0.1:${bareServer.address().port}/proxy/openai/v1/chat/completions`;
  const directUrl = `${upstreams.openai.baseUrl}/v1/chat/completions`;
  failed += (await load(bareUrl, 'ak_stub', 1, 4)).failed;
  console.log('\nDiagnostic: the proxy on a stand-in key store without a database (upstream answering at once):');
  const diag = [];
  for (const callers of CONCURRENCY) {
    const d = [];
    const b = [];
    for (let round = 0; round < ROUNDS; round++) {
      d.push(await load(directUrl, UPSTREAM_KEY, SECONDS, callers));
      b.push(await load(bareUrl, 'ak_stub', SECONDS, callers));
    }
    for (const r of [...d, ...b]) failed += r.failed;
    const rate = (list) => list.reduce((t, r) => t + r.ops, 0) / list.reduce((t, r) => t + r.seconds, 0);
    const p50 = (list) => list.reduce((t, r) => t + r.p50, 0) / list.length;
    const p99 = (list) => list.reduce((t, r) => t + r.p99, 0) / list.length;
    diag.push({ callers, added50: p50(b) - p50(d), added99: p99(b) - p99(d), ratio: rate(b) / rate(d), direct: rate(d), bare: rate(b) });
    console.log(`  ${String(callers).padStart(2)} caller(s): direct ${fmt(rate(d))} req/s, proxied ${fmt(rate(b))} req/s (${((100 * rate(b)) / rate(d)).toFixed(0)}%); added p50 ${(p50(b) - p50(d)).toFixed(2)} ms, p99 ${(p99(b) - p99(d)).toFixed(2)} ms`);
  }
  bareServer.close();
  await bare.settled();

  const loaded = rows.find((r) => r.scenario === SCENARIOS[0].title && r.callers === 16);
  const added = loaded.p.p50 - loaded.d.p50;
  console.log(
    `\nTargets (upstream answering at once, 16 callers): added p50 ${added.toFixed(2)} ms (< 2 ms: ${added < 2 ? 'met' : 'NOT MET'}); ` +
      `throughput ${((100 * loaded.p.rate) / loaded.d.rate).toFixed(0)}% of direct (>= 70%: ${loaded.p.rate / loaded.d.rate >= 0.7 ? 'met' : 'NOT MET'}).`,
  );

  // Every proxied call committed once, at its cost; nothing held; the ledger matches the counters.
  server.close();
  await proxy.settled();
  const info = await ak.getKey(id);
  const commit = (await ak.ledger({ keyId: id, limit: 10 })).find((r) => r.kind === 'commit');
  const one = Math.round(Number(commit?.amountCents) * 10_000);
  const spent = Math.round(Number(info.spentCents) * 10_000);
  const audit = await ak.audit({ keyId: id });
  const checks = [
    [failed === 0, `every call answered 200 with its usage (${failed} did not)`],
    [Number(info.heldCents) === 0, `nothing held after the run (${info.heldCents} cents)`],
    [spent === proxiedOk * one, `spent = ${fmt(proxiedOk)} proxied calls x ${one / 10_000} cents (${Number(info.spentCents)} cents)`],
    [audit.ok, 'the ledger matches the counters'],
  ];
  for (const [ok, what] of checks) console.log(`${ok ? 'ok' : 'FAILED'}: ${what}`);
  for (const p of procs) p.stdin.end();
  await ak.close();
  await pool.end();
  if (checks.some(([ok]) => !ok)) process.exit(1);
}

await main();
