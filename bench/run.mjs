// `npm run bench`: bundles bench/bench.ts (it imports the library from src/, so it always
// measures the current code), starts a throwaway PostgreSQL the way the tests do
// (test/support/pg-server.mjs, in a process of its own), runs the benchmark against it with
// garbage collection exposed (for the heap figures), and stops the server.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'tsup';
import { startPgServer, stopPgServer } from '../test/support/start-pg-server.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const outDir = path.join(root, 'node_modules/.cache/agentkey-bench');
// `--only cluster` runs bench/cluster.mjs alone (on the built dist/: `npm run build` first):
// 1, 2 and 4 `agentkey serve` processes on this database. It is not part of the default run.
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt >= 0 ? process.argv[onlyAt + 1]?.toLowerCase() : undefined;
const clusterOnly = only === 'cluster';
if (!clusterOnly) await build({
  entry: { bench: path.join(root, 'bench/bench.ts') },
  outDir,
  format: ['esm'],
  platform: 'node',
  target: 'node20',
  config: false,
  dts: false,
  clean: true,
  silent: true,
  external: ['pg'],
  loader: { '.sql': 'text' },
});

let server = null;
let url = process.env.DATABASE_URL;
if (!url) {
  // Durable by default (fsync on, as in production); --fsync-off runs it as the tests do.
  const durable = process.argv.includes('--fsync-off') ? '0' : '1';
  ({ child: server, url } = await startPgServer({ ...process.env, AGENTKEY_PG_DURABLE: durable }));
}

// The LLM proxy's benchmark (bench/proxy.mjs, on the built dist/: `npm run build` first) runs
// after the others, or alone with `--only proxy`.
const proxyOnly = only === 'proxy';
const run = (script, node = []) =>
  new Promise((resolve) => {
    const child = spawn(process.execPath, [...(process.env.BENCH_PROFILE ? ['--cpu-prof', '--cpu-prof-dir=' + process.env.BENCH_PROFILE] : []), ...node, script, ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, BENCH_DATABASE_URL: url },
    });
    child.on('exit', (c) => resolve(c ?? 1));
  });
let code = proxyOnly || clusterOnly ? 0 : await run(path.join(outDir, 'bench.js'), ['--expose-gc']);
if (clusterOnly) {
  if (fs.existsSync(path.join(root, 'dist/cli.js'))) code = await run(path.join(root, 'bench/cluster.mjs'));
  else console.log('\nThe cluster benchmark needs the built package: run `npm run build`, then `npm run bench -- --only cluster`.');
}
if (code === 0 && (onlyAt < 0 || proxyOnly)) {
  if (fs.existsSync(path.join(root, 'dist/proxy.js'))) code = await run(path.join(root, 'bench/proxy.mjs'));
  else console.log('\nThe proxy benchmark needs the built package: run `npm run build`, then `npm run bench -- --only proxy`.');
}
if (server) await stopPgServer(server);
fs.rmSync(outDir, { recursive: true, force: true });
process.exit(code);
