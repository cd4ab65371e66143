import type { Db } from './db.js';

/**
 * Who makes the changes of a transaction, as the event log records them: a process using
 * agentkey ('library'), the service's admin key ('admin'), the CLI ('cli'), the self-serve
 * signup route ('signup'), or a key acting on the keys under it through self-serve
 * ('key:<id>'). An edit in SQL sets none and is
 * recorded as 'sql' (sql/functions/event_actor.sql reads the setting).
 */
export type Actor = 'library' | 'admin' | 'cli' | 'signup' | `key:${number}`;

/** Sets the actor for the rest of transaction `tx` (set_config local to it: safe behind a transaction pooler). */
export async function actAs(tx: Db, actor: Actor): Promise<void> {
  await tx.query(`SELECT set_config('agentkey.actor', $1, true)`, [actor]);
}
