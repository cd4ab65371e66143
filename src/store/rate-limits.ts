// All SQL about rate limits: an account's limits (its row in <base>_account_limits) and the
// exact mode's counters (<base>_rate_windows, through the rate_take function).
import type { Db } from './db.js';
import { shardedByAccount } from './sharding.js';
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
  /** The account of the request's key: its counters are that account's rows. */
  accountId: string;
}

export interface RateTaken {
  req: number;
  /** null: admitted; else the scope of the limit that had no room. */
  refused_scope: string | null;
  reset_at: Date | null;
  at: Date;
}

export class RateLimitStore {
  /** `byAccount`: call the rate function once per account, as a database sharded by account needs (left out: asked of the database). */
  constructor(private readonly db: Db, private readonly t: TableNames, private readonly byAccount?: boolean) {}

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

  /**
   * The exact mode: takes a request from every limit of each request, in order
   * (sql/functions/rate_take.sql). On one PostgreSQL one statement for the batch; on a
   * database sharded by account one call per account (several in one statement, in
   * account order). `req` numbers are the caller's, across the batch.
   */
  async take(items: readonly RateItem[]): Promise<RateTaken[]> {
    const args = (xs: readonly RateItem[]) => [xs.map((i) => i.req), xs.map((i) => i.scope), xs.map((i) => i.accountId), xs.map((i) => i.perSeconds), xs.map((i) => i.limit)];
    const types = '$2::int[], $3::text[], $4::text[], $5::int[], $6::int[]';
    if (!(this.byAccount ?? (await shardedByAccount(this.db)))) {
      return this.db.query<RateTaken>(`SELECT req, refused_scope, reset_at, at FROM ${this.t.rateTakeFn}($1::text, ${types})`, [null, ...args(items)]);
    }
    const accounts = [...new Set(items.map((i) => i.accountId))].sort();
    const sorted = accounts.flatMap((a) => items.filter((i) => i.accountId === a));
    let at = 0;
    const bounds = accounts.map((a) => {
      const lo = at + 1;
      at += items.filter((i) => i.accountId === a).length;
      return [lo, at];
    });
    const slice = (k: number) => `($${k}${['::int[]', '::text[]', '::text[]', '::int[]', '::int[]'][k - 4]})[g.lo:g.hi]`;
    return this.db.query<RateTaken>(
      `SELECT r.* FROM unnest($1::text[], $2::int[], $3::int[]) WITH ORDINALITY AS g(account, lo, hi, n)
       CROSS JOIN LATERAL ${this.t.rateTakeFn}(g.account, ${[4, 5, 6, 7, 8].map(slice).join(', ')}) AS r ORDER BY g.n`,
      [accounts, bounds.map((b) => b[0]), bounds.map((b) => b[1]), ...args(sorted)],
    );
  }
}
