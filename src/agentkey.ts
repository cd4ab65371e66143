// The public front of agentkey: the AgentKey class, whose methods check what a call names
// (a raw key, a subject, an id) and hand it to the module of its flow: keys and account
// ceilings (lifecycle.ts), validation with its cache (validation.ts), spending and holds
// (spending.ts), reports (reports.ts), events and webhooks (events.ts). Options are checked in options.ts, the public types
// live in types.ts, and database faults are mapped to errors in store/errors.ts. One file
// (about 630 lines, more than half of them the doc comments users read in their editor): the
// whole public API in one class, so that its documentation is one page. Each method is a few
// lines that hand over; the next thing to move out is the webhooks facade (to events.ts).
import { KeyCache } from './cache.js';
import { AgentKeyError } from './errors.js';
import { type DeliveryQueue, Events } from './events.js';
import { lookupHash } from './keys.js';
import { KeyLifecycle } from './lifecycle.js';
import type { PriceCatalog } from './llm/prices.js';
import type { CentsInput } from './money.js';
import { agentKeySettings, checkOptions, keyIdNumber, subjectText } from './options.js';
import { Reports } from './reports.js';
import { invalidScopes, scopeAllows } from './scopes.js';
import { Spending } from './spending.js';
import { AccountStore } from './store/accounts.js';
import { EventStore } from './store/events.js';
import type { Db } from './store/db.js';
import { storageFault } from './store/errors.js';
import type { TableNames } from './store/identifiers.js';
import { type KeyRef, KeyStore } from './store/keys.js';
import { migrate } from './store/migrations.js';
import { SpendStore } from './store/spend.js';
import { WebhookStore } from './store/webhooks.js';
import type { BudgetPeriod } from './time.js';
import type {
  AccountBudget,
  AccountBudgetOptions,
  AccountSummary,
  AdjustResult,
  AgentKeyOptions,
  AuditResult,
  CacheStats,
  CommitOptions,
  MeteredCommitOptions,
  MeteredReserveOptions,
  MeteredUsageOptions,
  CommitResult,
  CreateKeyOptions,
  CreateKeyResult,
  CreateOptions,
  KeyChanges,
  KeyEvent,
  KeyEventQuery,
  KeyInfo,
  LedgerEntry,
  ReleaseResult,
  ReservationInfo,
  ReserveOptions,
  ReserveResult,
  SubjectOptions,
  TrackUsageResult,
  UsageOptions,
  UsageQuery,
  UpdateOptions,
  UsageReport,
  ValidationResult,
  RotateOptions,
  RotateResult,
  AgentKeyEvent,
  CreateWebhookOptions,
  CreatedWebhook,
  OnEventOptions,
  OutboxEventQuery,
  Webhook,
  WebhookChanges,
  WebhookDelivery,
  WebhookDeliveryQuery,
  WebhookStats,
} from './types.js';
import { Validation } from './validation.js';
// Rate limits.
import { AccountLimits } from './account-limits.js';
import { RateLimiter } from './rate-limits.js';
import { RateLimitStore } from './store/rate-limits.js';
import type { AccountRateLimit, AccountRateLimitChanges, ValidateOptions } from './types.js';

// The public types, for code that imports them from here.
export type * from './types.js';
// The service checks this option before it opens the database.
export { timeoutOption } from './options.js';

/**
 * Scoped, budgeted, time-bounded API keys for AI agents, on PostgreSQL or PGlite.
 *
 * @example
 * const ak = new AgentKey({ pool });
 * await ak.migrate();
 * const { key } = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 5000 });
 * const result = await ak.validate(key);
 */
export class AgentKey {
  readonly tableName: string;
  readonly keyPrefix: string;
  /** The price catalog of `{ model, usage }` costs (`new AgentKey({ prices })`); null: the bundled one. */
  readonly prices: PriceCatalog | null;
  private readonly db: Db;
  private readonly names: TableNames;
  private readonly validScopes: ReadonlySet<string> | null;
  private readonly keys: KeyLifecycle;
  private readonly validation: Validation;
  private readonly spending: Spending;
  private readonly reports: Reports;
  private readonly events: Events;
  private readonly limiter: RateLimiter;
  private readonly accountLimits: AccountLimits;

  constructor(options: AgentKeyOptions) {
    const s = agentKeySettings(options);
    this.names = s.names;
    this.tableName = s.names.name;
    this.prices = s.prices;
    this.keyPrefix = s.keyPrefix;
    this.validScopes = s.validScopes;
    this.db = s.db;
    const table = this.tableName;
    const keyStore = new KeyStore(s.db, s.names);
    const spendStore = new SpendStore(s.db, s.names);
    // One cache, shared: validation fills it, and each spending step here updates its figures.
    const cache = s.cache && new KeyCache(s.cache.maxKeys, s.cache.ttlMs, s.cache.fallbackTtlMs);
    const rateStore = new RateLimitStore(s.db, s.names);
    this.limiter = new RateLimiter(s.rateLimits.mode, rateStore, storageFault(table), s.batching ?? { maxBatch: 1, lanes: 2 });
    const replica = s.readDb && new KeyStore(s.readDb, s.names);
    this.validation = new Validation(keyStore, cache, { pool: s.pool, channel: s.names.channel, directUrl: s.directUrl }, table, this.limiter, replica);
    this.accountLimits = new AccountLimits(rateStore, this.validation, table);
    this.spending = new Spending(spendStore, cache, s.batching, s.timeoutMs, table, s.actor, s.prices);
    this.keys = new KeyLifecycle(keyStore, new AccountStore(s.db, s.names), new EventStore(s.db, s.names), this.validation, {
      keyPrefix: s.keyPrefix,
      validScopes: s.validScopes,
      maxDepth: s.maxDepth,
      table,
      actor: s.actor,
    });
    this.reports = new Reports(
      { ledger: spendStore, totals: new SpendStore(s.reportDb, s.names), accounts: new AccountStore(s.reportDb, s.names) },
      table,
    );
    this.events = new Events(new WebhookStore(s.db, s.names), { pool: s.pool, channel: s.names.outboxChannel, directUrl: s.directUrl }, storageFault(table));
  }

  // Setting up and closing.

  /**
   * Creates or upgrades the keys table: idempotent, versioned, safe to run from several
   * processes at once. Returns the migration versions it applied.
   */
  migrate(): Promise<number[]> {
    return migrate(this.db, this.names).catch(storageFault(this.tableName));
  }

  /**
   * Finishes what is in flight (charges, holds, `last_used_at` stamps) and stops listening
   * for changes. The pool stays open: it is yours. Later calls still work, uncached.
   */
  async close(): Promise<void> {
    this.validation.stopListening();
    await this.events.close();
    await this.spending.settled();
    await this.limiter.settled();
    await this.validation.close();
  }

  /** Writes the `last_used_at` stamps noted so far (they are written every second anyway). */
  flush(): Promise<void> {
    return this.validation.flush();
  }

  /** Counters of the validation cache (null when it is off). */
  cacheStats(): CacheStats | null {
    return this.validation.stats();
  }

  // Keys: minting, reading, revoking, and their scopes.

  /**
   * Mints a scoped, budgeted key. The raw key is in the result and nowhere else. `how`
   * says who made it for the event log: `by` a key through self-serve (it must be the
   * parent), or the `signup` route; otherwise this process's `actor`.
   *
   * @example await ak.create({ accountId: 'acct_1', budgetCents: 5000, budgetPeriod: 'month', expiresIn: '7d' })
   */
  async create(options: CreateKeyOptions, how?: CreateOptions): Promise<CreateKeyResult> {
    return this.keys.create(options, how);
  }

  /**
   * Creates, on first sight, a budget row for an external identity (e.g. a Clerk machine).
   * Idempotent; issues no token. `accountId` defaults to the subject.
   */
  async ensureSubject(subject: string, options: SubjectOptions = {}): Promise<void> {
    return this.keys.ensureSubject(subject, options);
  }

  /**
   * The id of the key a raw key is, whatever its status (revoked and expired keys too), or
   * null when it is no key of this table. For checking ownership, e.g. that the key settling
   * a hold is the one that took it: a key revoked mid-call must still be able to commit.
   */
  async identify(rawKey: string): Promise<number | null> {
    return this.keys.identify(rawKey);
  }

  /** One key without its secret, or null. */
  async getKey(keyId: number | string): Promise<KeyInfo | null> {
    return this.keys.get(keyId);
  }

  /**
   * Lists an account's keys (or, without `accountId`, every account's) without their
   * secrets, with budget, spent, held and remaining, in id order.
   *
   * @example await ak.listKeys({ accountId: 'acct_1', parentId: 42 })
   */
  async listKeys(query: { accountId?: string | number; parentId?: number | string; includeRevoked?: boolean; limit?: number }): Promise<KeyInfo[]> {
    return this.keys.list(query);
  }

  /**
   * Soft-revokes a key and its whole subtree of children, at once. With `accountId`, only a
   * key of that account. True when a key was revoked, false when nothing matched (or it
   * was already revoked).
   *
   * With `{ by: keyId }`, a key revokes: the tree is a boundary (`mayActOn`). A key may
   * revoke itself and its descendants, a root key also other trees of its account; any
   * other key of the account throws `key_outside_tree`, and one outside it is no match.
   *
   * @example await ak.revoke(childId, caller.accountId, { by: caller.id })
   */
  async revoke(keyId: number | string, accountId?: string | number | null, options?: { by?: number | string }): Promise<boolean> {
    return this.keys.revoke(keyId, accountId, options);
  }

  /**
   * Changes a key: its budget, period, scopes, expiry, name or delegatedBy, in one
   * transaction. A child is never widened past its parent (`budget_exceeds_parent`,
   * `scope_not_allowed`, `expiry_exceeds_parent`); narrowing a key below one of its
   * descendants throws `narrows_children` unless `cascade: true`, which narrows them too. A
   * budget below what was spent leaves nothing to spend; a new period starts now. Unknown
   * ids throw `key_not_found`, revoked keys `key_inactive`; a refused update changes nothing.
   * Every process's cache drops the keys it changed at once. Returns the key as `getKey()` does.
   *
   * @example await ak.update(id, { budgetCents: 2000, expiresIn: '30d' })
   * @example await ak.update(rootId, { scopes: ['read'] }, { cascade: true })
   */
  async update(keyId: number | string, changes: KeyChanges, options?: UpdateOptions): Promise<KeyInfo> {
    return this.keys.update(keyId, changes, options);
  }

  /**
   * Gives a key a new secret, returned this once: the same id, budget, spend, ledger,
   * children and subject bindings. The previous secret keeps working for `gracePeriod`
   * ('1h'; at most '7d'; default 0, not at all), then validates as 'invalid'; rotating
   * again ends any older secret. Every process's cache drops the key at once and never
   * serves the previous secret past its grace period. Unknown ids throw `key_not_found`,
   * revoked keys `key_inactive`.
   *
   * @example const { key } = await ak.rotate(id, { gracePeriod: '1h' })
   */
  async rotate(keyId: number | string, options?: RotateOptions): Promise<RotateResult> {
    return this.keys.rotate(keyId, options);
  }

  /**
   * The event log, newest first: each key made, updated, rotated or revoked, each ceiling
   * set and each adjustment, with the fields it changed (before and after) and who made it
   * ('library', 'admin', 'cli', a key through self-serve, or 'sql' for an edit of the
   * table). Page with `before` (an event id).
   *
   * @example await ak.keyEvents({ keyId: 42, limit: 20 })
   */
  async keyEvents(query?: KeyEventQuery): Promise<KeyEvent[]> {
    return this.keys.keyEvents(query);
  }

  /**
   * Which of `scopes` `create()` would refuse: not well-formed, or not among `validScopes`
   * when that is configured ('admin' always passes). The package's method.
   *
   * @example ak.validateScopes(['read', 'nope']) // { valid: false, invalid: ['nope'] }
   */
  validateScopes(scopes: readonly string[]): { valid: boolean; invalid?: string[] } {
    if (!Array.isArray(scopes)) return { valid: false, invalid: [] };
    const invalid = invalidScopes(scopes, this.validScopes);
    return invalid.length === 0 ? { valid: true } : { valid: false, invalid: invalid.map(String) };
  }

  /** True when a valid result's scopes allow `scope` (null scopes and 'admin' allow everything). */
  hasScope(result: ValidationResult | null | undefined, scope: string): boolean {
    if (!result || result.valid !== true || typeof scope !== 'string') return false;
    return scopeAllows(result.scopes, scope);
  }

  // Validation.

  /**
   * Checks a raw key: `{ valid: true, ...metadata }`, or `{ valid: false, reason }` with
   * reason 'invalid', 'expired', 'revoked', 'budget_exceeded' or 'rate_limited' (with
   * `limit`, `limitedBy`, `retryAfterMs` and `resetAt`). A malformed key costs no query.
   * A valid validation counts against the key's and its account's rate limits; with
   * `{ acquire: true }` it also takes a concurrency slot, freed by the result's `release()`.
   *
   * @example
   * const r = await ak.validate(key, { acquire: true });
   * if (r.valid) try { await handle() } finally { r.release?.() }
   */
  async validate(rawKey: string, options?: ValidateOptions): Promise<ValidationResult> {
    const acquire = acquireOption(options);
    const hash = lookupHash(rawKey, this.keyPrefix);
    if (hash === null) return { valid: false, reason: 'invalid' };
    return this.validation.validate({ hash }, acquire);
  }

  /** `validate()` for an external subject created with `ensureSubject()` (its row's limits are a key's). */
  async validateBySubject(subject: string, options?: ValidateOptions): Promise<ValidationResult> {
    return this.validation.validate({ subject: subjectText(subject) }, acquireOption(options));
  }

  // Spending: charges, holds and adjustments.

  /**
   * Adds a cost to the key's spend, atomically and never past its budget.
   *
   * Or give an LLM call's usage instead of a cost: it is priced from the catalog
   * (agentkey/llm) and the ledger row keeps the model and the token counts.
   *
   * @example await ak.trackUsage(key, { costCents: 0.03 }) // { success: true, ... }
   * @example await ak.trackUsage(key, { model: 'gpt-4o-mini', usage: { inputTokens: 812, outputTokens: 95 } })
   */
  async trackUsage(rawKey: string, usage: UsageOptions | MeteredUsageOptions): Promise<TrackUsageResult> {
    return this.spending.charge(this.keyRef(rawKey), usage, 'trackUsage()');
  }

  /** `trackUsage()` for an external subject created with `ensureSubject()`. */
  async trackUsageBySubject(subject: string, usage: UsageOptions | MeteredUsageOptions): Promise<TrackUsageResult> {
    return this.spending.charge({ subject: subjectText(subject) }, usage, 'trackUsageBySubject()');
  }

  /**
   * Holds `costCents` against the key's budget before a costly call: what is left is
   * budget - spent - held. Settle it with `commit()` or `release()`; unsettled, the hold
   * ends by itself after `ttl` (default '5m').
   *
   * @example
   * const hold = await ak.reserve(key, { costCents: maxTokens * centsPerToken, ttl: '2m' });
   * if (hold.success) await ak.commit(hold.reservationId, { costCents: realCost });
   */
  async reserve(rawKey: string, options: ReserveOptions | MeteredReserveOptions): Promise<ReserveResult> {
    return this.spending.reserve(this.keyRef(rawKey), options, 'reserve()');
  }

  /** `reserve()` for an external subject created with `ensureSubject()`. */
  async reserveBySubject(subject: string, options: ReserveOptions | MeteredReserveOptions): Promise<ReserveResult> {
    return this.spending.reserve({ subject: subjectText(subject) }, options, 'reserveBySubject()');
  }

  /**
   * Settles a hold with the real cost and gives back the rest. The real cost is always
   * recorded, and no budget is ever passed: the hold's money comes back first, then the
   * cost is charged up to what every budget over the key (its own, its ancestors', the
   * account's) still leaves. What none of them can take, past the hold or after it expired,
   * is overage: a ledger row of its own, reported, and never counted toward a cap.
   * A second commit with the same cost returns the first outcome, never a second charge;
   * one with another cost is `idempotency_conflict`.
   */
  async commit(reservationId: string, options: CommitOptions | MeteredCommitOptions): Promise<CommitResult> {
    return this.spending.commit(reservationId, options);
  }

  /** Gives a whole hold back. A second release returns the first outcome; an expired hold gives back 0 (no replay). */
  async release(reservationId: string): Promise<ReleaseResult> {
    return this.spending.release(reservationId);
  }

  /**
   * Where a hold stands: its key, amount, status and expiry; null when no hold has this id.
   * A hold past its expiry reads 'expired' even before `sweepExpiredHolds()` marks it.
   *
   * @example const r = await ak.getReservation(hold.reservationId); if (r?.keyId !== caller.keyId) deny();
   */
  async getReservation(reservationId: string): Promise<ReservationInfo | null> {
    return this.spending.findHold(reservationId);
  }

  /**
   * An operator's correction: adds `costCents` (negative for a refund) to a key's spend,
   * with a reason, in the ledger. Enforcement sees it at once; it may take a key over budget.
   *
   * @example await ak.adjust(42, { costCents: -150, reason: 'refund: provider outage' })
   */
  async adjust(keyId: number | string, options: { costCents: CentsInput; reason: string; metadata?: Record<string, unknown> }): Promise<AdjustResult> {
    return this.spending.adjust(keyIdNumber(keyId), options);
  }

  /**
   * Marks holds past their ttl as expired, with an 'expire' ledger row each. Not needed for
   * correctness (an expired hold stops counting at once); it keeps the holds table tidy.
   * Returns how many it swept.
   */
  sweepExpiredHolds(limit = 1_000): Promise<number> {
    if (!Number.isInteger(limit) || limit <= 0) {
      return Promise.reject(new AgentKeyError('invalid_argument', 'limit must be a positive whole number.'));
    }
    return this.spending.sweep(limit);
  }

  // Account ceilings.

  /**
   * Sets an account's ceiling: every key of the account, in or out of a tree, counts
   * against it, atomically with its own budget. `budgetPeriod` is 'day', 'week' or 'month'
   * (calendar, UTC) or null for a lifetime ceiling; or `budgets` gives several windows (the
   * first is the ceiling). The current period's spend so far comes from the ledger.
   *
   * @example await ak.setAccountBudget('acct_1', { budgetCents: 10000, budgetPeriod: 'month' })
   */
  async setAccountBudget(
    accountId: string | number,
    options: AccountBudgetOptions,
  ): Promise<AccountBudget> {
    return this.keys.setCeiling(accountId, options);
  }

  /**
   * The table's alert percents: each window of every key and account that sets none of its
   * own writes one 'budget.threshold' event (outbox) when its spend reaches each, once per
   * period. null (or []) for none.
   *
   * @example await ak.setAlerts([50, 80, 100])
   */
  async setAlerts(percents: number[] | null): Promise<number[] | null> {
    return this.keys.setGlobalAlerts(percents);
  }

  /** The table's alert percents, or null when none are set. */
  async getAlerts(): Promise<number[] | null> {
    return this.keys.globalAlerts();
  }

  /** An account's ceiling and spend this period, or null when it has none. */
  async getAccountBudget(accountId: string | number): Promise<AccountBudget | null> {
    return this.keys.getCeiling(accountId);
  }

  /** Removes an account's ceiling. True when it had one. */
  async clearAccountBudget(accountId: string | number): Promise<boolean> {
    return this.keys.clearCeiling(accountId);
  }

  // Account rate limits.

  /**
   * Sets an account's rate limit (`{ requests, per }`) and/or concurrency limit over all of
   * its keys together: a field left out is kept, null removes it. Returns the limits, or
   * null when none is left.
   *
   * @example await ak.setAccountRateLimit('acct_1', { rateLimit: { requests: 600, per: '1m' }, concurrency: 20 })
   */
  async setAccountRateLimit(accountId: string | number, changes: AccountRateLimitChanges): Promise<AccountRateLimit | null> {
    return this.accountLimits.set(accountId, changes);
  }

  /** An account's rate and concurrency limits, or null when it has none. */
  async getAccountRateLimit(accountId: string | number): Promise<AccountRateLimit | null> {
    return this.accountLimits.get(accountId);
  }

  /** Removes an account's rate and concurrency limits. True when it had some. */
  async clearAccountRateLimit(accountId: string | number): Promise<boolean> {
    return this.accountLimits.clear(accountId);
  }

  // Reports from the ledger.

  /**
   * Spend from the ledger (charges, commits and adjustments), for one key, one account or
   * all, over [since, until), with optional hourly or daily buckets in UTC.
   *
   * @example await ak.usage({ accountId: 'acct_1', since: '2026-11-01', bucket: 'day' })
   */
  async usage(query: UsageQuery = {}): Promise<UsageReport> {
    // (Not an object: usage() says so, as for any bad query.)
    if (query === null || typeof query !== 'object') return this.reports.usage(query);
    const { windows, ...q } = query;
    if (windows !== undefined && typeof windows !== 'boolean') throw new AgentKeyError('invalid_argument', 'windows must be true or false.');
    const report = await this.reports.usage(q);
    if (!windows) return report;
    // Per window: what the key (or the account) has spent in each window's current period.
    if (q.keyId !== undefined) return { ...report, windows: (await this.keys.get(q.keyId))?.budgets ?? [] };
    if (q.accountId !== undefined) return { ...report, windows: (await this.keys.getCeiling(q.accountId))?.budgets ?? [] };
    throw new AgentKeyError('invalid_argument', 'windows: true needs a keyId or an accountId (whose windows to report).');
  }

  /**
   * The ledger, newest first: every charge, hold, commit, release, expiry, reset and
   * adjustment of a key or an account (or all), with its metadata. Page with `before`
   * (the last id you got).
   *
   * @example await ak.ledger({ keyId: 42, limit: 20 })
   */
  async ledger(query: { keyId?: number | string; accountId?: string | number; before?: number; limit?: number } = {}): Promise<LedgerEntry[]> {
    return this.reports.ledger(query);
  }

  /**
   * Every account that has keys or a ceiling, in id order, for overviews: how many keys
   * (and how many are live), its lifetime spend from the ledger, and its ceiling or null.
   *
   * @example for (const a of await ak.listAccounts()) console.log(a.accountId, a.spentCents, a.ceiling?.remainingCents)
   */
  async listAccounts(options: { limit?: number } = {}): Promise<AccountSummary[]> {
    const accounts = await this.reports.accounts(options);
    const limits = await this.accountLimits.of(accounts.map((a) => a.accountId));
    return accounts.map((a) => ({ ...a, rateLimit: limits.get(a.accountId)?.rateLimit ?? null, concurrency: limits.get(a.accountId)?.concurrency ?? null }));
  }

  /**
   * Checks that every key's spend counter equals the sum of its spend rows in the ledger
   * (the ledger is the truth; counters are its cache).
   */
  async audit(options: { keyId?: number | string } = {}): Promise<AuditResult> {
    return this.reports.audit(options);
  }

  // Events (the outbox) and webhooks.

  /**
   * Calls `handler` with each event written to the outbox after the returned promise
   * resolves (`budget.threshold`, `key.revoked`, `key.expired`, `hold.expired`,
   * `overage.recorded`; or only `types`), in order and one at a time, in this process:
   * woken at once by LISTEN (PostgreSQL and PGlite), and polling every `pollMs` besides, so
   * events from every process are seen. A handler that throws never stops the others
   * (`onError` hears it). Resolves to a function that unsubscribes. Delivery is at most
   * once per subscription: use webhooks for retries.
   *
   * @example const stop = await ak.onEvent((e) => console.log(e.type, e.data), { types: ['key.expired'] })
   */
  async onEvent(handler: (event: AgentKeyEvent) => unknown, options?: OnEventOptions): Promise<() => Promise<void>> {
    return this.events.onEvent(handler, options);
  }

  /**
   * The outbox, newest first: every event written, as `onEvent()` handlers get it. Page
   * with `before` (an event id).
   *
   * @example await ak.outboxEvents({ type: 'budget.threshold', limit: 20 })
   */
  async outboxEvents(query?: OutboxEventQuery): Promise<AgentKeyEvent[]> {
    return this.events.outboxEvents(query);
  }

  /**
   * Writes a `key.expired` event for up to `limit` keys whose expiry has passed, once per
   * key and expiry even with several sweepers at once. The deliverer of `agentkey/webhooks`
   * runs it on every tick. Returns how many it wrote.
   */
  sweepExpiredKeys(limit = 1_000): Promise<number> {
    return this.events.sweepExpiredKeys(limit);
  }

  /**
   * Adds a webhook endpoint: events (all, or `events`; every account's, or `accountId`'s)
   * are posted to `url`, signed per Standard Webhooks with the endpoint's own secret,
   * returned this once. A deliverer (`agentkey/webhooks`, or `agentkey serve`) sends them.
   *
   * @example const { id, secret } = await ak.createWebhook({ url: 'https://example.com/hooks', events: ['budget.threshold'] })
   */
  async createWebhook(options: CreateWebhookOptions): Promise<CreatedWebhook> {
    return this.events.createWebhook(options);
  }

  /** Every webhook endpoint, in id order, without secrets. */
  async listWebhooks(options?: { limit?: number }): Promise<Webhook[]> {
    return this.events.listWebhooks(options);
  }

  /** One webhook endpoint without its secret, or null. */
  async getWebhook(id: number | string): Promise<Webhook | null> {
    return this.events.getWebhook(id);
  }

  /**
   * Changes an endpoint's url, events, account, description or enabled flag;
   * `rotateSecret: true` gives it a new secret, returned this once. Unknown ids throw
   * `webhook_not_found`. A disabled endpoint gets no deliveries for the events written meanwhile.
   *
   * @example await ak.updateWebhook(3, { enabled: false })
   */
  async updateWebhook(id: number | string, changes: WebhookChanges): Promise<Webhook & { secret?: string }> {
    return this.events.updateWebhook(id, changes);
  }

  /** Removes an endpoint with its deliveries and their attempts. True when it existed. */
  async deleteWebhook(id: number | string): Promise<boolean> {
    return this.events.deleteWebhook(id);
  }

  /**
   * Deliveries newest first (one per event and endpoint), each with every attempt: status
   * code or error, and duration. Page with `before` (a delivery id).
   *
   * @example await ak.webhookDeliveries({ webhookId: 3, status: 'failed' })
   */
  async webhookDeliveries(query?: WebhookDeliveryQuery): Promise<WebhookDelivery[]> {
    return this.events.deliveries(query);
  }

  /** How many deliveries are pending (of them, failing: tried, not yet delivered) and failed for good. */
  async webhookStats(): Promise<WebhookStats> {
    return this.events.stats();
  }

  /**
   * The queue a webhook deliverer works from (claims under a lease, attempts recorded).
   * For `agentkey/webhooks`' `startDeliverer()`; applications rarely call it.
   */
  deliveryQueue(): DeliveryQueue {
    return this.events.queue();
  }

  /** The key a raw key names, or null when it cannot be one of this table's (a malformed key costs no query). */
  private keyRef(rawKey: string): KeyRef | null {
    const hash = lookupHash(rawKey, this.keyPrefix);
    return hash === null ? null : { hash };
  }
}

/** `validate()`'s options: `acquire`, true or false. */
function acquireOption(options: unknown): boolean {
  if (options === undefined) return false;
  const o = checkOptions<ValidateOptions>(options, ['acquire'], 'validate() options');
  if (o.acquire !== undefined && typeof o.acquire !== 'boolean') throw new AgentKeyError('invalid_argument', 'acquire must be true or false.');
  return o.acquire === true;
}
