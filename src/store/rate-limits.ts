// All SQL about rate limits: an account's limits (its row in <base>_account_limits) and the
// exact mode's counters (<base>_rate_windows, through the rate_take function).
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

export interface AccountLimitsRow {
  account_id: string;
  rate_limit_requests: number | null;
  rate_limit_per_s: number | null;
  concurrency_limit: number | null;
  updated_at: Date;
}

/** What `setAccountRateLimit()` writes: a field left out is kept; null removes it. */
export interface AccountLimitsWrite {
  rateLimit?: { requests: number; perSeconds: number } | null;
  concurrency?: number | null;
}

/** One limit a request must fit: its scope names the limit and its window length. */
export interface RateItem {
  /** The request it belongs to (items of one request are next to each other). */
  req: number;
  scope: string;
  perSeconds: number;
  limit: number;
}

export interface RateTaken {
  req: number;
  /** null: admitted; else the scope of the limit that had no room. */
  refused_scope: string | null;
  reset_at: Date | null;
  at: Date;
}

export class RateLimitStore {
  constructor(private readonly db: Db, private readonly t: TableNames) {}

  async getAccount(accountId: string): Promise<AccountLimitsRow | null> {
    const rows = await this.db.query<AccountLimitsRow>(
      `SELECT account_id, rate_limit_requests, rate_limit_per_s, concurrency_limit, updated_at FROM ${this.t.accountLimits} WHERE account_id = $1`,
      [accountId],
    );
    return rows[0] ?? null;
  }

  async listAccounts(accountIds: readonly string[]): Promise<AccountLimitsRow[]> {
    if (accountIds.length === 0) return [];
    return this.db.query<AccountLimitsRow>(
      `SELECT account_id, rate_limit_requests, rate_limit_per_s, concurrency_limit, updated_at FROM ${this.t.accountLimits} WHERE account_id = ANY($1::text[])`,
      [accountIds],
    );
  }

  /**
   * Sets an account's limits in one statement: fields left out keep their value; a row left
   * with no limit at all is removed. Returns the row, or null when none is left.
   */
  async setAccount(accountId: string, w: AccountLimitsWrite): Promise<AccountLimitsRow | null> {
    return this.db.transaction(async (tx) => {
      const cols = 'account_id, rate_limit_requests, rate_limit_per_s, concurrency_limit, updated_at';
      const [old] = await tx.query<AccountLimitsRow>(`SELECT ${cols} FROM ${this.t.accountLimits} WHERE account_id = $1 FOR UPDATE`, [accountId]);
      const rate = w.rateLimit === undefined
        ? { requests: old?.rate_limit_requests ?? null, perSeconds: old?.rate_limit_per_s ?? null }
        : { requests: w.rateLimit?.requests ?? null, perSeconds: w.rateLimit?.perSeconds ?? null };
      const concurrency = w.concurrency === undefined ? (old?.concurrency_limit ?? null) : w.concurrency;
      if (rate.requests === null && concurrency === null) {
        await tx.query(`DELETE FROM ${this.t.accountLimits} WHERE account_id = $1`, [accountId]);
        return null;
      }
      const rows = await tx.query<AccountLimitsRow>(
        `INSERT INTO ${this.t.accountLimits} (account_id, rate_limit_requests, rate_limit_per_s, concurrency_limit) VALUES ($1, $2, $3, $4)
         ON CONFLICT (account_id) DO UPDATE SET rate_limit_requests = EXCLUDED.rate_limit_requests,
           rate_limit_per_s = EXCLUDED.rate_limit_per_s, concurrency_limit = EXCLUDED.concurrency_limit, updated_at = now()
         RETURNING ${cols}`,
        [accountId, rate.requests, rate.perSeconds, concurrency],
      );
      return rows[0] as AccountLimitsRow;
    });
  }

  async clearAccount(accountId: string): Promise<boolean> {
    const rows = await this.db.query(`DELETE FROM ${this.t.accountLimits} WHERE account_id = $1 RETURNING account_id`, [accountId]);
    return rows.length > 0;
  }

  /** The exact mode: one statement takes a request from every limit of each request, in order (sql/functions/rate_take.sql). */
  async take(items: readonly RateItem[]): Promise<RateTaken[]> {
    return this.db.query<RateTaken>(
      `SELECT req, refused_scope, reset_at, at FROM ${this.t.rateTakeFn}($1::int[], $2::text[], $3::int[], $4::int[])`,
      [items.map((i) => i.req), items.map((i) => i.scope), items.map((i) => i.perSeconds), items.map((i) => i.limit)],
    );
  }
}
