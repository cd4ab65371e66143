import fs from 'node:fs';
import { HEARTBEAT_SQL } from '../../src/store/listen.js';

/**
 * Real faults on real PostgreSQL server processes: the backend of a connection stopped
 * with SIGSTOP goes silent (no error, no closed socket), as a hung server or a
 * black-holed network path would. Only for the server the tests started on this machine.
 */

type Query = <R = Record<string, unknown>>(text: string, params?: unknown[]) => Promise<R[]>;

/**
 * The backends of this database's listening connections (whose last statement was a
 * LISTEN or the listener's heartbeat), other than the one asking. A stopped backend still
 * shows, with the last statement it received.
 */
export async function listenerPids(query: Query): Promise<number[]> {
  const rows = await query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND (query LIKE 'LISTEN %' OR query = $1)
     ORDER BY pid`,
    [HEARTBEAT_SQL],
  );
  return rows.map((r) => Number(r.pid));
}

/** True when `pid` is a PostgreSQL process on this machine (so it can be signalled). */
export function isLocalPostgres(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'postgres';
  } catch {
    return false;
  }
}

/**
 * Stops a backend with SIGSTOP. Returns `resume` (SIGCONT), which a test must call in a
 * `finally`; calling it twice is harmless.
 */
export function stopBackend(pid: number): () => void {
  if (!isLocalPostgres(pid)) throw new Error(`pid ${pid} is not a PostgreSQL process on this machine`);
  process.kill(pid, 'SIGSTOP');
  return () => {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // Already gone.
    }
  };
}
