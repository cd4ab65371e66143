// An account's rate and concurrency limits: setting, reading and removing them. Every
// change is told to validation at once (every key of the account is under it); other
// processes hear it from the database (the account_limits trigger).
import { AgentKeyError } from './errors.js';
import { accountIdText, checkOptions, concurrencyOption, rateLimitOption } from './options.js';
import { storageFault } from './store/errors.js';
import type { AccountLimitsRow, AccountLimitsWrite, RateLimitStore } from './store/rate-limits.js';
import type { AccountRateLimit, AccountRateLimitChanges } from './types.js';
import type { Validation } from './validation.js';
import { rateLimitView } from './views.js';

export class AccountLimits {
  private readonly fault: (err: unknown) => never;

  constructor(private readonly store: RateLimitStore, private readonly validation: Validation, table: string) {
    this.fault = storageFault(table);
  }

  /** `setAccountRateLimit()`: fields left out are kept, null removes one; none left removes the row (null). */
  async set(accountId: string | number, changes: AccountRateLimitChanges): Promise<AccountRateLimit | null> {
    const id = accountIdText(accountId);
    const c = checkOptions<AccountRateLimitChanges>(changes, ['rateLimit', 'concurrency'], 'setAccountRateLimit()');
    if (c.rateLimit === undefined && c.concurrency === undefined) {
      throw new AgentKeyError('invalid_rate_limit', 'setAccountRateLimit() needs rateLimit or concurrency (null removes one).');
    }
    const write: AccountLimitsWrite = {
      ...(c.rateLimit !== undefined ? { rateLimit: rateLimitOption(c.rateLimit) } : {}),
      ...(c.concurrency !== undefined ? { concurrency: concurrencyOption(c.concurrency) } : {}),
    };
    const row = await this.store.setAccount(id, write).catch(this.fault);
    this.validation.allChanged();
    return row === null ? null : toAccountRateLimit(row);
  }

  async get(accountId: string | number): Promise<AccountRateLimit | null> {
    const row = await this.store.getAccount(accountIdText(accountId)).catch(this.fault);
    return row === null ? null : toAccountRateLimit(row);
  }

  async clear(accountId: string | number): Promise<boolean> {
    const cleared = await this.store.clearAccount(accountIdText(accountId)).catch(this.fault);
    this.validation.allChanged();
    return cleared;
  }

  /** The limits of these accounts, by account id (those with none are absent). */
  async of(accountIds: readonly string[]): Promise<Map<string, AccountRateLimit>> {
    const rows = await this.store.listAccounts(accountIds).catch(this.fault);
    return new Map(rows.map((r) => [r.account_id, toAccountRateLimit(r)]));
  }
}

function toAccountRateLimit(row: AccountLimitsRow): AccountRateLimit {
  return {
    accountId: String(row.account_id),
    rateLimit: rateLimitView(row.rate_limit_requests, row.rate_limit_per_s),
    concurrency: row.concurrency_limit === null ? null : Number(row.concurrency_limit),
    updatedAt: new Date(row.updated_at).toISOString(),
  };
}
