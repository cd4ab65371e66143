// `npm run test:pooled` (the second half of `npm test`): the database tests named below run
// once more with every connection through PgBouncer in transaction mode
// (AGENTKEY_TEST_POOLER=pgbouncer: test/global-setup.ts starts it in front of the test
// PostgreSQL; AgentKeys made by the helpers listen on the direct URL). On PostgreSQL only:
// PGlite has no pooler. A representative subset, to keep CI within its time: every
// spending path, idempotency, trees, windows, rate limits, events, webhooks, migrations,
// the cache's listener, and several processes and service instances at once.
// Extra arguments go to vitest (e.g. a single file).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pgbouncerBinary } from './pgbouncer.mjs';

export const POOLED_FILES = [
  'test/charges.test.ts',
  'test/holds.test.ts',
  'test/idempotency.test.ts',
  'test/ledger.test.ts',
  'test/big-totals.test.ts',
  'test/batch-property.test.ts',
  'test/trees.test.ts',
  'test/tree-budgets.test.ts',
  'test/windows.test.ts',
  'test/periods.test.ts',
  'test/rate-limits.test.ts',
  'test/rate-limits-processes.test.ts',
  'test/keys.test.ts',
  'test/update.test.ts',
  'test/rotate.test.ts',
  'test/subjects.test.ts',
  'test/events.test.ts',
  'test/outbox.test.ts',
  'test/webhooks.test.ts',
  'test/webhooks-processes.test.ts',
  'test/cache-listen.test.ts',
  'test/cache-processes.test.ts',
  'test/spend-processes.test.ts',
  'test/store/migrate-processes.test.ts',
  'test/store/migrate-fresh.test.ts',
  'test/server/reservations.test.ts',
  'test/express-hold.test.ts',
  'test/server-instances.test.ts',
  'test/key-locks.test.ts',
  'test/store/citus-constraints.test.ts',
  'test/store/rate-take.test.ts',
  'test/store/routing.test.ts',
];

const root = fileURLToPath(new URL('../..', import.meta.url));
if (!pgbouncerBinary()) {
  console.error('test:pooled needs pgbouncer (apt-get install -y pgbouncer; .ci/run installs it).');
  process.exit(1);
}
const extra = process.argv.slice(2);
const child = spawn(process.execPath, [path.join(root, 'node_modules/vitest/vitest.mjs'), 'run', ...(extra.length > 0 ? extra : POOLED_FILES)], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, AGENTKEY_TEST_POOLER: 'pgbouncer', AGENTKEY_TEST_DB: 'postgres' },
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
