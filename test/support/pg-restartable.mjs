// A throwaway PostgreSQL that a test may stop and start again on the same data directory and
// port, for the fault suite, in a process of its own (see embedded-postgres.mjs). It prints one
// JSON line with its URL, then takes one JSON command per line on stdin and answers each with
// one JSON line on stdout:
//   {"cmd":"restart","mode":"immediate"|"fast","downMs":n}
//       stops the server (immediate: SIGQUIT, no checkpoint, crash recovery at the next start;
//       fast: SIGINT, in-flight transactions rolled back), waits downMs, starts it again:
//       {"restarted":true,"stoppedAt":ms,"startedAt":ms} (epoch ms: stopped = the old server
//       had exited, started = the new one accepts connections)
//   {"cmd":"pid"} -> {"pid":n}: the postmaster's process id
// Stops the server, removes its files and exits when stdin closes or on SIGTERM/SIGINT.
import readline from 'node:readline';
import { startEmbeddedPostgres } from './embedded-postgres.mjs';

const say = (message) => process.stdout.write(JSON.stringify(message) + '\n');

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

// Kept across restarts (persistent); removed at the end.
const { pg, url, stop } = await startEmbeddedPostgres({
  prefix: 'agentkey-pg-faults',
  persistent: true,
  flags: ['-c', 'max_connections=200', '-c', 'fsync=off'],
});
say({ url });

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
