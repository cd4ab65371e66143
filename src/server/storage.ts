import fs from 'node:fs';
import path from 'node:path';
import type { PoolLike } from '../store/db.js';

/** Where the service and the CLI keep their data: embedded PGlite in a directory, or PostgreSQL. */
export interface Storage {
  kind: 'pglite' | 'postgres';
  /** The data directory, or the database URL without its password. */
  where: string;
  /** What AgentKey is given. */
  pool: PoolLike;
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
  if (options.databaseUrl) return openPostgres(options.databaseUrl);
  return openPglite(path.resolve(options.dataDir ?? './.agentkey'), options.create ?? true);
}

/** The embedded database's own directory, inside the data directory. */
const PGDATA = 'pgdata';

async function openPostgres(url: string): Promise<Storage> {
  let shown: string;
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    shown = u.toString();
  } catch {
    throw new StartupError('DATABASE_URL is not a valid URL (postgres://user:password@host:5432/database).');
  }
  const { default: pg } = await import('pg');
  // A server that accepts connections but never answers must not hang the service or the CLI.
  const pool = new pg.Pool({ connectionString: url, max: 10, connectionTimeoutMillis: 10_000 });
  // An idle client that loses its server must not crash the process; the next query reports it.
  pool.on('error', () => {});
  try {
    await pool.query('SELECT 1');
  } catch (err) {
    await pool.end().catch(() => {});
    throw new StartupError(`Could not connect to PostgreSQL at ${shown}: ${(err as Error).message}.`);
  }
  return {
    kind: 'postgres',
    where: shown,
    pool,
    query: async (text, params) => (await pool.query(text, params)).rows,
    ping: async () => void (await pool.query('SELECT 1')),
    close: () => pool.end(),
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
