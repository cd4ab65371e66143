// Reports read from the ledger, the truth of every spend: usage over a span, the ledger's
// rows, every account's summary, and the audit of counters against the ledger. Totals come
// back as `Cents`: numbers up to MAX_CENTS, exact decimal strings past it.
import { AgentKeyError } from './errors.js';
import { type Micros, microsToCents } from './money.js';
import { accountIdText, checkOptions, keyIdNumber, limitOption } from './options.js';
import type { AccountStore } from './store/accounts.js';
import { storageFault } from './store/errors.js';
import type { SpendStore } from './store/spend.js';
import { parseInstant } from './time.js';
import type { AccountSummary, AuditResult, LedgerEntry, UsageQuery, UsageReport } from './types.js';
import { iso, toAccountBudget } from './views.js';

export interface LedgerQuery {
  keyId?: number | string;
  accountId?: string | number;
  before?: number;
  limit?: number;
}

export class Reports {
  /** Turns a database fault into its AgentKeyError. */
  private readonly fault: (err: unknown) => never;

  constructor(
    private readonly stores: {
      /** For reads of a page of rows (`ledger`), bounded like every call. */
      ledger: SpendStore;
      /** For reads over the whole ledger (`usage`, `audit`), with the longer bound of reports. */
      totals: SpendStore;
      /** For `listAccounts`, with the longer bound of reports. */
      accounts: AccountStore;
    },
    table: string,
  ) {
    this.fault = storageFault(table);
  }

  /** `usage()`: spend over [since, until), optionally in hourly or daily buckets (UTC). */
  async usage(query: UsageQuery): Promise<UsageReport> {
    const q = checkOptions<UsageQuery>(query, ['keyId', 'accountId', 'since', 'until', 'bucket', 'byModel'], 'usage()');
    if (q.byModel !== undefined && typeof q.byModel !== 'boolean') throw new AgentKeyError('invalid_argument', 'byModel must be true or false.');
    if (q.bucket !== undefined && q.bucket !== 'hour' && q.bucket !== 'day') {
      throw new AgentKeyError('invalid_argument', `bucket must be 'hour' or 'day'; got ${JSON.stringify(q.bucket)}.`);
    }
    const filter = {
      keyId: q.keyId === undefined ? null : keyIdNumber(q.keyId),
      accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
      since: q.since === undefined ? null : parseInstant(q.since, 'since'),
      until: q.until === undefined ? null : parseInstant(q.until, 'until'),
      bucket: q.bucket ?? null,
    };
    const report = await this.stores.totals.usage(filter).catch(this.fault);
    const models = q.byModel ? await this.stores.totals.usageByModel(filter).catch(this.fault) : null;
    return {
      ...(models
        ? {
            models: models.map((m) => ({
              model: m.model,
              provider: m.provider,
              costCents: microsToCents(m.total),
              overageCents: microsToCents(m.overage),
              count: m.count,
              inputTokens: m.inputTokens,
              outputTokens: m.outputTokens,
              cachedInputTokens: m.cachedInputTokens,
              cacheWriteTokens: m.cacheWriteTokens,
              reasoningTokens: m.reasoningTokens,
            })),
          }
        : {}),
      totalCents: microsToCents(report.total),
      count: report.count,
      overageCents: microsToCents(report.overage),
      buckets: report.buckets.map((b) => ({
        start: b.start.toISOString(),
        costCents: microsToCents(b.micros),
        count: b.count,
        overageCents: microsToCents(b.overage),
      })),
    };
  }

  /** `audit()`: every checked counter against the ledger. */
  async audit(options: { keyId?: number | string }): Promise<AuditResult> {
    const o = checkOptions<{ keyId?: number | string }>(options, ['keyId'], 'audit()');
    const id = o.keyId === undefined ? null : keyIdNumber(o.keyId);
    const { checked, mismatches, accounts, overage, overageMicros } = await this.stores.totals.audit(id).catch(this.fault);
    const inCents = (m: { keyId: number; counterMicros: Micros; ledgerMicros: Micros }) => ({
      keyId: m.keyId,
      counterCents: microsToCents(m.counterMicros),
      ledgerCents: microsToCents(m.ledgerMicros),
    });
    return {
      ok: mismatches.length === 0 && accounts.length === 0 && overage.length === 0,
      accountMismatches: accounts.map((m) => ({
        accountId: m.accountId,
        counterCents: microsToCents(m.counterMicros),
        ledgerCents: microsToCents(m.ledgerMicros),
      })),
      keysChecked: checked,
      mismatches: mismatches.map(inCents),
      overageMismatches: overage.map(inCents),
      overageCents: microsToCents(overageMicros),
    };
  }

  /** `listAccounts()`: every account with keys or a ceiling, in id order. */
  async accounts(options: { limit?: number }): Promise<Omit<AccountSummary, 'rateLimit' | 'concurrency'>[]> {
    const o = checkOptions<{ limit?: number }>(options, ['limit'], 'listAccounts()');
    const limit = limitOption(o.limit, 1_000, 10_000);
    const rows = await this.stores.accounts.list(limit).catch(this.fault);
    return rows.map((r) => ({
      accountId: r.summary_id,
      keys: Number(r.key_count),
      liveKeys: Number(r.live_key_count),
      spentCents: microsToCents(r.lifetime_micros),
      overageCents: microsToCents(r.overage_micros),
      ceiling: r.budget_micros === null ? null : toAccountBudget({ ...r, account_id: r.summary_id, budget_micros: r.budget_micros }),
    }));
  }

  /** `ledger()`: rows newest first, a page at a time. */
  async ledger(query: LedgerQuery): Promise<LedgerEntry[]> {
    const q = checkOptions<LedgerQuery>(query, ['keyId', 'accountId', 'before', 'limit'], 'ledger()');
    const limit = limitOption(q.limit, 100, 1_000);
    const filter = {
      keyId: q.keyId === undefined ? null : keyIdNumber(q.keyId),
      accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
      before: q.before === undefined ? null : keyIdNumber(q.before, 'before'),
      limit,
    };
    const rows = await this.stores.ledger.ledger(filter).catch(this.fault);
    return rows.map((r) => ({
      id: Number(r.id),
      keyId: Number(r.key_id),
      accountId: r.account_id,
      kind: r.kind,
      amountCents: microsToCents(r.amount_micros),
      reservationId: r.reservation_id,
      metadata: r.metadata,
      createdAt: iso(r.created_at) as string,
      ...(r.model ? { model: r.model } : {}),
      ...(r.usage ? { usage: r.usage } : {}),
    }));
  }
}
