// Whether the database is sharded by account (it has the citus extension). Then the spend
// and rate functions are called once per account (each call on that account's shard); on
// one PostgreSQL, once for a batch whatever its accounts. Asked once per database handle.
import type { Db } from './db.js';

const asked = new WeakMap<Db, Promise<boolean>>();

/**
 * Whether `db` is sharded by account. An ask that fails is asked again next time; its
 * callers go on as on one PostgreSQL (on a sharded database their call then fails, having
 * written nothing: a row lock over several shards is refused there).
 */
export function shardedByAccount(db: Db): Promise<boolean> {
  let known = asked.get(db);
  if (!known) {
    known = db
      .query<{ citus: boolean }>(`SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS citus`)
      .then((rows) => rows[0]?.citus === true)
      .catch(() => {
        asked.delete(db);
        return false;
      });
    asked.set(db, known);
  }
  return known;
}
