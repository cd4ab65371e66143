import pg from 'pg';

/**
 * A row lock held by another connection, as another service's transaction would hold it:
 * `BEGIN; SELECT ... FOR UPDATE` on one row, kept until `release()` (COMMIT). PostgreSQL only.
 */
export interface HeldLock {
  /** The backend that holds the lock. */
  pid: number;
  release(): Promise<void>;
}

export async function holdRowLock(url: string, table: string, where: string, params: unknown[] = []): Promise<HeldLock> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const { rows: me } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  await client.query('BEGIN');
  const { rowCount } = await client.query(`SELECT 1 FROM ${table} WHERE ${where} FOR UPDATE`, params);
  if (rowCount !== 1) {
    await client.end();
    throw new Error(`expected to lock one row of ${table} where ${where}; locked ${rowCount}`);
  }
  let released = false;
  return {
    pid: Number(me[0]!.pid),
    async release() {
      if (released) return;
      released = true;
      await client.query('COMMIT');
      await client.end();
    },
  };
}
