/**
 * Telling a connection pooler (PgBouncer, Supavisor, PgCat, RDS Proxy...) from a direct
 * connection. A server answers a new connection with its backend's process id (the key
 * for cancelling queries); a pooler answers with one of its own making, since the client
 * has no backend of its own. So a connection whose announced process id is not the
 * backend's `pg_backend_pid()` goes through a pooler.
 *
 * Why it matters: in transaction pooling, session state (LISTEN, session advisory locks,
 * SET, named prepared statements) is lost between transactions without an error. agentkey
 * keeps none on pooled connections; it only listens for key changes, which needs a
 * direct connection (`directUrl`).
 */

/** The part of a node-postgres Client this reads. */
export interface ConnectionLike {
  /** Set by node-postgres from the server's BackendKeyData message. */
  processID?: number | null;
  query(text: string): Promise<{ rows: Array<Record<string, unknown>> }>;
}

/** Whether `client` goes through a pooler; null when it cannot be told (the driver does not say). */
export async function behindPooler(client: ConnectionLike): Promise<boolean | null> {
  const announced = client.processID;
  if (typeof announced !== 'number') return null;
  const { rows } = await client.query('SELECT pg_backend_pid() AS pid');
  return Number(rows[0]?.pid) !== announced;
}

interface PoolWithConnect {
  connect(): Promise<ConnectionLike & { release(err?: Error | boolean): void }>;
}

/**
 * Whether connections of `pool` go through a pooler: true, false, or null for a database
 * without connections of its own to look at (PGlite) or a driver that does not say.
 * Throws what connecting throws.
 */
export async function detectPooler(pool: unknown): Promise<boolean | null> {
  const p = pool as Partial<PoolWithConnect> | null;
  // PGlite (no connect()) runs in this process: nothing sits between.
  if (!p || typeof p.connect !== 'function' || typeof (pool as { transaction?: unknown }).transaction === 'function') return null;
  const client = await p.connect();
  try {
    return await behindPooler(client);
  } finally {
    client.release();
  }
}
