import fs from 'node:fs';
import path from 'node:path';
import type { PoolLike } from '../store/db.js';
import { detectPooler } from '../store/pooler.js';

/** Where the service and the CLI keep their data: embedded PGlite in a directory, or PostgreSQL. */
export interface Storage {
  kind: 'pglite' | 'postgres';
  /** The data directory, or the database URL without its password. */
  where: string;
  /** What AgentKey is given. */
  pool: PoolLike;
  /** How PostgreSQL is reached (null for PGlite): whether through a pooler, and the direct and replica URLs given. */
  connection: Connection | null;
  query<R = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>;
  /** Throws when the database does not answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface StorageOptions {
  /** Use PostgreSQL at this URL. */
  databaseUrl?: string | undefined;
  /** Otherwise embedded PGlite persisted here. Default './.agentkey'. */
  dataDir?: string | undefined;
  /**
   * A direct (not pooled) URL of the same database, for listening to key changes when
   * `databaseUrl` goes through a pooler (AGENTKEY_DIRECT_URL).
   */
  directUrl?: string | undefined;
  /** A read replica's URL, for validations the cache cannot answer (AGENTKEY_READ_URL). */
  readUrl?: string | undefined;
  /**
   * Create the embedded database when `dataDir` holds none. Default true; false (for
   * commands that only read) refuses a directory without one, and creates nothing.
   */
  create?: boolean | undefined;
}

/** A mistake in how the service or CLI was started: shown as one line, never a stack trace. */
export class StartupError extends Error {
  override name = 'StartupError';
}

/**
 * Opens the database the service and the CLI share: PostgreSQL when `databaseUrl` is set,
 * else PGlite in `dataDir`. A PGlite directory is opened by one process at a time (PGlite
 * is single-process); a lock file says which, and a stale one (its process gone) is taken over.
 */
export async function openStorage(options: StorageOptions): Promise<Storage> {
  if (options.databaseUrl) return openPostgres(options.databaseUrl, options);
  for (const [given, name] of [
    [options.directUrl, 'AGENTKEY_DIRECT_URL (--direct-url)'],
    [options.readUrl, 'AGENTKEY_READ_URL (--read-url)'],
  ] as const) {
    if (given) throw new StartupError(`${name} is for PostgreSQL: set DATABASE_URL too, or unset it for the embedded database.`);
  }
  return openPglite(path.resolve(options.dataDir ?? './.agentkey'), options.create ?? true);
}

/** How the service reaches PostgreSQL, found at start. */
export interface Connection {
  /** DATABASE_URL goes through a connection pooler (see store/pooler.ts); null: could not tell. */
  pooled: boolean | null;
  /** Key changes are listened for on AGENTKEY_DIRECT_URL. */
  directUrl: string | undefined;
  /** Validations the cache cannot answer read this replica. */
  readPool: PoolLike | undefined;
  /** The cache's mode in a sentence, for the start-up log. */
  summary: string;
}

/** What the start-up log says of the connection: the mode the cache runs in, and why. */
export function connectionSummary(pooled: boolean | null, direct: boolean, replica: boolean): string {
  const reads = replica ? ' Validations the cache cannot answer read AGENTKEY_READ_URL (a replica); charges and every write go to DATABASE_URL.' : '';
  if (!pooled) return `PostgreSQL: a direct connection; the key cache hears changes by LISTEN/NOTIFY.${reads}`;
  if (direct) return `PostgreSQL: DATABASE_URL goes through a connection pooler, which is fine; the key cache hears changes by LISTEN on AGENTKEY_DIRECT_URL.${reads}`;
  return (
    'PostgreSQL: DATABASE_URL goes through a connection pooler and AGENTKEY_DIRECT_URL is not set, so key changes cannot be heard ' +
    '(LISTEN needs a session of its own). The key cache runs in its fallback: a validation is served from memory for at most 1 s, ' +
    `so a revocation made by another instance shows here within 1 s. Set AGENTKEY_DIRECT_URL to a direct URL of the same database for the full cache.${reads}`
  );
}

/** A URL with its password hidden, or a StartupError naming `what`. */
function shownUrl(url: string, what: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    throw new StartupError(`${what} is not a valid URL (postgres://user:password@host:5432/database).`);
  }
}

/** The embedded database's own directory, inside the data directory. */
const PGDATA = 'pgdata';

async function openPostgres(url: string, options: StorageOptions): Promise<Storage> {
  const shown = shownUrl(url, 'DATABASE_URL');
  const directShown = options.directUrl ? shownUrl(options.directUrl, 'AGENTKEY_DIRECT_URL') : '';
  const readShown = options.readUrl ? shownUrl(options.readUrl, 'AGENTKEY_READ_URL') : '';
  const { default: pg } = await import('pg');
  // A server that accepts connections but never answers must not hang the service or the CLI.
  const pool = new pg.Pool({ connectionString: url, max: 10, connectionTimeoutMillis: 10_000 });
  // An idle client that loses its server must not crash the process; the next query reports it.
  pool.on('error', () => {});
  let pooled: boolean | null;
  try {
    pooled = await detectPooler(pool);
  } catch (err) {
    await pool.end().catch(() => {});
    throw new StartupError(`Could not connect to PostgreSQL at ${shown}: ${(err as Error).message}.`);
  }
  const opened: Array<{ end(): Promise<void> }> = [pool];
  const fail = async (message: string): Promise<never> => {
    for (const p of opened) await p.end().catch(() => {});
    throw new StartupError(message);
  };
  if (options.directUrl) {
    // Checked now: a typo must not leave the cache in its fallback without a word.
    const direct = new pg.Pool({ connectionString: options.directUrl, max: 1, connectionTimeoutMillis: 10_000 });
    direct.on('error', () => {});
    const viaPooler = await detectPooler(direct).catch((err: Error) => err);
    await direct.end().catch(() => {});
    if (viaPooler instanceof Error) await fail(`Could not connect to AGENTKEY_DIRECT_URL ${directShown}: ${viaPooler.message}.`);
    if (viaPooler === true) await fail(`AGENTKEY_DIRECT_URL ${directShown} goes through a connection pooler too; give the database's direct URL (LISTEN needs a session of its own).`);
  }
  let readPool: InstanceType<typeof pg.Pool> | undefined;
  if (options.readUrl) {
    readPool = new pg.Pool({ connectionString: options.readUrl, max: 10, connectionTimeoutMillis: 10_000 });
    readPool.on('error', () => {});
    opened.push(readPool);
    await readPool.query('SELECT 1').catch((err: Error) => fail(`Could not connect to AGENTKEY_READ_URL ${readShown}: ${err.message}.`));
  }
  return {
    kind: 'postgres',
    where: shown,
    pool,
    connection: {
      pooled,
      directUrl: options.directUrl || undefined,
      readPool,
      summary: connectionSummary(pooled, !!options.directUrl, !!readPool),
    },
    query: async (text, params) => (await pool.query(text, params)).rows,
    ping: async () => void (await pool.query('SELECT 1')),
    close: async () => {
      await readPool?.end().catch(() => {});
      await pool.end();
    },
  };
}

async function openPglite(dir: string, create: boolean): Promise<Storage> {
  if (!create && !fs.existsSync(path.join(dir, PGDATA))) {
    throw new StartupError(`No agentkey database in ${dir}; check --data-dir (or AGENTKEY_DATA_DIR), or create one with \`agentkey migrate\`.`);
  }
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new StartupError(`Could not create the data directory ${dir}: ${(err as Error).message}.`);
  }
  const unlock = lock(path.join(dir, 'agentkey.lock'), dir);
  try {
    const { PGlite } = await import('@electric-sql/pglite');
    const db = await PGlite.create({ dataDir: path.join(dir, PGDATA) });
    return {
      kind: 'pglite',
      where: dir,
      pool: db,
      connection: null,
      query: async (text, params) => (await db.query(text, params)).rows as never,
      ping: async () => void (await db.query('SELECT 1')),
      close: async () => {
        try {
          await db.close();
        } finally {
          unlock();
        }
      },
    };
  } catch (err) {
    unlock();
    throw new StartupError(`Could not open the embedded database in ${dir}: ${(err as Error).message}.`);
  }
}

function lock(file: string, dir: string): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => {
        try {
          if (fs.readFileSync(file, 'utf8') === String(process.pid)) fs.unlinkSync(file);
        } catch {
          /* already gone */
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new StartupError(`Could not lock the data directory ${dir}: ${(err as Error).message}.`);
      }
      const pid = Number(fs.readFileSync(file, 'utf8'));
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new StartupError(
          `The data directory ${dir} is in use by another agentkey process (pid ${pid}); stop it first, or use its HTTP API, or set DATABASE_URL to share a PostgreSQL.`,
        );
      }
      fs.rmSync(file, { force: true });
    }
  }
  throw new StartupError(`Could not lock the data directory ${dir}; another process keeps taking it.`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
