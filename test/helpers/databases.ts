import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';
import { afterAll, beforeAll, describe, inject } from 'vitest';
import { AgentKey, type AgentKeyOptions } from '../../src/index.js';

export type DialectName = 'postgres' | 'pglite';

/** What a test gets for one database: the raw handle, a query helper and fresh AgentKeys. */
export interface TestDb {
  name: DialectName;
  /** The pool handed to AgentKey: a pg Pool or the PGlite instance. */
  pool: pg.Pool | PGlite;
  query<R = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>;
  /** A migrated AgentKey on a table of its own. */
  agentKey(options?: Partial<AgentKeyOptions>): Promise<AgentKey>;
  /** A table name no other test uses. */
  freshTable(): string;
  /** Options for a second, independent connection to the same database (postgres only; through the pooler in a pooled run). */
  url?: string;
  /** The database's direct URL in a pooled run (AGENTKEY_TEST_POOLER=pgbouncer), for `directUrl`; undefined otherwise. */
  directUrl?: string;
}

let dbCounter = 0;
let tableCounter = 0;
let nameCounter = 0;

/** A new name no other test of the run uses: `${prefix}_<process id>_<n>` (for account ids and the like). */
export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${++nameCounter}`;
}

/**
 * Runs `suite` once per database: a real PostgreSQL (a fresh database per file) and
 * PGlite (one in-memory instance per file). Set AGENTKEY_TEST_DB=postgres|pglite for one.
 */
export function forEachDatabase(suite: (getDb: () => TestDb) => void, only?: DialectName[]): void {
  const wanted = (process.env.AGENTKEY_TEST_DB?.split(',') as DialectName[] | undefined) ?? ['postgres', 'pglite'];
  for (const name of (only ?? ['postgres', 'pglite']).filter((n) => wanted.includes(n))) {
    describe(name, () => {
      let current: TestDb | undefined;
      beforeAll(async () => {
        current = name === 'postgres' ? await postgresDb() : await pgliteDb();
      }, 60_000);
      afterAll(async () => {
        await (current as TestDb & { close(): Promise<void> })?.close();
      });
      suite(() => {
        if (!current) throw new Error('database not ready');
        return current;
      });
    });
  }
}

function makeTestDb(name: DialectName, pool: pg.Pool | PGlite, query: TestDb['query'], close: () => Promise<void>, url?: string, directUrl?: string) {
  const freshTable = () => `t${process.pid}_${++tableCounter}`;
  return {
    name,
    pool,
    query,
    url,
    ...(directUrl ? { directUrl } : {}),
    freshTable,
    close,
    async agentKey(options: Partial<AgentKeyOptions> = {}) {
      const ak = new AgentKey({ pool, tableName: freshTable(), ...(directUrl && options.pool === undefined ? { directUrl } : {}), ...options });
      await ak.migrate();
      return ak;
    },
  };
}

async function postgresDb(): Promise<TestDb> {
  const adminUrl = inject('pgUrl');
  const dbName = `agentkey_test_${process.pid}_${++dbCounter}_${Date.now() % 100000}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  await admin.end();
  const direct = withDatabase(adminUrl, dbName);
  // A pooled run (AGENTKEY_TEST_POOLER=pgbouncer): everything but the listener goes through PgBouncer.
  const pooledUrl = inject('pgPooledUrl');
  const url = pooledUrl ? withDatabase(pooledUrl, dbName) : direct;
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  const query: TestDb['query'] = async (text, params) => (await pool.query(text, params)).rows;
  return makeTestDb('postgres', pool, query, () => pool.end(), url, pooledUrl ? direct : undefined);
}

async function pgliteDb(): Promise<TestDb> {
  const db = await PGlite.create();
  const query: TestDb['query'] = async (text, params) => (await db.query(text, params)).rows as never;
  return makeTestDb('pglite', db, query, () => db.close());
}

export function withDatabase(url: string, dbName: string): string {
  const u = new URL(url);
  u.pathname = `/${dbName}`;
  return u.toString();
}
