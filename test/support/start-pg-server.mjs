// Starts pg-server.mjs as a child process and waits for the URL it prints: for the test run
// (test/global-setup.ts) and the benchmark (bench/run.mjs).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Spawns test/support/pg-server.mjs with `env` and resolves with the child and its URL. */
export function startPgServer(env = process.env) {
  const script = fileURLToPath(new URL('./pg-server.mjs', import.meta.url));
  const child = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'inherit'], env });
  return new Promise((resolve, reject) => {
    let buffer = '';
    child.once('exit', (code) => reject(new Error(`the PostgreSQL server exited early (code ${code})`)));
    child.stdout.on('data', (chunk) => {
      buffer += chunk.toString();
      const line = buffer.split('\n')[0];
      if (!buffer.includes('\n') || !line) return;
      const message = JSON.parse(line);
      if (message.url) resolve({ child, url: message.url });
      else reject(new Error(`the PostgreSQL server failed: ${message.error}`));
    });
  });
}

/** Closes the server's standard input (it stops and removes its files) and waits until it has exited. */
export function stopPgServer(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.stdin.end();
  });
}
