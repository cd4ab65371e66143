import type { WindowPeriod, WindowSpec } from '../windows.js';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/** A window past the first of a key or account, as the table has it now (a period that ended reads as started again). */
export interface WindowRow {
  period: WindowPeriod;
  budget_micros: string;
  spent_micros: string;
  period_start_at: string | null;
  reset_at: string | null;
}

/** Whose windows: a key's (and its subtree's spend), or an account's (key null). */
export interface WindowOwner {
  keyId: number | null;
  accountId: string;
}

/** Windows sort day, week, month, lifetime. */
const RANK = "array_position(ARRAY['day', 'week', 'month', 'lifetime'], w.period)";

/**
 * All SQL about budget windows past the first (the spend function reads and moves their
 * counters itself: sql/functions/spend_many.sql).
 */
export class WindowStore {
  constructor(private readonly t: TableNames) {}

  /**
   * A JSON list of the windows of the row `owner` (an SQL expression over the keys table `k`
   * or the accounts table `a`), read only when its flag says it has some. For KeyStore's and
   * AccountStore's column lists.
   */
  column(owner: 'k' | 'a'): string {
    const s = this.t.schema;
    const due = 'w.reset_at <= now()';
    const where = owner === 'k' ? 'w.key_id = k.id' : 'w.key_id IS NULL AND w.account_id = a.account_id';
    return `(SELECT jsonb_agg(jsonb_build_object('period', w.period, 'budget_micros', w.budget_micros::text,
               'spent_micros', (CASE WHEN ${due} THEN 0 ELSE w.spent_micros END)::text,
               'period_start_at', CASE WHEN ${due} THEN ${s}agentkey_period_start(w.period, now()) ELSE w.period_start_at END,
               'reset_at', CASE WHEN ${due} THEN ${s}agentkey_period_end(w.period, now()) ELSE w.reset_at END) ORDER BY ${RANK})
             FROM ${this.t.windows} w WHERE ${owner}.budget_windows AND ${where})`;
  }

  /**
   * Makes `owner`'s windows past the first exactly `specs`, in the caller's transaction, with
   * the owner's row (and for a key, its subtree) already locked as spending locks them. A
   * window that stays (same period) keeps its counter; a new one starts at what the ledger
   * has of this period's spend (the key's whole subtree, or the account), never below 0.
   * The owner's flag says whether the spend function must read its windows.
   */
  async replace(tx: Db, owner: WindowOwner, specs: readonly WindowSpec[]): Promise<void> {
    const t = this.t;
    const periods = specs.map((w) => w.period);
    await tx.query(
      `DELETE FROM ${t.windows} WHERE account_id = $1 AND key_id IS NOT DISTINCT FROM $2::bigint AND period <> ALL($3::text[])`,
      [owner.accountId, owner.keyId, periods],
    );
    if (specs.length > 0) {
        const spentSince = owner.keyId === null
        ? `l.account_id = $1 AND $2::bigint IS NULL`
        : `l.key_id IN (SELECT id FROM ${t.table} WHERE id = $2::bigint OR ancestor_ids @> ARRAY[$2::bigint])`;
      await tx.query(
        `INSERT INTO ${t.windows} AS w (account_id, key_id, period, budget_micros, spent_micros, period_start_at, reset_at)
         SELECT $1, $2::bigint, s.period, s.budget, GREATEST(0, (SELECT COALESCE(sum(l.amount_micros), 0) FROM ${t.ledger} l
                  WHERE ${spentSince} AND l.kind IN ('charge', 'commit', 'adjust') AND (s.start IS NULL OR l.created_at >= s.start)))::bigint,
                s.start, s.reset
         FROM (SELECT p AS period, b AS budget,
                      CASE WHEN p = 'lifetime' THEN NULL ELSE ${t.schema}agentkey_period_start(p, clock_timestamp()) END AS start,
                      CASE WHEN p = 'lifetime' THEN NULL ELSE ${t.schema}agentkey_period_end(p, clock_timestamp()) END AS reset
               FROM unnest($3::text[], $4::bigint[]) AS u(p, b)) s
         ON CONFLICT (account_id, COALESCE(key_id, (0)::bigint), period)
         DO UPDATE SET budget_micros = EXCLUDED.budget_micros, updated_at = now()
           WHERE w.budget_micros IS DISTINCT FROM EXCLUDED.budget_micros`,
        [owner.accountId, owner.keyId, periods, specs.map((w) => w.micros)],
      );
    }
    if (owner.keyId === null) {
      await tx.query(`UPDATE ${t.accounts} SET budget_windows = $2 WHERE account_id = $1 AND budget_windows IS DISTINCT FROM $2`, [
        owner.accountId,
        specs.length > 0,
      ]);
    } else {
      await tx.query(`UPDATE ${t.table} SET budget_windows = $2 WHERE id = $1 AND budget_windows IS DISTINCT FROM $2`, [owner.keyId, specs.length > 0]);
    }
  }

  /**
   * Every window past the first over each key of `keyIds` (its own, its ancestors', its
   * account's), as it stands now, with the money live holds keep under its owner.
   */
  async over(db: Db, keyIds: readonly number[]): Promise<(WindowRow & { for_key: string; id: string; key_id: string | null; held_micros: string })[]> {
    const t = this.t;
    const due = 'w.reset_at <= now()';
    return db.query(
      `SELECT q.id::text AS for_key, w.id::text AS id, w.key_id::text AS key_id, w.period, w.budget_micros::text AS budget_micros,
              (CASE WHEN ${due} THEN 0 ELSE w.spent_micros END)::text AS spent_micros,
              CASE WHEN ${due} THEN ${t.schema}agentkey_period_start(w.period, now()) ELSE w.period_start_at END AS period_start_at,
              CASE WHEN ${due} THEN ${t.schema}agentkey_period_end(w.period, now()) ELSE w.reset_at END AS reset_at,
              (SELECT COALESCE(sum(h.amount_micros), 0) FROM ${t.holds} h WHERE h.status = 'held' AND h.expires_at > now()
                 AND (CASE WHEN w.key_id IS NULL THEN h.account_id = w.account_id ELSE h.path @> ARRAY[w.key_id] END))::text AS held_micros
       FROM unnest($1::bigint[]) AS q(id) JOIN ${t.table} k ON k.id = q.id
       JOIN ${t.windows} w ON w.key_id = k.id OR w.key_id = ANY(k.ancestor_ids) OR (w.key_id IS NULL AND w.account_id = k.account_id::text)
       ORDER BY q.id, ${RANK}, w.id`,
      [keyIds],
    );
  }

  /** The table's alert percents (for windows whose key or account sets none), or null. */
  async globalAlerts(db: Db): Promise<number[] | null> {
    const rows = await db.query<{ value: unknown }>(`SELECT value FROM ${this.t.settings} WHERE name = 'alert_percents'`);
    const v = rows[0]?.value;
    return Array.isArray(v) ? v.map(Number) : null;
  }

  async setGlobalAlerts(db: Db, percents: number[] | null): Promise<void> {
    if (percents === null) await db.query(`DELETE FROM ${this.t.settings} WHERE name = 'alert_percents'`);
    else {
      await db.query(
        `INSERT INTO ${this.t.settings} (name, value) VALUES ('alert_percents', $1::jsonb)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()`,
        [JSON.stringify(percents)],
      );
    }
  }
}
