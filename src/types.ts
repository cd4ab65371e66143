// The public types of agentkey, in one file: the shapes of the whole API in one place,
// declarations only, grouped by the flow that uses them (the options of `new AgentKey()`,
// the key lifecycle, validation, spending and holds, reports). The few that are defined
// beside their code are re-exported here; src/index.ts exports them all from this file.
// About 820 lines, nearly all doc comments on declarations: split by flow, the API's shapes
// would be read across a dozen files from every editor tooltip.
import type { PriceCatalog } from './llm/prices.js';
import type { TokenUsage } from './llm/usage.js';
import type { Cents, CentsInput } from './money.js';
import type { PoolLike } from './store/db.js';
import type { KeyStatus } from './store/keys.js';
import type { LedgerKind } from './store/ledger-schema.js';
import type { BudgetPeriod } from './time.js';
import type { BudgetWindowInput, WindowPeriod } from './windows.js';

export type { BudgetPeriod, BudgetWindowInput, Cents, CentsInput, PoolLike, WindowPeriod };

// The options of `new AgentKey()`.
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
   * A direct (not pooled) PostgreSQL URL for the one connection that listens for key
   * changes, when `pool` goes through a pooler in transaction mode (PgBouncer, Supavisor):
   * LISTEN needs a session of its own. Queries still use `pool`. Without it, behind a
   * pooler, the cache runs in its fallback (`cache.fallbackTtlMs`). The same convention as
   * Prisma's and Supabase's `DIRECT_URL`; the service reads AGENTKEY_DIRECT_URL.
   */
  directUrl?: string;
  /**
   * A node-postgres Pool of a read replica: validations the cache cannot answer read keys
   * there. A key the replica does not have yet is read from `pool`; a key read there is
   * served from memory at most `cache.fallbackTtlMs`, so a change shows here once the
   * replica has it plus that. Charges, holds and every write use `pool`. The service reads
   * AGENTKEY_READ_URL.
   */
  readPool?: PoolLike;
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
  /**
   * Who this process's changes to keys and ceilings are recorded as in the event log
   * (`keyEvents()`): 'library' (default), 'admin' (the service does this for its admin
   * key) or 'cli'. A change made with `by` is recorded as that key's.
   */
  actor?: 'library' | 'admin' | 'cli';
  /**
   * How request rate limits are counted (see `RateLimitsOptions`). Default `{ mode: 'exact' }`.
   */
  rateLimits?: RateLimitsOptions;
  /**
   * The prices of costs given as `{ model, usage }`: a catalog from `createPriceCatalog()`
   * (agentkey/llm), with custom prices or fetching of newer ones. Default: the prices
   * bundled with `@pydantic/genai-prices`.
   */
  prices?: PriceCatalog;
}

export interface CacheOptions {
  /** Most keys kept; the least recently used go first. Default 10000. */
  maxKeys?: number;
  /** How long a validation is served from memory at most, in ms. Default 5000. */
  ttlMs?: number;
  /**
   * How long a validation is served from memory when changes cannot be heard: the pool goes
   * through a connection pooler (PgBouncer in transaction mode, Supavisor...) and no
   * `directUrl` was given. It bounds how late a change made by another process (a
   * revocation) shows here. 0: nothing is served from memory then. Default 1000.
   */
  fallbackTtlMs?: number;
}

export interface BatchingOptions {
  /** Most charges and holds in one statement. Default 128. */
  maxBatch?: number;
  /** Batches in flight at once (each holds one connection while it runs). Default 2. */
  lanes?: number;
}

// The key lifecycle: creating, listing and revoking keys, and account ceilings.
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
  /** A JSON object of yours kept with the key (at most 8 KB), shown by `getKey()` and `listKeys()`. */
  metadata?: Record<string, unknown> | null;
  /**
   * Several budget windows instead of budgetCents/budgetPeriod, e.g. `[{ cents: 1000, period: 'day' },
   * { cents: 10000, period: 'month' }]`: a charge must fit every one. The first that is a day, month or
   * lifetime window fills the package's columns (`budgetCents`, `budgetPeriod`).
   */
  budgets?: BudgetWindowInput[] | null;
  /** Percents of each window at which a 'budget.threshold' event is written once per period; null: the table's (`setAlerts()`). */
  alerts?: number[] | null;
  /** At most `requests` validations per `per` ('1s' to '1d'); null for none. The key's own: see RateLimit. */
  rateLimit?: RateLimit | null;
  /** At most this many requests in flight at once through the middleware (`validate(key, { acquire: true })`); null for none. */
  concurrency?: number | null;
}

/**
 * What `update()` changes; a field left out (or undefined) stays as it is. Limits follow the
 * tree: a key is never widened past its parent, and narrowing a key below a descendant needs
 * `cascade: true` (see UpdateOptions).
 */
export interface KeyChanges {
  /** Cents, as for `create()`; null for no cap. Below what was spent is allowed: nothing is left. */
  budgetCents?: CentsInput | null;
  /** A new period starts now (spend so far is kept); null for none. */
  budgetPeriod?: BudgetPeriod | null;
  scopes?: string[] | null;
  /** '30s', '7d', ... from now; null for no expiry. */
  expiresIn?: string | null;
  /** An absolute expiry instead of `expiresIn`, in the future; null for no expiry. */
  expiresAt?: Date | string | null;
  name?: string | null;
  delegatedBy?: string | null;
  /** Replaces the key's metadata (a JSON object); null removes it. */
  metadata?: Record<string, unknown> | null;
  /** Replaces every budget window (see CreateKeyOptions.budgets); not beside budgetCents/budgetPeriod. */
  budgets?: BudgetWindowInput[];
  /** The key's own alert percents; null: the table's; [] none. */
  alerts?: number[] | null;
  /** Replaces the key's rate limit; null removes it. Not bound by the tree (see RateLimit). */
  rateLimit?: RateLimit | null;
  /** Replaces the key's concurrency limit; null removes it. */
  concurrency?: number | null;
}

export interface UpdateOptions {
  /** Narrow the key's descendants too, where the change would leave one wider than its parent. */
  cascade?: boolean;
  /** Change the key only if it belongs to this account (else `key_not_found`). */
  accountId?: string | number | null;
  /**
   * The key that makes the change (self-serve): it may change only keys under it, never
   * itself (it could raise its own budget) nor a key outside its subtree (`key_outside_tree`).
   */
  by?: number | string;
}

export interface RotateOptions {
  /**
   * How long the secret the key had keeps working beside the new one: '30s', '15m', '1h',
   * '7d' at most; 0 or omitted for not at all. Rotating again ends any older secret at once.
   */
  gracePeriod?: string | 0;
  /** Rotate the key only if it belongs to this account (else `key_not_found`). */
  accountId?: string | number | null;
}

/** What `rotate()` returns: the new secret, shown this once. */
export interface RotateResult {
  /** The new raw key: returned once, never stored. */
  key: string;
  id: number;
  /** The new secret's first characters. */
  prefix: string;
  /** Until when the previous secret works (ISO), or null when it stopped at once. */
  previousKeyValidUntil: string | null;
}

/** What the event log records. */
export type KeyEventKind = 'created' | 'updated' | 'rotated' | 'revoked' | 'budget_set' | 'adjusted';

/** One entry of the event log: a change to a key (or, for 'budget_set', an account's ceiling) and who made it. */
export interface KeyEvent {
  id: number;
  /** null for an account's ceiling ('budget_set'). */
  keyId: number | null;
  accountId: string;
  kind: KeyEventKind;
  /**
   * Who made it: 'library', 'admin' (the service's admin key), 'cli', 'signup' (the
   * self-serve signup route), 'key' (the key `actorKeyId`, through self-serve) or 'sql' (an
   * edit of the table the trigger caught).
   */
  actor: 'library' | 'admin' | 'cli' | 'signup' | 'key' | 'sql';
  actorKeyId: number | null;
  /**
   * Each field that changed, with its value before and after (a new key: after only), in
   * the names of `KeyInfo`: name, scopes, budgetCents, budgetPeriod, expiresAt,
   * delegatedBy, userId, accountId, revokedAt, parentId, metadata; 'rotated' has
   * previousKeyValidUntil; 'adjusted' has costCents and reason.
   */
  changes: Record<string, { before?: unknown; after?: unknown }>;
  at: string;
}

export interface KeyEventQuery {
  keyId?: number | string;
  accountId?: string | number;
  /** Only events older than this event id (to page: pass the last id you got). */
  before?: number | string;
  /** Default 100, at most 1000. */
  limit?: number;
}

/** Who makes a key through `create()`, beside the process's own `actor`. */
export interface CreateOptions {
  /** The key that makes it (self-serve): it must be the new key's parent. Recorded as that key's. */
  by?: number | string;
  /** Made by the self-serve signup route: recorded as 'signup'. */
  signup?: boolean;
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

/** A key as operators see it: no secret, with budget, spent, held and remaining. */
export interface KeyInfo {
  id: number;
  accountId: string | number;
  name: string | null;
  /** The key's first characters, e.g. 'ak_7f3aBc12', to recognise it without its secret. */
  prefix: string | null;
  scopes: string[] | null;
  status: KeyStatus;
  parentId: number | null;
  depth: number;
  budgetCents: number | null;
  /** Totals are `Cents`: numbers up to MAX_CENTS, exact decimal strings past it (an unlimited key's). */
  spentCents: Cents;
  heldCents: Cents;
  remainingCents: number | null;
  /** Real cost no budget could take, over the key's life: recorded, never counted in spentCents. */
  overageCents: Cents;
  budgetPeriod: BudgetPeriod | null;
  budgetResetAt: string | null;
  expiresAt: string | null;
  revokedAt: string | null;
  createdAt: string | null;
  lastUsedAt: string | null;
  delegatedBy: string | null;
  externalSubject: string | null;
  /** The key's own metadata, as given to `create()` or `update()`, or null. */
  metadata: Record<string, unknown> | null;
  /** Every budget window of its own, the first (budgetCents) first; empty when it has no budget. remainingCents is the least they leave. */
  budgets: BudgetWindow[];
  /** Its own alert percents, or null when the table's apply. */
  alerts: number[] | null;
  /** The key's own rate limit, or null. */
  rateLimit: RateLimit | null;
  /** The key's own concurrency limit (requests in flight), or null. */
  concurrency: number | null;
}

/** An account's ceiling and where it stands in the current period. */
/** What `setAccountBudget()` takes: one ceiling, or several windows (`budgets`), and alert percents. */
export interface AccountBudgetOptions {
  budgetCents?: CentsInput;
  budgetPeriod?: Exclude<WindowPeriod, 'lifetime'> | null;
  /** Instead of budgetCents/budgetPeriod: 1 to 4 windows, each period once; the first is the ceiling. */
  budgets?: BudgetWindowInput[];
  /** The account's windows' own alert percents (null: the table's; []: none). */
  alerts?: number[] | null;
}

export interface AccountBudget {
  accountId: string;
  budgetCents: number;
  budgetPeriod: Exclude<WindowPeriod, 'lifetime'> | null;
  spentCents: Cents;
  heldCents: Cents;
  remainingCents: number;
  periodStartAt: string | null;
  budgetResetAt: string | null;
  /** Every window of the account, the ceiling's first. */
  budgets: BudgetWindow[];
  /** The account's own alert percents, or null when the table's apply. */
  alerts: number[] | null;
}

// Validation.
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
  /**
   * With `validate(key, { acquire: true })`: frees the request's concurrency slot (the
   * key's and its account's). Call it once the request ends, however it ends; calling it
   * again does nothing.
   */
  release?: () => void;
}
/** This project's earlier name for `ValidateResult`. */
export type ValidKey = ValidateResult;

/**
 * A refused key: unknown or malformed ('invalid'), 'expired', 'revoked' (itself or an
 * ancestor), or 'budget_exceeded': nothing left to spend under its own budget, an
 * ancestor's or its account's.
 */
export interface KeyRefused {
  valid: false;
  reason: 'invalid' | 'expired' | 'revoked' | 'budget_exceeded';
}
export type ValidateFailure = KeyRefused | RateLimited;
/** This project's earlier names. */
export type InvalidKey = ValidateFailure;
export type InvalidReason = ValidateFailure['reason'];

export type ValidationResult = ValidateResult | ValidateFailure;

export interface CacheStats {
  size: number;
  maxKeys: number;
  ttlMs: number;
  hits: number;
  misses: number;
  evictions: number;
  invalidations: number;
  fallbackTtlMs: number;
  /** True while change notifications are being received. */
  listening: boolean;
  /**
   * 'notify': changes are heard, entries live `ttlMs`; 'fallback': changes cannot be heard
   * (a pooler, no `directUrl`), entries live `fallbackTtlMs`; 'off': nothing is served from
   * memory now (not listening yet, or the listening connection is down).
   */
  mode: 'notify' | 'fallback' | 'off';
}

// Spending: charges, holds, commits, releases and adjustments.
export interface ChargeOptions {
  /** Cents: a number, or a decimal string (`"0.3"`) read exactly. */
  costCents: CentsInput;
  /** Charges with the same idempotency key (per key) are made once; a retry returns the first result. */
  idempotencyKey?: string;
  /** JSON object stored with the ledger row, e.g. `{ model, inputTokens, outputTokens }`. */
  metadata?: Record<string, unknown>;
}

/** Options of `trackUsage()`. */
export type UsageOptions = ChargeOptions;

export interface ReserveOptions extends ChargeOptions {
  /** How long the hold lasts unless committed or released: '30s', '5m', up to '24h'. Default '5m'. */
  ttl?: string;
}

export interface CommitOptions {
  costCents: CentsInput;
  metadata?: Record<string, unknown>;
}

/**
 * An LLM call's usage in place of `costCents`: the cost is priced from the catalog
 * (agentkey/llm; `new AgentKey({ prices })` for your own), and the ledger rows keep the
 * model and the token counts. An unknown model throws `unknown_model`, never charges 0.
 */
export interface LlmUsage {
  /** The model, as requests name it ('gpt-4o-mini', 'claude-sonnet-4-5'). */
  model: string;
  /** The catalog's provider id, when the model's name does not tell it. */
  provider?: string;
  usage: TokenUsage;
  costCents?: never;
}

/** `trackUsage()` with an LLM call's usage instead of a cost. */
export type MeteredUsageOptions = Omit<UsageOptions, 'costCents'> & LlmUsage;
/** `reserve()` with the usage to hold for instead of a cost (for a worst case, see `estimateMaxCost()`). */
export type MeteredReserveOptions = Omit<ReserveOptions, 'costCents'> & LlmUsage;
/** `commit()` with the call's real usage instead of its cost. */
export type MeteredCommitOptions = Omit<CommitOptions, 'costCents'> & LlmUsage;

export interface SpendFigures {
  budgetUsedCents: number;
  budgetRemainingCents: number | null;
}

/**
 * Why a key itself cannot spend: 'invalid_key' (no such key, as the package says), or
 * 'expired' / 'revoked' (itself or an ancestor).
 */
export type KeyRefusal = 'invalid_key' | 'expired' | 'revoked';

/** Which budget refused a charge or hold: the key's own, an ancestor's, or the account's. */
export type LimitedBy = ({ kind: 'key' | 'ancestor'; keyId: number } | { kind: 'account'; accountId: string }) & {
  /** Which of its windows: of those the step would pass, the one that frees last. */
  window: WindowPeriod;
};

/** One budget window of a key or account, as it stands now. */
export interface BudgetWindow {
  period: WindowPeriod;
  cents: number;
  spentCents: Cents;
  /** budget - spent - held, never below 0. */
  remainingCents: number;
  /** When the current period began and ends (null for lifetime; a key's first window shows only its end). */
  periodStartAt: string | null;
  resetAt: string | null;
}

/**
 * The package's `TrackUsageResult`, as a union that narrows on `success` and `reason`.
 * Every member declares every field, so code written for the package's flat interface
 * (`r.reason`, `r.budgetRemainingCents` without narrowing) compiles unchanged.
 */
export type TrackUsageResult =
  | {
      success: true;
      reason?: undefined;
      /** Absent for a zero-cost charge, which records nothing (as the package did). */
      budgetUsedCents?: number;
      budgetRemainingCents?: number | null;
      limitedBy?: undefined;
      /** Set on a retry with the same idempotency key: the first charge's result, charged once. */
      replayed?: true;
      /** With `{ model, usage }`: what the call was priced at, and charged. */
      costCents?: number;
    }
  | ({ success: false; reason: 'budget_exceeded'; limitedBy: LimitedBy; replayed?: undefined; costCents?: undefined } & SpendFigures)
  | {
      success: false;
      reason: 'invalid_cost' | 'idempotency_conflict' | KeyRefusal;
      budgetUsedCents?: undefined;
      budgetRemainingCents?: undefined;
      limitedBy?: undefined;
      replayed?: undefined;
      costCents?: undefined;
    };

export type ReserveResult =
  | {
      success: true;
      reason?: undefined;
      reservationId: string;
      expiresAt: string;
      budgetRemainingCents: number | null;
      /** Set on a retry with the same idempotency key: the first hold, returned again. */
      replayed?: true;
      /** On a retry, where that first hold stands now: only 'held' still holds money. */
      reservationStatus?: ReservationStatus;
      /** With `{ model, usage }`: what the usage was priced at, and held. */
      heldCents?: number;
    }
  | ({ success: false; reason: 'budget_exceeded'; limitedBy: LimitedBy } & SpendFigures)
  | { success: false; reason: 'invalid_cost' | 'idempotency_conflict' | KeyRefusal };

export type CommitResult =
  | ({
      success: true;
      reservationId: string;
      /** The real cost, always recorded: chargedCents + overageCents. */
      costCents: number;
      /** The part counted toward the budgets: never more than they leave. */
      chargedCents: number;
      /** The part no budget could take: recorded as overage, never counted toward a cap. 0 normally. */
      overageCents: number;
      heldCents: number;
      /** The part of the hold given back. */
      releasedCents: number;
      /** How far the real cost went past the hold. */
      overHoldCents: number;
      /** The hold had expired before this commit. */
      holdExpired: boolean;
      /** Some of the cost was overage: a budget over the key could not take all of it. */
      overBudget: boolean;
      /** The budget that could not take it, when overBudget. */
      limitedBy?: LimitedBy;
      replayed?: true;
    } & SpendFigures)
  | { success: false; reason: 'invalid_cost' | 'reservation_not_found' | 'already_released' | 'idempotency_conflict' };

export type ReservationStatus = 'held' | 'committed' | 'released' | 'expired';

export type ReleaseResult =
  | { success: true; reservationId: string; releasedCents: number; holdExpired: boolean; replayed?: true }
  | { success: false; reason: 'reservation_not_found' | 'already_committed' };

export type AdjustResult =
  | ({ success: true } & SpendFigures)
  | { success: false; reason: 'invalid_key' | 'refund_exceeds_spend' };

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

// Reports: usage, the ledger, accounts and the audit.
export interface UsageQuery {
  keyId?: number | string;
  accountId?: string | number;
  since?: Date | string;
  until?: Date | string;
  bucket?: 'hour' | 'day';
  /** With keyId (or accountId alone): also report its budget windows now (`windows`), each with its spend this period. */
  windows?: boolean;
  /** Also break spend down by LLM model (`models`): the calls charged with `{ model, usage }`. */
  byModel?: boolean;
}

/** Figures here are `Cents`: numbers up to MAX_CENTS, exact decimal strings past it. */
export interface UsageReport {
  /** Spend counted toward budgets: charges, commits and adjustments. */
  totalCents: Cents;
  count: number;
  /** Real cost that no budget could take (never counted toward a cap); 0 when none. */
  overageCents: Cents;
  buckets: { start: string; costCents: Cents; count: number; overageCents: Cents }[];
  /** With keyId (or accountId alone): that key's (account's) budget windows as they stand now, each with its spend this period. */
  windows?: BudgetWindow[];
  /** With byModel: spend by model, dearest first (calls charged in plain cents are not in it). */
  models?: ModelUsage[];
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
  /** Its rate limit and concurrency limit over all its keys together (null: none). */
  rateLimit: RateLimit | null;
  concurrency: number | null;
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
  /** An LLM call's row (charged with `{ model, usage }`): the catalog's model id. */
  model?: string;
  /** ...and, on the row with its cost, its provider and token counts. */
  usage?: Required<TokenUsage> & { provider: string };
}

/** Spend of one model over a report's span (`usage({ byModel: true })`). */
export interface ModelUsage extends Required<TokenUsage> {
  model: string;
  provider: string | null;
  /** Counted toward budgets: charges and commits priced from its usage. */
  costCents: Cents;
  /** Real cost of its calls that no budget could take. */
  overageCents: Cents;
  /** Charges and commits. */
  count: number;
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

// ---------------------------------------------------------------------------------------
// Events (the outbox) and webhooks: the outbox's consumers.
// ---------------------------------------------------------------------------------------

/** The five kinds of event the outbox holds. */
export type AgentKeyEventType = 'budget.threshold' | 'key.revoked' | 'key.expired' | 'hold.expired' | 'overage.recorded';

/**
 * One outbox event as `onEvent()` handlers and `outboxEvents()` get it, and as webhooks
 * post it: the body of a webhook is `{ type, timestamp, data }`, and `id` is its
 * `webhook-id` header (the same for every endpoint and every retry, for de-duplication).
 * `data` is camelCase, with amounts in cents (exact: `Cents`), e.g. for 'key.expired'
 * `{ keyId: 42, accountId: 'acct_1', expiresAt: '2026-12-01T00:00:00.000Z' }`.
 */
export interface AgentKeyEvent {
  /** 'evt_' and the outbox row's id. */
  id: string;
  type: AgentKeyEventType;
  /** When it was written (ISO). */
  timestamp: string;
  data: Record<string, unknown>;
}

export interface OutboxEventQuery {
  accountId?: string | number;
  type?: AgentKeyEventType;
  /** Only events older than this one (an id such as 'evt_12', or 12). */
  before?: string | number;
  /** Default 100, at most 1000. */
  limit?: number;
}

export interface OnEventOptions {
  /** Only these types (default: all five). */
  types?: readonly AgentKeyEventType[];
  /** How often the outbox is read when no notification came (ms; default 1000, at least 10). */
  pollMs?: number;
  /** Called with what a handler threw (or rejected with); the next events are still handled. */
  onError?: (err: unknown, event: AgentKeyEvent) => void;
}

/** A webhook endpoint, without its secret. */
export interface Webhook {
  id: number;
  url: string;
  /** The event types it gets; null: all five. */
  events: AgentKeyEventType[] | null;
  /** Only this account's events; null: every account's. */
  accountId: string | null;
  description: string | null;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}

/** `createWebhook()`'s answer: the endpoint and its signing secret, shown this once. */
export interface CreatedWebhook extends Webhook {
  /** 'whsec_' and base64: give it to the receiver's Standard Webhooks `Webhook(secret).verify()`. */
  secret: string;
}

export interface CreateWebhookOptions {
  /** An http:// or https:// URL. */
  url: string;
  events?: readonly AgentKeyEventType[] | null;
  accountId?: string | number | null;
  description?: string | null;
  /** Default true. */
  enabled?: boolean;
}

export interface WebhookChanges {
  url?: string;
  events?: readonly AgentKeyEventType[] | null;
  accountId?: string | number | null;
  description?: string | null;
  enabled?: boolean;
  /** A new secret, returned this once in `secret` (the old one stops at once). */
  rotateSecret?: boolean;
}

export type WebhookDeliveryStatus = 'pending' | 'delivered' | 'failed';

/** One try at posting an event to an endpoint. */
export interface WebhookAttempt {
  attempt: number;
  at: string;
  /** The HTTP status the endpoint answered, or null when it did not (see error). */
  status: number | null;
  /** Why it failed: 'HTTP 500', 'timeout after 10000 ms', 'connection refused'...; null when delivered. */
  error: string | null;
  durationMs: number;
}

/** One event for one endpoint: delivered, pending (retrying with backoff), or failed once `retryFor` ran out. */
export interface WebhookDelivery {
  id: number;
  webhookId: number;
  /** The event's id (its webhook-id), e.g. 'evt_12'. */
  eventId: string;
  eventType: AgentKeyEventType | null;
  status: WebhookDeliveryStatus;
  attempts: number;
  /** When the next try is due (pending only). */
  nextAttemptAt: string | null;
  lastStatus: number | null;
  lastError: string | null;
  createdAt: string;
  deliveredAt: string | null;
  /** Every attempt, oldest first. */
  attemptLog: WebhookAttempt[];
}

export interface WebhookDeliveryQuery {
  webhookId?: number | string;
  status?: WebhookDeliveryStatus;
  /** Only deliveries older than this delivery id. */
  before?: number | string;
  /** Default 50, at most 1000. */
  limit?: number;
}

/** How many deliveries are pending (and of those, failing: tried and not yet delivered) and failed for good. */
export interface WebhookStats {
  pending: number;
  failing: number;
  failed: number;
}

// Rate limits: requests per window and requests in flight, per key and per account.

/**
 * At most `requests` validations per `per` ('1s' to '1d'; '1m' is a minute). A key's limit
 * is its own: its children and ancestors count against their own limits, not against it
 * (an account's limit covers all of its keys together).
 *
 * @example { requests: 60, per: '1m' }
 */
export interface RateLimit {
  /** A whole number from 1 to 1,000,000,000. */
  requests: number;
  per: string;
}

export interface RateLimitsOptions {
  /**
   * 'exact' (default): counted in the database, one round trip per validation of a limited
   * key (concurrent ones share it), never more than `requests` per window across every
   * process. 'local': counted in this process's memory, no round trip; N processes admit up
   * to N times the limit together. Keys without a limit cost nothing in either mode.
   */
  mode?: 'local' | 'exact';
}

/** Which limit refused a request: the key's own or its account's. */
export type RateLimitedBy = { kind: 'key'; keyId: number } | { kind: 'account'; accountId: string };

/** A validation refused by a rate limit or a concurrency limit. */
export interface RateLimited {
  valid: false;
  reason: 'rate_limited';
  /** 'requests': the requests per window; 'concurrency': the requests in flight. */
  limit: 'requests' | 'concurrency';
  limitedBy: RateLimitedBy;
  /** How long until a retry can pass (ms): to the window's end, or a guess of 1000 for concurrency. */
  retryAfterMs: number;
  /** When the window that refused ends (ISO); null for concurrency (a slot frees when a request ends). */
  resetAt: string | null;
}

/** Options of `validate()`. */
export interface ValidateOptions {
  /**
   * Also take a concurrency slot (the key's and its account's) when they have a limit: the
   * valid result then has `release()`, which the caller must call when the request ends.
   * The middleware and adapters do this for you.
   */
  acquire?: boolean;
}

/** An account's rate and concurrency limits. */
export interface AccountRateLimit {
  accountId: string;
  rateLimit: RateLimit | null;
  concurrency: number | null;
  updatedAt: string;
}

/** What `setAccountRateLimit()` changes: a field left out is kept, null removes it. */
export interface AccountRateLimitChanges {
  rateLimit?: RateLimit | null;
  concurrency?: number | null;
}
