import { type Micros, toMicros } from '../money.js';
import { type Actor, actAs } from './actor.js';
import { type Db, lockBound, lockWaitSetting } from './db.js';
import type { TableNames } from './identifiers.js';
import { type WindowRow, WindowStore } from './windows.js';
import type { WindowSpec } from '../windows.js';

export interface AccountRow {
  account_id: string;
  budget_micros: number;
  spent_micros: Micros;
  held_micros: Micros;
  budget_period: 'day' | 'week' | 'month' | null;
  period_start_at: Date | null;
  budget_reset_at: Date | null;
  /** Its windows past the first (null: none), and its own alert percents (null: the table's). */
  windows: WindowRow[] | null;
  alert_percents: number[] | null;
}

export interface AccountSummaryRow extends Omit<AccountRow, 'budget_micros'> {
  summary_id: string;
  key_count: number;
  live_key_count: number;
  lifetime_micros: Micros;
  overage_micros: Micros;
  budget_micros: number | null;
}

/** All SQL about account ceilings. */
export class AccountStore {
  private readonly columns: string;

  private readonly windows: WindowStore;

  constructor(private readonly db: Db, private readonly t: TableNames) {
    this.windows = new WindowStore(t);
    const due = `(a.budget_period IS NOT NULL AND a.budget_reset_at <= now())`;
    const start = `${t.schema}agentkey_period_start(a.budget_period, now())`;
    this.columns = `a.account_id, a.budget_micros, a.budget_period,
      CASE WHEN ${due} THEN 0 ELSE a.spent_micros END AS spent_micros,
      CASE WHEN ${due} THEN ${start} ELSE a.period_start_at END AS period_start_at,
      CASE WHEN ${due} THEN ${t.schema}agentkey_period_end(a.budget_period, now()) ELSE a.budget_reset_at END AS budget_reset_at,
      (SELECT COALESCE(sum(h.amount_micros), 0) FROM ${t.holds} h
        WHERE h.status = 'held' AND h.expires_at > now() AND h.account_id = a.account_id)::bigint AS held_micros,
      ${this.windows.column('a')} AS windows, a.alert_percents`;
  }

  async get(accountId: string): Promise<AccountRow | null> {
    const rows = await this.db.query<AccountRow>(
      `SELECT ${this.columns} FROM ${this.t.accounts} a WHERE a.account_id = $1`,
      [accountId],
    );
    return rows[0] ?? null;
  }

  /**
   * Sets a ceiling. The account's spend in the current calendar period comes from the
   * ledger; the account's keys are locked first (in the order spending locks them), so no
   * charge in flight is missed or counted twice.
   */
  async set(
    accountId: string,
    budgetMicros: number,
    period: 'day' | 'week' | 'month' | null,
    actor: Actor,
    more: { windows: readonly WindowSpec[]; alerts?: number[] | null } = { windows: [] },
  ): Promise<AccountRow> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      await tx.query(`SELECT id FROM ${this.t.table} WHERE account_id = $1 ORDER BY id FOR UPDATE`, [accountId]);
      const fn = (name: string) => (period === null ? 'NULL::timestamptz' : `${this.t.schema}agentkey_period_${name}($3::text, clock_timestamp())`);
      await tx.query(
        `INSERT INTO ${this.t.accounts} AS a (account_id, budget_micros, budget_period, period_start_at, budget_reset_at, spent_micros)
         SELECT $1, $2::bigint, $3::text, s.start, ${fn('end')},
           (SELECT COALESCE(sum(amount_micros), 0) FROM ${this.t.ledger}
            WHERE account_id = $1 AND kind IN ('charge', 'commit', 'adjust')
              AND (s.start IS NULL OR created_at >= s.start))
         FROM (SELECT ${fn('start')} AS start) s
         ON CONFLICT (account_id) DO UPDATE SET budget_micros = EXCLUDED.budget_micros,
           budget_period = EXCLUDED.budget_period, period_start_at = EXCLUDED.period_start_at,
           budget_reset_at = EXCLUDED.budget_reset_at, spent_micros = EXCLUDED.spent_micros, updated_at = now()`,
        [accountId, budgetMicros, period],
      );
      await this.windows.replace(tx, { keyId: null, accountId }, more.windows);
      if (more.alerts !== undefined) {
        await tx.query(`UPDATE ${this.t.accounts} SET alert_percents = $2::smallint[] WHERE account_id = $1`, [accountId, more.alerts]);
      }
      const rows = await tx.query<AccountRow>(`SELECT ${this.columns} FROM ${this.t.accounts} a WHERE a.account_id = $1`, [accountId]);
      return rows[0] as AccountRow;
    });
  }

  /**
   * Every account that has keys or a ceiling, in id order: its key counts, its lifetime
   * spend from the ledger, and its ceiling (budget_micros null when it has none).
   */
  async list(limit: number): Promise<AccountSummaryRow[]> {
    const t = this.t;
    // Sums stay NUMERIC (read exactly by toMicros): many keys' totals may pass BIGINT.
    const rows = await this.db.query<AccountSummaryRow>(
      `WITH agentkey_ids AS (SELECT DISTINCT account_id::text AS id FROM ${t.table}
                             UNION SELECT account_id FROM ${t.accounts})
       SELECT i.id AS summary_id,
         (SELECT count(*) FROM ${t.table} k WHERE k.account_id::text = i.id)::bigint AS key_count,
         (SELECT count(*) FROM ${t.table} k WHERE k.account_id::text = i.id AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > now()))::bigint AS live_key_count,
         (SELECT COALESCE(sum(l.amount_micros), 0) FROM ${t.ledger} l
            WHERE l.account_id = i.id AND l.kind IN ('charge', 'commit', 'adjust'))::text AS lifetime_micros,
         (SELECT COALESCE(sum(k.overage_micros), 0) FROM ${t.table} k WHERE k.account_id::text = i.id)::text AS overage_micros,
         ${this.columns}
       FROM agentkey_ids i LEFT JOIN ${t.accounts} a ON a.account_id = i.id
       ORDER BY i.id LIMIT $1`,
      [limit],
    );
    return rows.map((r) => ({ ...r, lifetime_micros: toMicros(r.lifetime_micros), overage_micros: toMicros(r.overage_micros) }));
  }

  async clear(accountId: string, actor: Actor): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      const rows = await tx.query(
        `DELETE FROM ${this.t.accounts} a USING ${lockBound('$2')} WHERE a.account_id = $1 RETURNING a.account_id`,
        [accountId, lockWaitSetting(this.db)],
      );
      // Its windows go with it (the row, now locked, was what spending locks for them).
      if (rows.length > 0) await tx.query(`DELETE FROM ${this.t.windows} WHERE key_id IS NULL AND account_id = $1`, [accountId]);
      return rows.length > 0;
    });
  }
}
