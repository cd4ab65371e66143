import { AgentKeyError } from '../errors.js';

export type Row = Record<string, unknown>;

/** The driver seam: everything agentkey asks of a database. */
export interface Db {
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<R[]>;
  transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T>;
}

/** What agentkey needs of a node-postgres Pool (declared here so the core never imports `pg`). */
export interface PgPoolLike {
  query(text: string, values?: unknown[]): Promise<PgResult>;
  connect(): Promise<PgClientLike>;
}
interface PgResult {
  rows: Row[];
  fields?: { name: string; dataTypeID: number }[];
}
interface PgClientLike {
  query(text: string, values?: unknown[]): Promise<PgResult>;
  release(err?: Error | boolean): void;
}

/** What agentkey needs of a PGlite instance. */
export interface PGliteLike {
  query<R>(text: string, params?: unknown[]): Promise<{ rows: R[] }>;
  transaction<T>(fn: (tx: { query<R>(text: string, params?: unknown[]): Promise<{ rows: R[] }> }) => Promise<T>): Promise<T>;
}

export type PoolLike = PgPoolLike | PGliteLike;

const INT8_OID = 20;

/**
 * node-postgres returns BIGINT as a string and PGlite as a number; ids and
 * micro-dollar amounts are safe integers, so both adapters hand back numbers.
 * Done per result from its field types, never by changing the user's pool.
 */
function normaliseInt8(rows: Row[], fields: readonly { name: string; dataTypeID: number }[] | undefined): Row[] {
  const int8 = fields?.filter((f) => f.dataTypeID === INT8_OID).map((f) => f.name) ?? [];
  if (int8.length === 0) return rows;
  for (const row of rows) {
    for (const name of int8) if (row[name] != null) row[name] = Number(row[name]);
  }
  return rows;
}

/** Wraps a node-postgres Pool or a PGlite instance in the driver seam. */
export function toDb(pool: unknown): Db {
  if (isPgPool(pool)) return pgDb(pool);
  if (isPGlite(pool)) return pgliteDb(pool);
  throw new AgentKeyError('invalid_pool', 'pool must be a node-postgres Pool or a PGlite instance.');
}

function isPgPool(pool: unknown): pool is PgPoolLike {
  const p = pool as Partial<PgPoolLike & PGliteLike> | null;
  return !!p && typeof p.query === 'function' && typeof p.connect === 'function' && typeof p.transaction !== 'function';
}

function isPGlite(pool: unknown): pool is PGliteLike {
  const p = pool as Partial<PGliteLike> | null;
  return !!p && typeof p.query === 'function' && typeof p.transaction === 'function';
}

function pgDb(pool: PgPoolLike): Db {
  const over = (client: PgPoolLike | PgClientLike): Db['query'] => async (text, params = []) => {
    const result = await client.query(text, params as unknown[]);
    return normaliseInt8(result.rows, result.fields) as never;
  };
  return {
    query: over(pool),
    async transaction(fn) {
      const client = await pool.connect();
      const tx: Db = { query: over(client), transaction: (inner) => inner(tx) };
      try {
        await tx.query('BEGIN');
        const out = await fn(tx);
        await tx.query('COMMIT');
        client.release();
        return out;
      } catch (err) {
        await tx.query('ROLLBACK').then(
          () => client.release(),
          (rollbackErr: Error) => client.release(rollbackErr),
        );
        throw err;
      }
    },
  };
}

function pgliteDb(pg: PGliteLike): Db {
  const over = (client: Pick<PGliteLike, 'query'>): Db['query'] => async (text, params = []) => {
    const result = await client.query<Row>(text, params as unknown[]);
    return normaliseInt8(result.rows, (result as { fields?: { name: string; dataTypeID: number }[] }).fields) as never;
  };
  return {
    query: over(pg),
    transaction(fn) {
      return pg.transaction((client) => {
        const tx: Db = { query: over(client), transaction: (inner) => inner(tx) };
        return fn(tx);
      });
    },
  };
}
