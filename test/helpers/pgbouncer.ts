import pg from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import { startPgBouncer } from '../support/pgbouncer.mjs';
import { withDatabase } from './databases.js';

/**
 * PgBouncer in transaction mode in front of the run's PostgreSQL, for one test file
 * (started in beforeAll, stopped in afterAll), with a fresh database of the file's own.
 * `pooled` goes through PgBouncer; `direct` is the same database on the server.
 */
export function usePgBouncer(options: { poolSize?: number } = {}): () => { pooled: string; direct: string } {
  let bouncer: Awaited<ReturnType<typeof startPgBouncer>> | undefined;
  let urls: { pooled: string; direct: string } | undefined;
  beforeAll(async () => {
    const server = inject('pgUrl');
    const dbName = `agentkey_bouncer_${process.pid}_${Date.now() % 100000}`;
    const admin = new pg.Client({ connectionString: server });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${dbName}`);
    await admin.end();
    bouncer = await startPgBouncer(server, options);
    urls = { pooled: bouncer.url(dbName), direct: withDatabase(server, dbName) };
  }, 60_000);
  afterAll(async () => {
    await bouncer?.stop();
  });
  return () => {
    if (!urls) throw new Error('PgBouncer is not started yet');
    return urls;
  };
}
