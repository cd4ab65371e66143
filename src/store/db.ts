import { toMicros } from '../money.js';
import { AgentKeyError } from '../errors.js';

export type Row = Record<string, unknown>;

/**
 * The driver seam: everything agentkey asks of a database. Every call is bounded: past
 * `timeoutMs` it rejects with `storage_timeout` (a transaction: each of its statements,
 * or `timeoutMs` given to it).
 */
export interface Db {
  readonly timeoutMs: number;
  query<R = Row>(text: string, params?: readonly unknown[]): Promise<R[]>;
  transaction<T>(fn: (tx: Db) => Promise<T>, timeoutMs?: number): Promise<T>;
}

/** How long agentkey waits on the database by default, in ms (the `timeoutMs` option). */
export const DEFAULT_TIMEOUT_MS = 5_000;

/**
 * How long the database itself may wait for a lock within a bound of `timeoutMs`: a little
 * less, so that a lock wait ends in the database (a definite "nothing was done") before
 * the client gives up on the call (after which its outcome is unknown).
 */
export function lockWaitMs(timeoutMs: number): number {
  return Math.max(1, timeoutMs - Math.min(250, Math.floor(timeoutMs / 5)));
}

/** `lockWaitMs` of a Db as a setting's text ('4750ms'). */
export function lockWaitSetting(db: Pick<Db, 'timeoutMs'>): string {
  return `${lockWaitMs(db.timeoutMs)}ms`;
}

/**
 * A FROM item that bounds every lock wait of the statement it is in by the setting in
 * parameter `param` (see lockWaitSetting), set before the statement's own work runs: a
 * subquery with a volatile output is never merged into its parent, and rows are locked
 * above the scans that feed them. Local to the statement's transaction.
 */
export function lockBound(param: string): string {
  return `(SELECT set_config('lock_timeout', ${param}::text, true)) AS agentkey_bound`;
}

/** The error of a call the database did not answer in time. */
export function storageTimeout(ms: number): AgentKeyError {
  return new AgentKeyError(
    'storage_timeout',
    `The database did not answer within ${ms} ms (timeoutMs); the call may or may not have taken effect, so retry it with the same idempotency key.`,
  );
}

/** PostgreSQL's answers to a wait it gave up: lock_not_available (lock_timeout) and query_canceled (statement_timeout). */
export function isDatabaseTimeout(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === '55P03' || code === '57014';
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
  on?(event: 'error', listener: (err: Error) => void): unknown;
  off?(event: 'error', listener: (err: Error) => void): unknown;
}

/**
 * A checked-out client has no 'error' listener (the pool only watches idle ones), so a
 * connection lost while agentkey holds it (a server restart, a terminated backend) would
 * be an uncaught error that ends the process. While agentkey holds a client it listens;
 * the call in flight rejects on its own, and the client goes back with that error.
 */
function guarded(client: PgClientLike): PgClientLike {
  const ignore = () => {};
  client.on?.('error', ignore);
  return {
    query: (text, values) => client.query(text, values),
    release: (err) => {
      client.off?.('error', ignore);
      client.release(err);
    },
  };
}

/** What agentkey needs of a PGlite instance. */
export interface PGliteLike {
  query<R>(text: string, params?: unknown[]): Promise<{ rows: R[] }>;
  transaction<T>(fn: (tx: { query<R>(text: string, params?: unknown[]): Promise<{ rows: R[] }> }) => Promise<T>): Promise<T>;
}

export type PoolLike = PgPoolLike | PGliteLike;

const INT8_OID = 20;

/**
 * node-postgres returns BIGINT as a string and PGlite as a number (a bigint past 2^53).
 * Both adapters hand back a number while it is a safe integer (ids always are, amounts
 * nearly always) and a bigint beyond, so a total past 2^53 micro-dollars stays exact.
 * Done per result from its field types, never by changing the user's pool.
 */
function normaliseInt8(rows: Row[], fields: readonly { name: string; dataTypeID: number }[] | undefined): Row[] {
  const int8 = fields?.filter((f) => f.dataTypeID === INT8_OID).map((f) => f.name) ?? [];
  if (int8.length === 0) return rows;
  for (const row of rows) {
    for (const name of int8) if (row[name] != null) row[name] = toMicros(row[name]);
  }
  return rows;
}

/** Wraps a node-postgres Pool or a PGlite instance in the driver seam, every call bounded by `timeoutMs`. */
export function toDb(pool: unknown, timeoutMs = DEFAULT_TIMEOUT_MS): Db {
  if (isPgPool(pool)) return pgDb(pool, timeoutMs);
  if (isPGlite(pool)) return pgliteDb(pool, timeoutMs);
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

/**
 * Settles with `work`, or rejects with storage_timeout after `ms` (then `expired` runs).
 * The timer never keeps the process alive.
 */
function within<T>(ms: number, work: Promise<T>, expired: () => void = () => {}, bound = ms): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(storageTimeout(bound));
      expired();
    }, Math.max(0, ms));
    timer.unref?.();
    work.then(
      (out) => {
        clearTimeout(timer);
        resolve(out);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** A client that did not answer in time is given back with an error, so the pool destroys it. */
const ABANDONED = new Error('agentkey: the database did not answer within timeoutMs; this connection is discarded');

/**
 * node-postgres: each call runs on a client of its own (as `pool.query` does), so a client
 * whose server stopped answering (a hung backend, a black-holed network path) can be
 * thrown away when its time is up instead of being handed to the next call. Waiting for a
 * free client counts towards the bound. The pool's own settings are never changed.
 */
function pgDb(pool: PgPoolLike, timeoutMs: number): Db {
  const run = async (client: PgClientLike, text: string, params: readonly unknown[]) => {
    const result = await client.query(text, params as unknown[]);
    return normaliseInt8(result.rows, result.fields);
  };
  /** A client within `ms` (one that arrives later goes straight back to the pool). */
  const connect = (ms: number) => {
    let late = false;
    const connecting = Promise.resolve().then(() => pool.connect()).then(guarded);
    connecting.then((c) => late && c.release(), () => {});
    return within(ms, connecting, () => (late = true));
  };
  return {
    timeoutMs,
    async query(text, params = []) {
      const started = Date.now();
      const client = await connect(timeoutMs);
      let abandoned = false;
      try {
        const left = timeoutMs - (Date.now() - started);
        const rows = await within(left, run(client, text, params), () => {
          abandoned = true;
          client.release(ABANDONED);
        }, timeoutMs);
        client.release();
        return rows as never;
      } catch (err) {
        // An error from the server leaves the connection usable; any other may not.
        if (!abandoned) client.release(typeof (err as { code?: unknown } | null)?.code === 'string' ? undefined : (err as Error));
        throw err;
      }
    },
    async transaction(fn, ms = timeoutMs) {
      const client = await connect(ms);
      let abandoned = false;
      const tx: Db = {
        timeoutMs: ms,
        query: ((text: string, params: readonly unknown[] = []) => {
          if (abandoned) return Promise.reject(storageTimeout(ms));
          return within(ms, run(client, text, params), () => {
            abandoned = true;
            client.release(ABANDONED);
          });
        }) as Db['query'],
        transaction: (inner) => inner(tx),
      };
      try {
        await tx.query('BEGIN');
        // The database ends a lock wait or a statement past the bound itself, and rolls back.
        const wait = lockWaitSetting(tx);
        await tx.query(`SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)`, [wait]);
        const out = await fn(tx);
        await tx.query('COMMIT');
        client.release();
        return out;
      } catch (err) {
        if (!abandoned) {
          await tx.query('ROLLBACK').then(
            () => client.release(),
            (rollbackErr: Error) => abandoned || client.release(rollbackErr),
          );
        }
        throw err;
      }
    },
  };
}

/**
 * PGlite runs in this process on one connection: nothing else can hold a lock it waits
 * for, and a statement cannot be interrupted. A call past the bound rejects with
 * storage_timeout, but the statement still runs to its end (and takes effect) in the
 * background, and calls queued behind it wait for it.
 */
function pgliteDb(pg: PGliteLike, timeoutMs: number): Db {
  const over = (client: Pick<PGliteLike, 'query'>, ms: number): Db['query'] => async (text, params = []) => {
    const result = await within(ms, client.query<Row>(text, params as unknown[]));
    return normaliseInt8(result.rows, (result as { fields?: { name: string; dataTypeID: number }[] }).fields) as never;
  };
  return {
    timeoutMs,
    query: over(pg, timeoutMs),
    transaction(fn, ms = timeoutMs) {
      return pg.transaction((client) => {
        const tx: Db = { timeoutMs: ms, query: over(client, ms), transaction: (inner) => inner(tx) };
        return fn(tx);
      });
    },
  };
}
