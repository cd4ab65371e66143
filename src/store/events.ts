import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';
import { type LogPage, newestFirst } from './paging.js';

export type EventKind = 'created' | 'updated' | 'rotated' | 'revoked' | 'budget_set' | 'adjusted';

/** One row of the event log (sql/migrations/007_rotation_events.sql), as stored. */
export interface EventRow {
  id: number | string;
  key_id: number | string | null;
  account_id: string;
  kind: EventKind;
  actor: 'library' | 'admin' | 'cli' | 'signup' | 'key' | 'sql';
  actor_key_id: number | string | null;
  /** Per field (column names; budgets in micro-dollars as text): its value before and after. */
  changes: Record<string, { before?: unknown; after?: unknown }>;
  created_at: Date;
}

/** All SQL reading the event log; triggers and the spend function write it. */
export class EventStore {
  constructor(private readonly db: Db, private readonly t: TableNames) {}

  /** Events newest first. */
  async list(f: LogPage): Promise<EventRow[]> {
    return newestFirst<EventRow>(this.db, this.t.events, 'id, key_id, account_id, kind, actor, actor_key_id, changes, created_at', f);
  }
}
