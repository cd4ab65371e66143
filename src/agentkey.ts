// One file for now (about 1,250 lines): the AgentKey facade, the public types and the
// option checks of every call. Issue 15 splits it by job (types, lifecycle, validation and
// caching, spending, reports, error mapping); until then, the sections follow that order.
import { AgentKeyError } from './errors.js';
import { checkKeyPrefix, hashKey, lookupHash, mintKey, randomId } from './keys.js';
import { type Cents, type CentsInput, MAX_TOTAL_MICROS, type Micros, budgetToMicros, describe, microsToCents, microsToCentsNumber, roomMicros } from './money.js';
import { accountIdText, checkOptions, keyIdNumber, optionalText } from './options.js';
import { invalidScopes, parseScopes, scopeAllows } from './scopes.js';
import { type BudgetPeriod, addDuration, parseDuration, parseInstant, parsePeriod } from './time.js';
import { DEFAULT_TIMEOUT_MS, type Db, type PoolLike, isDatabaseTimeout, toDb } from './store/db.js';
import { type TableNames, tableNames } from './store/identifiers.js';
import { type InsertedKey, type KeyRef, type KeyRow, KeyStore } from './store/keys.js';
import type { LedgerKind } from './store/ledger-schema.js';
import { migrate } from './store/migrations.js';
import { type BatchItem, type SpendOutcome, type SpendRequest, SpendStore, refName } from './store/spend.js';
import { AccountStore } from './store/accounts.js';
import { type ListenHandlers, type Subscription, listen } from './store/listen.js';
import { type CacheStats, type CachedKey, KeyCache } from './cache.js';
import { Coalescer, ItemFailure } from './coalesce.js';
import { Touches } from './touches.js';
import { DEFAULT_MAX_DEPTH, fitUnderParent, mayActOn } from './tree.js';
import { type AccountBudget, type KeyInfo, iso, toAccountBudget, toKeyInfo } from './views.js';
import {
  type AdjustResult,
  type ChargeOptions,
  type CommitOptions,
  type CommitResult,
  type ReleaseResult,
  type ReserveOptions,
  type ReserveResult,
  type TrackUsageResult,
  type KeyRefusal,
  CHARGE_OPTIONS,
  RESERVE_OPTIONS,
  adjustInput,
  costMicros,
  figures,
  isReservationId,
  limitedBy,
  keyStateReason,
  metadataJson,
  spendInput,
  type ReservationStatus,
} from './spending.js';

export type { AccountBudget, CacheStats, KeyInfo };
export type { LimitedBy } from './spending.js';
export type { ReservationStatus } from './spending.js';
export type { AdjustResult, ChargeOptions, CommitOptions, CommitResult, KeyRefusal, ReleaseResult, ReserveOptions, ReserveResult, TrackUsageResult };

export interface AgentKeyOptions {
  /** A node-postgres `Pool` or a PGlite instance. */
  pool: PoolLike;
  /** The keys table, optionally schema-qualified. Default 'sdk_api_keys'. */
  tableName?: string;
  /** Prefix of every minted key. Default 'ak_'. */
  keyPrefix?: string;
  /** When set, `create()` refuses any scope not in this list. */
  validScopes?: readonly string[];
  /** How deep delegation trees may grow (a root key is depth 0). Default 5. */
  maxDepth?: number;
  /**
   * The in-process cache of validated keys, or false for none. A change to a key (revoke,
   * expiry, scopes, budget...) drops it at once here and, through LISTEN/NOTIFY, in every
   * other process on the database. Budget figures in a cached result may lag other
   * processes' spending by up to `ttlMs`; charges and holds always decide on the database.
   * Default `{ maxKeys: 10000, ttlMs: 5000 }`.
   */
  cache?: CacheOptions | false;
  /**
   * Coalescing of concurrent charges and holds into one statement per batch, with the
   * outcome each would have had one after another; false sends each on its own.
   * Default `{ maxBatch: 128, lanes: 2 }`.
   */
  batching?: BatchingOptions | false;
  /**
   * The longest any one call waits on the database, in ms: for a lock another transaction
   * holds, a slow statement, a connection that stopped answering. Past it the call throws
   * `AgentKeyError` 'storage_timeout'. A charge or hold refused that way while it waited
   * for a lock changed nothing; one whose database stopped answering may still land, so
   * retry it with the same idempotency key. `migrate()` and the reports over the whole
   * ledger (`usage`, `audit`, `listAccounts`) allow themselves at least a minute. Default 5000.
   */
  timeoutMs?: number;
}

export interface CacheOptions {
  /** Most keys kept; the least recently used go first. Default 10000. */
  maxKeys?: number;
  /** How long a validation is served from memory at most, in ms. Default 5000. */
  ttlMs?: number;
}

export interface BatchingOptions {
  /** Most charges and holds in one statement. Default 128. */
  maxBatch?: number;
  /** Batches in flight at once (each holds one connection while it runs). Default 2. */
  lanes?: number;
}

export interface CreateKeyOptions {
  accountId: string | number;
  scopes?: string[] | null;
  /** Cents: a number, or a decimal string (`"500"`, `"0.5"`) read exactly; null for no cap. */
  budgetCents?: CentsInput | null;
  budgetPeriod?: BudgetPeriod | null;
  /** '30s', '30m', '1h', '7d', '2w', '1mo'; null for no expiry. */
  expiresIn?: string | null;
  /** An absolute expiry instead of `expiresIn`. */
  expiresAt?: Date | string | null;
  delegatedBy?: string | null;
  name?: string | null;
  userId?: string | null;
  /** Makes the key a child of this key: same account, never wider, and its spend counts against the parent. */
  parentId?: number | string | null;
}

/** What `create()` returns: the package's `CreateKeyResult`. */
export interface CreateKeyResult {
  /** The raw key: returned once, never stored. */
  key: string;
  id: number;
  scopes: string[] | null;
  budgetCents: number | null;
  budgetPeriod: BudgetPeriod | null;
  expiresAt: string | null;
}
/** This project's earlier name for `CreateKeyResult`. */
export type CreatedKey = CreateKeyResult;

/** Options of `ensureSubject()`: those of `create()`, with `accountId` optional (it defaults to the subject). */
export type EnsureSubjectOptions = Omit<CreateKeyOptions, 'accountId' | 'expiresAt' | 'parentId'> & { accountId?: string | number };
/** This project's earlier name for `EnsureSubjectOptions`. */
export type SubjectOptions = EnsureSubjectOptions;

/** A valid key as `validate()` reports it: the package's `ValidateResult`, plus `keyId` and `budgetHeldCents`. */
export interface ValidateResult {
  valid: true;
  /** The key's id (the package's name for it). */
  id: number;
  /** The same id, under this project's earlier name. */
  keyId: number;
  accountId: string | number;
  userId: string | null;
  /** The key's label: 'default' when the row has none, as in the package. */
  name: string;
  scopes: string[] | null;
  budgetCents: number | null;
  /**
   * A number, as in the package: exact up to MAX_CENTS ($5 billion); past it (only an
   * unlimited key gets there) the nearest number, and `getKey()` has the exact figure.
   */
  budgetUsedCents: number;
  /** budget - spent - held: what a new charge or hold may still take. */
  budgetRemainingCents: number | null;
  /** Money held by live reservations (a number, like budgetUsedCents). */
  budgetHeldCents: number;
  budgetPeriod: BudgetPeriod | null;
  budgetResetAt: string | null;
  expiresAt: string | null;
  delegatedBy: string | null;
}
/** This project's earlier name for `ValidateResult`. */
export type ValidKey = ValidateResult;

/**
 * A refused key: unknown or malformed ('invalid'), 'expired', 'revoked' (itself or an
 * ancestor), or 'budget_exceeded': nothing left to spend under its own budget, an
 * ancestor's or its account's.
 */
export interface ValidateFailure {
  valid: false;
  reason: 'invalid' | 'expired' | 'revoked' | 'budget_exceeded';
}
/** This project's earlier names. */
export type InvalidKey = ValidateFailure;
export type InvalidReason = ValidateFailure['reason'];

export type ValidationResult = ValidateResult | ValidateFailure;

/** Options of `trackUsage()`. */
export type UsageOptions = ChargeOptions;

export interface UsageQuery {
  keyId?: number | string;
  accountId?: string | number;
  since?: Date | string;
  until?: Date | string;
  bucket?: 'hour' | 'day';
}

/** Figures here are `Cents`: numbers up to MAX_CENTS, exact decimal strings past it. */
export interface UsageReport {
  /** Spend counted toward budgets: charges, commits and adjustments. */
  totalCents: Cents;
  count: number;
  /** Real cost that no budget could take (never counted toward a cap); 0 when none. */
  overageCents: Cents;
  buckets: { start: string; costCents: Cents; count: number; overageCents: Cents }[];
}

/** An account as `listAccounts()` reports it. */
export interface AccountSummary {
  accountId: string;
  /** Keys of the account, revoked and expired included. */
  keys: number;
  /** Keys neither revoked nor expired. */
  liveKeys: number;
  /** Spend from the ledger over the account's whole life (`Cents`: a string past MAX_CENTS). */
  spentCents: Cents;
  /** Overage of its keys over their whole life: real cost no budget could take, not in spentCents. */
  overageCents: Cents;
  /** Its ceiling and spend this period, or null when it has none. */
  ceiling: AccountBudget | null;
}

/** One ledger row as `ledger()` reports it. Holds, releases and expiries move held money; the rest spend. */
export interface LedgerEntry {
  id: number;
  keyId: number;
  accountId: string;
  /** 'overage' follows a commit: the part of its cost no budget could take, not counted toward any. */
  kind: LedgerKind;
  /** A number, except a period's reset or an opening balance past MAX_CENTS (then an exact string). */
  amountCents: Cents;
  reservationId: string | null;
  metadata: Record<string, unknown> | null;
  createdAt: string;
}

/** A hold as `getReservation()` reports it. */
export interface ReservationInfo {
  reservationId: string;
  keyId: number;
  accountId: string;
  heldCents: number;
  /** What a commit recorded (its real cost); null until committed. */
  costCents: number | null;
  /** The part of costCents that no budget could take (overage); null until committed. */
  overageCents: number | null;
  status: ReservationStatus;
  expiresAt: string;
  createdAt: string;
  settledAt: string | null;
}

export interface AuditResult {
  /** True when every checked key's spend counter equals its ledger. */
  ok: boolean;
  keysChecked: number;
  /** Figures are `Cents`: numbers up to MAX_CENTS, exact decimal strings past it. */
  mismatches: { keyId: number; counterCents: Cents; ledgerCents: Cents }[];
  /** Accounts whose ceiling counter differs from their spend in the ledger this period. */
  accountMismatches: { accountId: string; counterCents: Cents; ledgerCents: Cents }[];
  /** Keys whose overage counter differs from their overage rows in the ledger. */
  overageMismatches: { keyId: number; counterCents: Cents; ledgerCents: Cents }[];
  /** Overage recorded for the checked keys (never part of any spend counter). */
  overageCents: Cents;
}

const CREATE_OPTIONS = [
  'accountId', 'scopes', 'budgetCents', 'budgetPeriod', 'expiresIn', 'expiresAt', 'delegatedBy', 'name', 'userId', 'parentId',
] as const;
const SUBJECT_OPTIONS = CREATE_OPTIONS.filter((o) => o !== 'expiresAt' && o !== 'parentId');

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
  private readonly db: Db;
  private readonly names: TableNames;
  private readonly store: KeyStore;
  private readonly spending: SpendStore;
  private readonly accounts: AccountStore;
  /** The same stores for reports that read the whole ledger (usage, audit, listAccounts), with a longer bound. */
  private readonly reports: SpendStore;
  private readonly accountReports: AccountStore;
  private readonly validScopes: ReadonlySet<string> | null;
  private readonly maxDepth: number;
  private readonly pool: PoolLike;
  private readonly cache: KeyCache | null;
  /** Reads in flight, shared by validations of the same key, with the `changes` count they started at. */
  private readonly loading = new Map<string, { changes: number; read: Promise<KeyRow | null> }>();
  /** Moves on every key change seen here: a read that started before one is never shared after it. */
  private changes = 0;
  private readonly lookups: Coalescer<string, KeyRow | null>;
  private subscription: Subscription | null = null;
  private listener: ListenHandlers | null = null;
  private closed = false;
  private readonly batches: Coalescer<BatchItem, SpendOutcome> | null;
  /** Items whose key, account or hold was held by another transaction: tried again, one statement at a time. */
  private readonly retries: Coalescer<Retry, SpendOutcome> | null;
  /**
   * Refs (by refName) whose items found their rows still held after a retry statement's
   * wait too, with how many such items are still trying: a lock that lasts. Their later
   * calls go straight to `retries`, so batches of other keys never wait for it.
   */
  private readonly locked = new Map<string, number>();
  private readonly timeoutMs: number;
  private readonly touches: Touches;

  constructor(options: AgentKeyOptions) {
    const o = checkOptions<AgentKeyOptions>(
      options,
      ['pool', 'tableName', 'keyPrefix', 'validScopes', 'maxDepth', 'cache', 'batching', 'timeoutMs'],
      'new AgentKey()',
    );
    this.maxDepth = o.maxDepth ?? DEFAULT_MAX_DEPTH;
    if (!Number.isInteger(this.maxDepth) || this.maxDepth < 0 || this.maxDepth > 100) {
      throw new AgentKeyError('invalid_argument', 'maxDepth must be a whole number from 0 to 100.');
    }
    this.names = tableNames(o.tableName ?? 'sdk_api_keys');
    this.tableName = this.names.name;
    this.keyPrefix = checkKeyPrefix(o.keyPrefix ?? 'ak_');
    const valid = o.validScopes === undefined ? null : parseScopes(o.validScopes, null, 'validScopes');
    this.validScopes = valid ? new Set(valid) : null;
    this.timeoutMs = timeoutOption(o.timeoutMs);
    this.db = toDb(o.pool, this.timeoutMs);
    this.pool = o.pool;
    this.store = new KeyStore(this.db, this.names);
    this.spending = new SpendStore(this.db, this.names);
    this.accounts = new AccountStore(this.db, this.names);
    const reportDb = toDb(o.pool, Math.max(this.timeoutMs, REPORT_TIMEOUT_MS));
    this.reports = new SpendStore(reportDb, this.names);
    this.accountReports = new AccountStore(reportDb, this.names);
    const cache = cacheOptions(o.cache);
    this.cache = cache && new KeyCache(cache.maxKeys, cache.ttlMs);
    const batching = batchingOptions(o.batching);
    this.batches = batching && new Coalescer((items) => this.spendBatch(items, Math.min(BATCH_WAIT_MS, this.timeoutMs)), batching);
    this.retries = batching && new Coalescer((items) => this.retryBatch(items), { maxBatch: batching.maxBatch, lanes: 1 });
    this.lookups = new Coalescer((hashes) => this.store.findByHashes(hashes), { maxBatch: 256, lanes: 2 });
    this.touches = new Touches((ids, at) => this.store.touch(ids, at), TOUCH_INTERVAL_MS);
  }

  /**
   * Creates or upgrades the keys table: idempotent, versioned, safe to run from several
   * processes at once. Returns the migration versions it applied.
   */
  migrate(): Promise<number[]> {
    return this.guard(() => migrate(this.db, this.names));
  }

  /**
   * Mints a scoped, budgeted key. The raw key is in the result and nowhere else.
   *
   * @example await ak.create({ accountId: 'acct_1', budgetCents: 5000, budgetPeriod: 'month', expiresIn: '7d' })
   */
  async create(options: CreateKeyOptions): Promise<CreateKeyResult> {
    const o = checkOptions<CreateKeyOptions>(options, CREATE_OPTIONS, 'create()');
    let fields = this.keyFields(o, accountIdText(o.accountId));
    let parent: { id: number; ancestorIds: number[] } | null = null;
    if (o.parentId != null) {
      const parentId = keyIdNumber(o.parentId, 'parentId');
      const row = await this.guard(() => this.store.find({ id: parentId }));
      if (!row) throw new AgentKeyError('parent_not_found', `No key has id ${parentId}; a child key needs an existing parent.`);
      const given = { scopes: o.scopes !== undefined, expiry: o.expiresIn !== undefined || o.expiresAt !== undefined };
      fields = fitUnderParent(row, fields, given, this.maxDepth);
      parent = { id: row.id, ancestorIds: row.ancestor_ids.map(Number) };
    }
    const minted = mintKey(this.keyPrefix);
    const row = await this.guard(() =>
      this.store.insert({ ...fields, hash: minted.hash, visiblePrefix: minted.visiblePrefix, subject: null, parent }),
    );
    return { key: minted.raw, ...createdFields(row) };
  }

  /**
   * Checks a raw key: `{ valid: true, ...metadata }`, or `{ valid: false, reason }` with
   * reason 'invalid', 'expired' or 'revoked'. A malformed key costs no query.
   */
  async validate(rawKey: string): Promise<ValidationResult> {
    const hash = lookupHash(rawKey, this.keyPrefix);
    if (hash === null) return { valid: false, reason: 'invalid' };
    return this.validateRef({ hash });
  }

  /**
   * Adds a cost to the key's spend, atomically and never past its budget.
   *
   * @example await ak.trackUsage(key, { costCents: 0.03 }) // { success: true, ... }
   */
  async trackUsage(rawKey: string, usage: UsageOptions): Promise<TrackUsageResult> {
    const input = spendInput(usage, CHARGE_OPTIONS, 'trackUsage()');
    if (input.micros === null) return { success: false, reason: 'invalid_cost' };
    const hash = lookupHash(rawKey, this.keyPrefix);
    if (hash === null) return { success: false, reason: 'invalid_key' };
    // As in the package: a free call records nothing and needs no round trip.
    if (input.micros === 0) return { success: true };
    return this.chargeRef({ hash }, { ...input, micros: input.micros });
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
  async reserve(rawKey: string, options: ReserveOptions): Promise<ReserveResult> {
    const input = spendInput(options, RESERVE_OPTIONS, 'reserve()');
    if (input.micros === null) return { success: false, reason: 'invalid_cost' };
    const hash = lookupHash(rawKey, this.keyPrefix);
    if (hash === null) return { success: false, reason: 'invalid_key' };
    return this.reserveRef({ hash }, { ...input, micros: input.micros });
  }

  /** `reserve()` for an external subject created with `ensureSubject()`. */
  async reserveBySubject(subject: string, options: ReserveOptions): Promise<ReserveResult> {
    const s = subjectText(subject);
    const input = spendInput(options, RESERVE_OPTIONS, 'reserveBySubject()');
    if (input.micros === null) return { success: false, reason: 'invalid_cost' };
    return this.reserveRef({ subject: s }, { ...input, micros: input.micros });
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
  async commit(reservationId: string, options: CommitOptions): Promise<CommitResult> {
    if (options === null || typeof options !== 'object') return { success: false, reason: 'invalid_cost' };
    const o = checkOptions<CommitOptions>(options, ['costCents', 'metadata'], 'commit()');
    const micros = costMicros(o.costCents);
    if (micros === null) return { success: false, reason: 'invalid_cost' };
    const metadata = metadataJson(o.metadata);
    if (!isReservationId(reservationId)) return { success: false, reason: 'reservation_not_found' };
    const out = await this.settle(reservationId, 'commit', micros, metadata);
    if (out.outcome === 'not_found') return { success: false, reason: 'reservation_not_found' };
    if (out.outcome === 'already_released') return { success: false, reason: 'already_released' };
    if (out.outcome === 'idempotency_conflict') return { success: false, reason: 'idempotency_conflict' };
    const held = out.hold ?? 0;
    const cost = out.committed ?? 0;
    const overage = out.overage ?? 0;
    const spent = figures(out);
    return {
      success: true,
      reservationId,
      // One step's figures never pass MAX_CENTS: numbers, exact.
      costCents: microsToCentsNumber(cost),
      chargedCents: microsToCentsNumber(cost - overage),
      overageCents: microsToCentsNumber(overage),
      heldCents: microsToCentsNumber(held),
      releasedCents: microsToCentsNumber(Math.max(0, held - cost)),
      overHoldCents: microsToCentsNumber(Math.max(0, cost - held)),
      holdExpired: out.expired === true,
      overBudget: overage > 0,
      ...(overage > 0 ? { limitedBy: limitedBy(out) } : {}),
      ...spent,
      ...(out.outcome === 'replayed' ? { replayed: true as const } : {}),
    };
  }

  /** Gives a whole hold back. A second release returns the first outcome; an expired hold gives back 0 (no replay). */
  async release(reservationId: string): Promise<ReleaseResult> {
    if (!isReservationId(reservationId)) return { success: false, reason: 'reservation_not_found' };
    const out = await this.settle(reservationId, 'release', 0, null);
    if (out.outcome === 'not_found') return { success: false, reason: 'reservation_not_found' };
    if (out.outcome === 'already_committed') return { success: false, reason: 'already_committed' };
    return {
      success: true,
      reservationId,
      releasedCents: microsToCentsNumber(out.released ?? 0),
      holdExpired: out.expired === true,
      ...(out.outcome === 'replayed' ? { replayed: true as const } : {}),
    };
  }

  /**
   * The id of the key a raw key is, whatever its status (revoked and expired keys too), or
   * null when it is no key of this table. For checking ownership, e.g. that the key settling
   * a hold is the one that took it: a key revoked mid-call must still be able to commit.
   */
  async identify(rawKey: string): Promise<number | null> {
    const hash = lookupHash(rawKey, this.keyPrefix);
    if (hash === null) return null;
    const row = await this.guard(() => this.store.find({ hash }));
    return row ? row.id : null;
  }

  /**
   * Where a hold stands: its key, amount, status and expiry; null when no hold has this id.
   * A hold past its expiry reads 'expired' even before `sweepExpiredHolds()` marks it.
   *
   * @example const r = await ak.getReservation(hold.reservationId); if (r?.keyId !== caller.keyId) deny();
   */
  async getReservation(reservationId: string): Promise<ReservationInfo | null> {
    if (!isReservationId(reservationId)) return null;
    const row = await this.guard(() => this.spending.findHold(reservationId));
    if (!row) return null;
    return {
      reservationId: row.id,
      keyId: row.key_id,
      accountId: row.account_id,
      heldCents: microsToCentsNumber(row.amount_micros),
      costCents: row.committed_micros === null ? null : microsToCentsNumber(row.committed_micros),
      overageCents: row.committed_micros === null ? null : microsToCentsNumber(row.overage_micros ?? 0),
      status: row.lapsed ? 'expired' : row.status,
      expiresAt: iso(row.expires_at) as string,
      createdAt: iso(row.created_at) as string,
      settledAt: iso(row.settled_at),
    };
  }

  /**
   * An operator's correction: adds `costCents` (negative for a refund) to a key's spend,
   * with a reason, in the ledger. Enforcement sees it at once; it may take a key over budget.
   *
   * @example await ak.adjust(42, { costCents: -150, reason: 'refund: provider outage' })
   */
  async adjust(keyId: number | string, options: { costCents: CentsInput; reason: string; metadata?: Record<string, unknown> }): Promise<AdjustResult> {
    const id = keyIdNumber(keyId);
    const { micros, metadata } = adjustInput(options);
    const out = await this.spend({ id }, { op: 'adjust', micros, idempotencyKey: null, metadata, holdId: null, ttlMs: null });
    if (out.outcome === 'invalid') return { success: false, reason: 'invalid_key' };
    if (out.outcome === 'refund_exceeds_spend') return { success: false, reason: 'refund_exceeds_spend' };
    return { success: true, ...figures(out) };
  }

  /**
   * Spend from the ledger (charges, commits and adjustments), for one key, one account or
   * all, over [since, until), with optional hourly or daily buckets in UTC.
   *
   * @example await ak.usage({ accountId: 'acct_1', since: '2026-11-01', bucket: 'day' })
   */
  async usage(query: UsageQuery = {}): Promise<UsageReport> {
    const q = checkOptions<UsageQuery>(query, ['keyId', 'accountId', 'since', 'until', 'bucket'], 'usage()');
    if (q.bucket !== undefined && q.bucket !== 'hour' && q.bucket !== 'day') {
      throw new AgentKeyError('invalid_argument', `bucket must be 'hour' or 'day'; got ${JSON.stringify(q.bucket)}.`);
    }
    const report = await this.guard(() =>
      this.reports.usage({
        keyId: q.keyId === undefined ? null : keyIdNumber(q.keyId),
        accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
        since: q.since === undefined ? null : parseInstant(q.since, 'since'),
        until: q.until === undefined ? null : parseInstant(q.until, 'until'),
        bucket: q.bucket ?? null,
      }),
    );
    return {
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

  /**
   * Checks that every key's spend counter equals the sum of its spend rows in the ledger
   * (the ledger is the truth; counters are its cache).
   */
  async audit(options: { keyId?: number | string } = {}): Promise<AuditResult> {
    const o = checkOptions<{ keyId?: number | string }>(options, ['keyId'], 'audit()');
    const id = o.keyId === undefined ? null : keyIdNumber(o.keyId);
    const { checked, mismatches, accounts, overage, overageMicros } = await this.guard(() => this.reports.audit(id));
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

  /**
   * Marks holds past their ttl as expired, with an 'expire' ledger row each. Not needed for
   * correctness (an expired hold stops counting at once); it keeps the holds table tidy.
   * Returns how many it swept.
   */
  sweepExpiredHolds(limit = 1_000): Promise<number> {
    if (!Number.isInteger(limit) || limit <= 0) {
      return Promise.reject(new AgentKeyError('invalid_argument', 'limit must be a positive whole number.'));
    }
    return this.guard(() => this.spending.sweep(limit));
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
    const id = keyIdNumber(keyId);
    const account = accountId === undefined || accountId === null ? null : accountIdText(accountId);
    const o = checkOptions<{ by?: number | string }>(options ?? {}, ['by'], 'revoke()');
    if (o.by !== undefined) {
      const by = keyIdNumber(o.by, 'by');
      const [actor, target] = await this.guard(() => Promise.all([this.store.find({ id: by }), this.store.find({ id })]));
      if (!actor) throw new AgentKeyError('invalid_argument', `No key has id ${by}; \`by\` must name the key that revokes.`);
      if (!target || target.status === 'revoked' || (account !== null && String(target.account_id) !== account)) return false;
      if (!mayActOn(actor, target)) {
        throw new AgentKeyError(
          'key_outside_tree',
          `Key ${by} may revoke only itself and its own descendants${actor.parent_id === null ? ' and keys of its account' : ''}; key ${id} is not one of them.`,
        );
      }
    }
    const revoked = await this.guard(() => this.store.revoke(id, account));
    // Here at once; other processes hear it from the database.
    this.changes++;
    if (revoked) this.cache?.invalidate(id);
    return revoked;
  }

  /** Counters of the validation cache (null when it is off). */
  cacheStats(): CacheStats | null {
    return this.cache?.stats() ?? null;
  }

  /** Writes the `last_used_at` stamps noted so far (they are written every second anyway). */
  flush(): Promise<void> {
    return this.guard(() => this.touches.flush());
  }

  /**
   * Finishes what is in flight (charges, holds, `last_used_at` stamps) and stops listening
   * for changes. The pool stays open: it is yours. Later calls still work, uncached.
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.batches?.settled();
    await this.retries?.settled();
    this.touches.stop();
    const subscription = this.subscription;
    this.subscription = null;
    await subscription?.close();
    this.listener = null;
    this.cache?.clear();
    await this.flush();
  }

  /**
   * Creates, on first sight, a budget row for an external identity (e.g. a Clerk machine).
   * Idempotent; issues no token. `accountId` defaults to the subject.
   */
  async ensureSubject(subject: string, options: SubjectOptions = {}): Promise<void> {
    const s = subjectText(subject);
    const o = checkOptions<SubjectOptions>(options, SUBJECT_OPTIONS, 'ensureSubject()');
    const fields = this.keyFields(o, accountIdText(o.accountId ?? s));
    await this.guard(() =>
      this.store.insert({ ...fields, hash: `subject:${hashKey(s)}`, visiblePrefix: 'subject', subject: s, parent: null }),
    );
  }

  /** `validate()` for an external subject created with `ensureSubject()`. */
  async validateBySubject(subject: string): Promise<ValidationResult> {
    return this.validateRef({ subject: subjectText(subject) });
  }

  /** `trackUsage()` for an external subject created with `ensureSubject()`. */
  async trackUsageBySubject(subject: string, usage: UsageOptions): Promise<TrackUsageResult> {
    const s = subjectText(subject);
    const input = spendInput(usage, CHARGE_OPTIONS, 'trackUsageBySubject()');
    if (input.micros === null) return { success: false, reason: 'invalid_cost' };
    if (input.micros === 0) return { success: true };
    return this.chargeRef({ subject: s }, { ...input, micros: input.micros });
  }

  /**
   * Lists an account's keys (or, without `accountId`, every account's) without their
   * secrets, with budget, spent, held and remaining, in id order.
   *
   * @example await ak.listKeys({ accountId: 'acct_1', parentId: 42 })
   */
  async listKeys(query: { accountId?: string | number; parentId?: number | string; includeRevoked?: boolean; limit?: number }): Promise<KeyInfo[]> {
    const q = checkOptions<typeof query>(query, ['accountId', 'parentId', 'includeRevoked', 'limit'], 'listKeys()');
    if (q.includeRevoked !== undefined && typeof q.includeRevoked !== 'boolean') {
      throw new AgentKeyError('invalid_argument', 'includeRevoked must be true or false.');
    }
    const limit = q.limit ?? 1_000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      throw new AgentKeyError('invalid_argument', 'limit must be a whole number from 1 to 10000.');
    }
    const filter = {
      accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
      parentId: q.parentId === undefined ? null : keyIdNumber(q.parentId, 'parentId'),
      includeRevoked: q.includeRevoked ?? false,
      limit,
    };
    await this.flushQuietly();
    const rows = await this.guard(() => this.store.list(filter));
    return rows.map(toKeyInfo);
  }

  /** One key without its secret, or null. */
  async getKey(keyId: number | string): Promise<KeyInfo | null> {
    const id = keyIdNumber(keyId);
    await this.flushQuietly();
    const row = await this.guard(() => this.store.find({ id }));
    return row ? toKeyInfo(row) : null;
  }

  /**
   * Sets an account's ceiling: every key of the account, in or out of a tree, counts
   * against it, atomically with its own budget. `budgetPeriod` is 'day' or 'month'
   * (calendar, UTC) or null for a lifetime ceiling; the current period's spend so far
   * comes from the ledger.
   *
   * @example await ak.setAccountBudget('acct_1', { budgetCents: 10000, budgetPeriod: 'month' })
   */
  async setAccountBudget(accountId: string | number, options: { budgetCents: CentsInput; budgetPeriod?: BudgetPeriod | null }): Promise<AccountBudget> {
    const id = accountIdText(accountId);
    const o = checkOptions<{ budgetCents: CentsInput; budgetPeriod?: BudgetPeriod | null }>(options, ['budgetCents', 'budgetPeriod'], 'setAccountBudget()');
    const budget = budgetToMicros(o.budgetCents);
    if (budget === null) throw new AgentKeyError('invalid_budget', 'budgetCents is required; use clearAccountBudget() to remove a ceiling.');
    const period = parsePeriod(o.budgetPeriod);
    const row = await this.guard(() => this.accounts.set(id, budget, period));
    this.forgetAll();
    return toAccountBudget(row);
  }

  /** An account's ceiling and spend this period, or null when it has none. */
  async getAccountBudget(accountId: string | number): Promise<AccountBudget | null> {
    const id = accountIdText(accountId);
    const row = await this.guard(() => this.accounts.get(id));
    return row ? toAccountBudget(row) : null;
  }

  /**
   * Every account that has keys or a ceiling, in id order, for overviews: how many keys
   * (and how many are live), its lifetime spend from the ledger, and its ceiling or null.
   *
   * @example for (const a of await ak.listAccounts()) console.log(a.accountId, a.spentCents, a.ceiling?.remainingCents)
   */
  async listAccounts(options: { limit?: number } = {}): Promise<AccountSummary[]> {
    const o = checkOptions<{ limit?: number }>(options, ['limit'], 'listAccounts()');
    const limit = o.limit ?? 1_000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      throw new AgentKeyError('invalid_argument', 'limit must be a whole number from 1 to 10000.');
    }
    const rows = await this.guard(() => this.accountReports.list(limit));
    return rows.map((r) => ({
      accountId: r.summary_id,
      keys: Number(r.key_count),
      liveKeys: Number(r.live_key_count),
      spentCents: microsToCents(r.lifetime_micros),
      overageCents: microsToCents(r.overage_micros),
      ceiling: r.budget_micros === null ? null : toAccountBudget({ ...r, account_id: r.summary_id, budget_micros: r.budget_micros }),
    }));
  }

  /**
   * The ledger, newest first: every charge, hold, commit, release, expiry, reset and
   * adjustment of a key or an account (or all), with its metadata. Page with `before`
   * (the last id you got).
   *
   * @example await ak.ledger({ keyId: 42, limit: 20 })
   */
  async ledger(query: { keyId?: number | string; accountId?: string | number; before?: number; limit?: number } = {}): Promise<LedgerEntry[]> {
    const q = checkOptions<{ keyId?: number | string; accountId?: string | number; before?: number; limit?: number }>(
      query, ['keyId', 'accountId', 'before', 'limit'], 'ledger()');
    const limit = q.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1_000) {
      throw new AgentKeyError('invalid_argument', 'limit must be a whole number from 1 to 1000.');
    }
    const rows = await this.guard(() =>
      this.spending.ledger({
        keyId: q.keyId === undefined ? null : keyIdNumber(q.keyId),
        accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
        before: q.before === undefined ? null : keyIdNumber(q.before, 'before'),
        limit,
      }),
    );
    return rows.map((r) => ({
      id: Number(r.id),
      keyId: Number(r.key_id),
      accountId: r.account_id,
      kind: r.kind,
      amountCents: microsToCents(r.amount_micros),
      reservationId: r.reservation_id,
      metadata: r.metadata,
      createdAt: iso(r.created_at) as string,
    }));
  }

  /** Removes an account's ceiling. True when it had one. */
  async clearAccountBudget(accountId: string | number): Promise<boolean> {
    const id = accountIdText(accountId);
    const cleared = await this.guard(() => this.accounts.clear(id));
    this.forgetAll();
    return cleared;
  }

  /** A change that may concern any cached key (here at once; other processes hear it from the database). */
  private forgetAll(): void {
    this.changes++;
    this.cache?.clear();
  }

  private async validateRef(ref: { hash: string } | { subject: string }): Promise<ValidationResult> {
    const cache = this.cache;
    // Subjects get a prefix no hash can start with.
    const cacheKey = 'hash' in ref ? ref.hash : `\u0000${ref.subject}`;
    if (cache) {
      this.startListening();
      const hit = cache.listening ? cache.get(cacheKey, Date.now()) : undefined;
      const pathRoom = hit && cache.pathRoom(hit);
      // A budget above the key that this cache no longer knows: read the key again.
      if (hit && pathRoom !== undefined) return this.validation(hit, pathRoom);
    }
    let loading = this.loading.get(cacheKey);
    if (!loading || loading.changes !== this.changes) {
      const generation = cache?.generation;
      // Concurrent lookups of different keys go out together as one query.
      const read = 'hash' in ref ? this.lookups.submit(ref.hash) : this.store.find(ref);
      const entry = {
        changes: this.changes,
        read: this.guard(() => read).then((row) => {
          // Kept only if no change was announced while it was read (it might predate the change).
          if (row && cache?.listening && cache.generation === generation) cache.set(cacheKey, toCached(row, cache.ttlMs), limitRooms(row));
          return row;
        }),
      };
      entry.read.finally(() => {
        if (this.loading.get(cacheKey) === entry) this.loading.delete(cacheKey);
      }).catch(() => {});
      this.loading.set(cacheKey, entry);
      loading = entry;
    }
    const row = await loading.read;
    if (!row) return { valid: false, reason: 'invalid' };
    const rooms = limitRooms(row);
    return this.validation(toCached(row, 0), rooms.length === 0 ? null : Math.min(...rooms));
  }

  /** `pathRoom`: the least that the budgets above the key leave (null when none has a budget). */
  private validation(key: CachedKey, pathRoom: number | null): ValidationResult {
    if (key.status !== 'active') return { valid: false, reason: key.status };
    // Nothing left under its own budget, an ancestor's or the account's: refused, as the package refuses a spent key.
    const own = key.budget === null ? null : roomMicros(key.budget, key.spent, key.held);
    if ((own !== null && own <= 0) || (pathRoom !== null && pathRoom <= 0)) return { valid: false, reason: 'budget_exceeded' };
    this.touches.touch(key.id);
    return toValidKey(key);
  }

  /** Starts hearing about changed keys, once, on the first validation. */
  private startListening(): void {
    const cache = this.cache;
    if (!cache || this.subscription || this.closed) return;
    // Kept here: the hub holds it only weakly, so a dropped AgentKey leaves the hub.
    this.listener = {
      notify: (payload) => {
        this.changes++;
        const id = Number(payload);
        if (Number.isSafeInteger(id)) cache.invalidate(id);
        else cache.clear();
      },
      up: () => {
        // Changes made while not listening were missed: start from nothing.
        this.changes++;
        cache.clear();
        cache.listening = true;
      },
      down: () => {
        cache.listening = false;
        this.changes++;
        cache.clear();
      },
    };
    this.subscription = listen(this.pool, this.names.channel, this.listener);
  }

  private async spend(ref: KeyRef | { id: number }, request: SpendRequest): Promise<SpendOutcome> {
    const out = await this.guard(() => this.spending.spend(ref, request), 'spend');
    this.noteFigures(out, out.outcome === 'ok' ? request.micros : 0);
    return out;
  }

  private async settle(holdId: string, op: 'commit' | 'release', micros: number, metadata: string | null): Promise<SpendOutcome> {
    const batches = this.batches;
    const out = await this.guard(() =>
      batches
        ? this.batched(batches, { ref: { hold: holdId }, request: { op, micros, metadata } })
        : this.spending.settle(holdId, op, micros, metadata),
    'spend');
    const held = out.expired ? 0 : (out.hold ?? 0);
    const charged = (out.committed ?? 0) - (out.overage ?? 0);
    this.noteFigures(out, out.outcome !== 'ok' ? 0 : op === 'commit' ? charged - held : -(out.released ?? 0));
    return out;
  }

  /**
   * One batch in one statement. If the database refuses a value of one item (a data error,
   * class 22), nothing was written: the items run again one by one, so only that call fails.
   * If a row it needs stays held elsewhere past `waitMs`, nothing was written either: it goes
   * again without waiting, and the items that need a held row come back 'busy'.
   */
  private async spendBatch(items: BatchItem[], waitMs: number): Promise<(SpendOutcome | ItemFailure)[]> {
    try {
      return await this.spending.spendMany(items, waitMs);
    } catch (err) {
      if (waitMs > 0 && isDatabaseTimeout(err)) return this.spendBatch(items, 0);
      const code = (err as { code?: unknown } | null)?.code;
      if (items.length === 1 || typeof code !== 'string' || !code.startsWith('22')) throw err;
      const outs: (SpendOutcome | ItemFailure)[] = [];
      for (const item of items) {
        try {
          outs.push((await this.spending.spendMany([item], waitMs))[0] as SpendOutcome);
        } catch (itemErr) {
          outs.push(new ItemFailure(itemErr));
        }
      }
      return outs;
    }
  }

  /**
   * A cached key shows the figures of the latest step taken on it here, and the budgets
   * above it (cached for its siblings too) move by `moved`: what the step added to spent + held.
   */
  private noteFigures(out: SpendOutcome, moved: number): void {
    if (!this.cache || typeof out.key_id !== 'number' || out.spent === undefined) return;
    // Without the step's time the figures cannot be ordered against others: read them afresh.
    if (out.at === undefined) this.cache.invalidate(out.key_id);
    else {
      const above = { moved, ancestors: (out.path ?? []).filter((id) => id !== out.key_id), accountId: out.account_id ?? null };
      this.cache.updateFigures(out.key_id, out.budget ?? null, out.spent, out.held ?? 0, out.at, above);
    }
  }

  /**
   * A step through the batches. One that needs a key, account or hold another transaction
   * holds comes back 'busy', untouched, and goes again through `retries` (one statement at a
   * time, each waiting a little in the database for the rows), until it is decided or
   * `timeoutMs` has passed since the call began: then it throws storage_timeout, having
   * changed nothing. While a ref's rows stay held past a retry's wait (see `locked`), its
   * later calls go there directly, so a locked key holds up only its own calls, never the
   * batches of other keys.
   */
  private async batched(batches: Coalescer<BatchItem, SpendOutcome>, item: BatchItem): Promise<SpendOutcome> {
    const deadline = Date.now() + this.timeoutMs;
    const ref = refName(item.ref);
    let out = this.locked.has(ref) ? BUSY : await batches.submit(item);
    let marked = false;
    try {
      while (out.outcome === 'busy') {
        if (deadline - Date.now() < MIN_RETRY_WAIT_MS) throw lockedOut(this.timeoutMs);
        out = await (this.retries as Coalescer<Retry, SpendOutcome>).submit({ item, deadline });
        if (out.outcome === 'busy' && !marked) {
          marked = true;
          this.locked.set(ref, (this.locked.get(ref) ?? 0) + 1);
        }
      }
      return out;
    } finally {
      if (marked) {
        const left = (this.locked.get(ref) as number) - 1;
        if (left > 0) this.locked.set(ref, left);
        else this.locked.delete(ref);
      }
    }
  }

  /** One retry statement: it waits for held rows up to RETRY_WAIT_MS, or less as the first deadline nears. */
  private async retryBatch(entries: Retry[]): Promise<(SpendOutcome | ItemFailure)[]> {
    const now = Date.now();
    const live = (e: Retry) => e.deadline - now >= MIN_RETRY_WAIT_MS;
    const sent = entries.filter(live);
    if (sent.length === 0) return entries.map(() => BUSY);
    const waitMs = Math.min(RETRY_WAIT_MS, Math.min(...sent.map((e) => e.deadline)) - now);
    const outs = await this.spendBatch(sent.map((e) => e.item), waitMs);
    let at = 0;
    return entries.map((e) => (live(e) ? (outs[at++] as SpendOutcome | ItemFailure) : BUSY));
  }

  /** A charge or hold: coalesced with concurrent ones into one statement when batching is on. */
  private async spendCoalesced(ref: KeyRef, request: SpendRequest): Promise<SpendOutcome> {
    const batches = this.batches;
    if (!batches) return this.spend(ref, request);
    const out = await this.guard(() => this.batched(batches, { ref, request }), 'spend');
    this.noteFigures(out, out.outcome === 'ok' ? request.micros : 0);
    return out;
  }

  private async chargeRef(ref: KeyRef, input: { micros: number; idempotencyKey: string | null; metadata: string | null }): Promise<TrackUsageResult> {
    const out = await this.spendCoalesced(ref, { ...input, op: 'charge', holdId: null, ttlMs: null });
    const state = keyStateReason(out.outcome);
    if (state) return { success: false, reason: state };
    if (out.outcome === 'idempotency_conflict') return { success: false, reason: 'idempotency_conflict' };
    if (out.outcome === 'budget_exceeded') {
      return { success: false, reason: 'budget_exceeded', limitedBy: limitedBy(out) as NonNullable<ReturnType<typeof limitedBy>>, ...figures(out) };
    }
    return { success: true, ...figures(out), ...(out.outcome === 'replayed' ? { replayed: true as const } : {}) };
  }

  private async reserveRef(
    ref: KeyRef,
    input: { micros: number; idempotencyKey: string | null; metadata: string | null; ttlMs: number | null },
  ): Promise<ReserveResult> {
    const out = await this.spendCoalesced(ref, { ...input, op: 'hold', holdId: randomId('rsv_') });
    const state = keyStateReason(out.outcome);
    if (state) return { success: false, reason: state };
    if (out.outcome === 'idempotency_conflict') return { success: false, reason: 'idempotency_conflict' };
    if (out.outcome === 'budget_exceeded') {
      return { success: false, reason: 'budget_exceeded', limitedBy: limitedBy(out) as NonNullable<ReturnType<typeof limitedBy>>, ...figures(out) };
    }
    return {
      success: true,
      reservationId: out.hold_id as string,
      expiresAt: iso(out.expires_at) as string,
      budgetRemainingCents: figures(out).budgetRemainingCents,
      // A retry of a hold that was settled or expired since says so: it no longer holds money.
      ...(out.outcome === 'replayed' ? { replayed: true as const, reservationStatus: out.status as ReservationStatus } : {}),
    };
  }

  /** Reads show this process's own recent uses; a failed stamp write does not fail a read. */
  private flushQuietly(): Promise<void> {
    return this.touches.flush().catch(() => {});
  }

  private keyFields(o: SubjectOptions & { expiresAt?: Date | string | null }, accountId: string) {
    if (o.expiresIn != null && o.expiresAt != null) {
      throw new AgentKeyError('invalid_argument', 'Give expiresIn or expiresAt, not both.');
    }
    // A zero expiresIn ('0h') makes a key that is expired at once, as in the package.
    const expiresAt = o.expiresIn != null ? addDuration(new Date(), parseDuration(o.expiresIn)) : null;
    const at = o.expiresAt != null ? parseInstant(o.expiresAt, 'expiresAt') : null;
    if (at && at.getTime() <= Date.now()) {
      throw new AgentKeyError('invalid_argument', `expiresAt must be in the future; got ${at.toISOString()}.`);
    }
    return {
      accountId,
      name: optionalText(o.name, 'name'),
      scopes: parseScopes(o.scopes, this.validScopes),
      budgetMicros: budgetToMicros(o.budgetCents),
      budgetPeriod: parsePeriod(o.budgetPeriod),
      expiresAt: expiresAt ?? at,
      delegatedBy: optionalText(o.delegatedBy, 'delegatedBy'),
      userId: optionalText(o.userId, 'userId'),
    };
  }

  /**
   * Runs a storage call; database faults become `AgentKeyError`s with a clear code. A
   * 'spend' step's amounts are checked before they are sent, so a number out of range
   * there is a total that would pass BIGINT.
   */
  private async guard<T>(fn: () => Promise<T>, step: 'spend' | 'other' = 'other'): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw storageError(err, this.tableName, step);
    }
  }
}

const TOUCH_INTERVAL_MS = 1_000;
const NO_ANCESTORS: readonly number[] = Object.freeze([]);

/** The least bound of a report over the whole ledger: it reads, so it holds nobody up, and a big ledger takes time. */
const REPORT_TIMEOUT_MS = 60_000;
/**
 * How long a batch waits for a row another transaction holds before it goes again without
 * waiting, leaving the items that need a held row to `retries`: well past what another
 * batch holds its rows for, so calls on a key merely shared with a concurrent batch keep
 * their one round trip.
 */
const BATCH_WAIT_MS = 50;
/** How long one retry statement waits for a held row before its round goes again without waiting (so the rest of it goes on). */
const RETRY_WAIT_MS = 250;
/** Less time left than this, an item is not sent again. */
const MIN_RETRY_WAIT_MS = 5;
const BUSY: SpendOutcome = Object.freeze({ outcome: 'busy' });

interface Retry {
  item: BatchItem;
  /** When its call began plus timeoutMs (ms since the epoch). */
  deadline: number;
}

/** A step that could not take the rows it needs within its time: the database left everything as it was. */
function lockedOut(timeoutMs: number): AgentKeyError {
  return new AgentKeyError(
    'storage_timeout',
    `The key, account or reservation stayed locked by another transaction for timeoutMs (${timeoutMs} ms); nothing was changed, so try again later.`,
  );
}

function toCached(row: KeyRow, ttlMs: number): CachedKey {
  const ms = (d: Date | string | null) => (d === null ? null : new Date(d).getTime());
  const resetAt = ms(row.budget_reset_at);
  const expiresAt = ms(row.expires_at);
  let until = Date.now() + ttlMs;
  // An entry ends when its key (or an ancestor) expires or a period over it rolls over.
  for (const at of [resetAt, expiresAt, ms(row.ancestors_expire_at), ms(row.path_reset_at)]) if (at !== null && at < until) until = at;
  return {
    id: row.id,
    accountId: row.account_id,
    userId: row.user_id,
    name: row.name,
    scopes: row.scopes,
    budget: row.budget_micros,
    spent: row.spent_micros,
    held: row.held_micros,
    limits: [...row.limit_ids.map((id) => `k${id}`), ...(row.account_room === null ? [] : [`a${row.account_id}`])],
    period: row.budget_period,
    resetAt,
    expiresAt,
    delegatedBy: row.delegated_by,
    status: row.status,
    ancestors: row.ancestor_ids.length === 0 ? NO_ANCESTORS : row.ancestor_ids.map(Number),
    until,
    asOf: row.read_at ? new Date(row.read_at).getTime() : 0,
  };
}

/** What each budget in `toCached(row).limits` left when the row was read, in the same order. */
function limitRooms(row: KeyRow): number[] {
  const rooms = row.limit_rooms.map(Number);
  return row.account_room === null ? rooms : [...rooms, Number(row.account_room)];
}

function toValidKey(k: CachedKey): ValidKey {
  return {
    valid: true,
    id: k.id,
    keyId: k.id,
    accountId: k.accountId,
    userId: k.userId,
    name: k.name ?? 'default',
    scopes: k.scopes === null ? null : [...k.scopes],
    budgetCents: k.budget === null ? null : microsToCentsNumber(k.budget),
    ...figures({ outcome: 'ok', budget: k.budget, spent: k.spent, held: k.held }),
    budgetHeldCents: microsToCentsNumber(k.held),
    budgetPeriod: k.period as BudgetPeriod | null,
    budgetResetAt: k.resetAt === null ? null : new Date(k.resetAt).toISOString(),
    expiresAt: k.expiresAt === null ? null : new Date(k.expiresAt).toISOString(),
    delegatedBy: k.delegatedBy,
  };
}

/** The package's `CreateKeyResult` fields, from the row as the table stored it (its defaults included). */
function createdFields(row: InsertedKey): Omit<CreateKeyResult, 'key'> {
  return {
    id: row.id,
    scopes: row.scopes,
    budgetCents: row.budget_micros === null ? null : microsToCentsNumber(row.budget_micros),
    budgetPeriod: row.budget_period as BudgetPeriod | null,
    expiresAt: iso(row.expires_at),
  };
}

function cacheOptions(value: unknown): Required<CacheOptions> | null {
  if (value === false) return null;
  const o = checkOptions<CacheOptions>(value ?? {}, ['maxKeys', 'ttlMs'], 'the cache option');
  const maxKeys = o.maxKeys ?? 10_000;
  const ttlMs = o.ttlMs ?? 5_000;
  if (!Number.isInteger(maxKeys) || maxKeys < 1 || maxKeys > 10_000_000) {
    throw new AgentKeyError('invalid_argument', 'cache.maxKeys must be a whole number from 1 to 10000000.');
  }
  if (!Number.isInteger(ttlMs) || ttlMs < 1 || ttlMs > 3_600_000) {
    throw new AgentKeyError('invalid_argument', 'cache.ttlMs must be a whole number of milliseconds from 1 to 3600000.');
  }
  return { maxKeys, ttlMs };
}

/** The `timeoutMs` option, checked (exported so the service can check it before it opens the database). */
export function timeoutOption(value: unknown): number {
  const ms = value ?? DEFAULT_TIMEOUT_MS;
  if (typeof ms !== 'number' || !Number.isInteger(ms) || ms < 1 || ms > 3_600_000) {
    throw new AgentKeyError('invalid_argument', `timeoutMs must be a whole number of milliseconds from 1 to 3600000; got ${describe(ms)}.`);
  }
  return ms;
}

function batchingOptions(value: unknown): Required<BatchingOptions> | null {
  if (value === false) return null;
  const o = checkOptions<BatchingOptions>(value ?? {}, ['maxBatch', 'lanes'], 'the batching option');
  const maxBatch = o.maxBatch ?? 128;
  const lanes = o.lanes ?? 2;
  if (!Number.isInteger(maxBatch) || maxBatch < 1 || maxBatch > 1_000) {
    throw new AgentKeyError('invalid_argument', 'batching.maxBatch must be a whole number from 1 to 1000.');
  }
  if (!Number.isInteger(lanes) || lanes < 1 || lanes > 64) {
    throw new AgentKeyError('invalid_argument', 'batching.lanes must be a whole number from 1 to 64.');
  }
  return { maxBatch, lanes };
}


function subjectText(subject: unknown): string {
  const s = optionalText(subject, 'subject');
  if (s === null) throw new AgentKeyError('invalid_argument', 'subject must be a non-empty string.');
  return s;
}

const MISSING_SCHEMA = new Set(['42P01', '42703', '42883']);
const NUMERIC_OUT_OF_RANGE = '22003';
// 22021/22P05: text the database cannot store (e.g. a NUL character) is the caller's mistake.
const BAD_VALUE = new Set(['22P02', '22003', '22007', '22008', '22009', '22021', '22P05']);

function storageError(err: unknown, table: string, step: 'spend' | 'other' = 'other'): AgentKeyError {
  if (err instanceof AgentKeyError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (step === 'spend' && code === NUMERIC_OUT_OF_RANGE) {
    return new AgentKeyError(
      'total_out_of_range',
      `This step would take a total (a key's, an ancestor's or an account's spend, held or overage) past the most the database can count, ${microsToCents(MAX_TOTAL_MICROS)} cents; nothing was changed.`,
      { cause: err },
    );
  }
  const detail = err instanceof Error ? err.message : String(err);
  if (typeof code === 'string' && MISSING_SCHEMA.has(code)) {
    return new AgentKeyError('not_migrated', `The table ${table} is missing agentkey's columns (${detail}); run ak.migrate() first.`, { cause: err });
  }
  if (isDatabaseTimeout(err)) {
    return new AgentKeyError('storage_timeout', `The database gave up waiting within timeoutMs (${detail}); nothing was changed, so try again later.`, { cause: err });
  }
  if (typeof code === 'string' && BAD_VALUE.has(code)) {
    return new AgentKeyError('invalid_argument', `A value does not fit the ${table} table: ${detail}.`, { cause: err });
  }
  return new AgentKeyError('storage_error', `The database call failed: ${detail}.`, { cause: err });
}
