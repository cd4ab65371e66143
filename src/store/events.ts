import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

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

export interface EventFilter {
  keyId: number | null;
  accountId: string | null;
  /** Only events with a smaller id (for paging). */
  before: number | null;
  limit: number;
}

/** All SQL reading the event log; triggers and the spend function write it. */
export class EventStore {
  constructor(private readonly db: Db, private readonly t: TableNames) {}

  /** Events newest first. */
  async list(f: EventFilter): Promise<EventRow[]> {
    const where: string[] = [];
    const params: unknown[] = [f.limit];
    if (f.keyId !== null) where.push(`key_id = $${params.push(f.keyId)}`);
    if (f.accountId !== null) where.push(`account_id = $${params.push(f.accountId)}`);
    if (f.before !== null) where.push(`id < $${params.push(f.before)}`);
    return this.db.query<EventRow>(
      `SELECT id, key_id, account_id, kind, actor, actor_key_id, changes, created_at FROM ${this.t.events}
       ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT $1`,
      params,
    );
  }
}
