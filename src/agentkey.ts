import { AgentKeyError } from './errors.js';
import { checkKeyPrefix, hashKey, lookupHash, mintKey } from './keys.js';
import { budgetToMicros, centsToMicros, isValidCents, microsToCents } from './money.js';
import { accountIdText, checkOptions, keyIdNumber, optionalText } from './options.js';
import { parseScopes, scopeAllows } from './scopes.js';
import { type BudgetPeriod, addDuration, parseDuration, parseInstant, parsePeriod } from './time.js';
import { type Db, type PoolLike, toDb } from './store/db.js';
import { type TableNames, tableNames } from './store/identifiers.js';
import { type KeyRef, type KeyRow, KeyStore } from './store/keys.js';
import { migrate } from './store/migrations.js';

export interface AgentKeyOptions {
  /** A node-postgres `Pool` or a PGlite instance. */
  pool: PoolLike;
  /** The keys table, optionally schema-qualified. Default 'sdk_api_keys'. */
  tableName?: string;
  /** Prefix of every minted key. Default 'ak_'. */
  keyPrefix?: string;
  /** When set, `create()` refuses any scope not in this list. */
  validScopes?: readonly string[];
}

export interface CreateKeyOptions {
  accountId: string | number;
  scopes?: string[] | null;
  budgetCents?: number | null;
  budgetPeriod?: BudgetPeriod | null;
  /** '30s', '30m', '1h', '7d', '2w', '1mo'; null for no expiry. */
  expiresIn?: string | null;
  /** An absolute expiry instead of `expiresIn`. */
  expiresAt?: Date | string | null;
  delegatedBy?: string | null;
  name?: string | null;
  userId?: string | null;
}

export interface CreatedKey {
  /** The raw key: returned once, never stored. */
  key: string;
  id: number;
  expiresAt: string | null;
}

export type SubjectOptions = Omit<CreateKeyOptions, 'accountId' | 'expiresAt'> & { accountId?: string | number };

export type InvalidReason = 'invalid' | 'expired' | 'revoked';

export interface ValidKey {
  valid: true;
  keyId: number;
  accountId: string | number;
  name: string | null;
  scopes: string[] | null;
  budgetCents: number | null;
  budgetUsedCents: number;
  budgetRemainingCents: number | null;
  budgetPeriod: BudgetPeriod | null;
  budgetResetAt: string | null;
  expiresAt: string | null;
  delegatedBy: string | null;
}

export interface InvalidKey {
  valid: false;
  reason: InvalidReason;
}

export type ValidationResult = ValidKey | InvalidKey;

export interface UsageOptions {
  costCents: number;
}

export type TrackUsageResult =
  | { success: true; budgetUsedCents: number; budgetRemainingCents: number | null }
  | { success: false; reason: 'budget_exceeded'; budgetUsedCents: number; budgetRemainingCents: number | null }
  | { success: false; reason: 'invalid_cost' | InvalidReason };

const CREATE_OPTIONS = [
  'accountId', 'scopes', 'budgetCents', 'budgetPeriod', 'expiresIn', 'expiresAt', 'delegatedBy', 'name', 'userId',
] as const;
const SUBJECT_OPTIONS = CREATE_OPTIONS.filter((o) => o !== 'expiresAt');
const USAGE_OPTIONS = ['costCents'] as const;

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
  private readonly validScopes: ReadonlySet<string> | null;

  constructor(options: AgentKeyOptions) {
    const o = checkOptions<AgentKeyOptions>(options, ['pool', 'tableName', 'keyPrefix', 'validScopes'], 'new AgentKey()');
    this.names = tableNames(o.tableName ?? 'sdk_api_keys');
    this.tableName = this.names.name;
    this.keyPrefix = checkKeyPrefix(o.keyPrefix ?? 'ak_');
    const valid = o.validScopes === undefined ? null : parseScopes(o.validScopes, null, 'validScopes');
    this.validScopes = valid ? new Set(valid) : null;
    this.db = toDb(o.pool);
    this.store = new KeyStore(this.db, this.names);
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
  async create(options: CreateKeyOptions): Promise<CreatedKey> {
    const o = checkOptions<CreateKeyOptions>(options, CREATE_OPTIONS, 'create()');
    const minted = mintKey(this.keyPrefix);
    const row = await this.guard(() =>
      this.store.insert({ ...this.keyFields(o, accountIdText(o.accountId)), hash: minted.hash, visiblePrefix: minted.visiblePrefix, subject: null }),
    );
    return { key: minted.raw, id: row.id, expiresAt: iso(row.expires_at) };
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
    const micros = this.costMicros(usage);
    if (micros === null) return { success: false, reason: 'invalid_cost' };
    const hash = lookupHash(rawKey, this.keyPrefix);
    if (hash === null) return { success: false, reason: 'invalid' };
    return this.chargeRef({ hash }, micros);
  }

  /** True when a valid result's scopes allow `scope` (null scopes and 'admin' allow everything). */
  hasScope(result: ValidationResult | null | undefined, scope: string): boolean {
    if (!result || result.valid !== true || typeof scope !== 'string') return false;
    return scopeAllows(result.scopes, scope);
  }

  /**
   * Soft-revokes a key. With `accountId`, only a key of that account. True when a key
   * was revoked, false when nothing matched (or it was already revoked).
   */
  async revoke(keyId: number | string, accountId?: string | number): Promise<boolean> {
    const id = keyIdNumber(keyId);
    const account = accountId === undefined || accountId === null ? null : accountIdText(accountId);
    return this.guard(() => this.store.revoke(id, account));
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
      this.store.insert({ ...fields, hash: `subject:${hashKey(s)}`, visiblePrefix: 'subject', subject: s }),
    );
  }

  /** `validate()` for an external subject created with `ensureSubject()`. */
  async validateBySubject(subject: string): Promise<ValidationResult> {
    return this.validateRef({ subject: subjectText(subject) });
  }

  /** `trackUsage()` for an external subject created with `ensureSubject()`. */
  async trackUsageBySubject(subject: string, usage: UsageOptions): Promise<TrackUsageResult> {
    const s = subjectText(subject);
    const micros = this.costMicros(usage);
    if (micros === null) return { success: false, reason: 'invalid_cost' };
    return this.chargeRef({ subject: s }, micros);
  }

  private async validateRef(ref: KeyRef): Promise<ValidationResult> {
    const row = await this.guard(() => this.store.findAndTouch(ref));
    if (!row) return { valid: false, reason: 'invalid' };
    if (row.status !== 'active') return { valid: false, reason: row.status };
    return toValidKey(row);
  }

  private async chargeRef(ref: KeyRef, micros: number): Promise<TrackUsageResult> {
    const outcome = await this.guard(() => this.store.charge(ref, micros));
    if (outcome.ok) {
      const { budget_micros: budget, spent_micros: spent } = outcome.row;
      return { success: true, ...spendFields(budget, spent) };
    }
    const row = outcome.row;
    if (!row) return { success: false, reason: 'invalid' };
    if (row.status !== 'active') return { success: false, reason: row.status };
    return { success: false, reason: 'budget_exceeded', ...spendFields(row.budget_micros, row.spent_micros) };
  }

  /** The cost in micros, or null for a missing, negative, non-finite or non-numeric cost. */
  private costMicros(usage: UsageOptions): number | null {
    if (usage === null || typeof usage !== 'object') return null;
    const o = checkOptions<UsageOptions>(usage, USAGE_OPTIONS, 'usage');
    return isValidCents(o.costCents) ? centsToMicros(o.costCents) : null;
  }

  private keyFields(o: SubjectOptions & { expiresAt?: Date | string | null }, accountId: string) {
    if (o.expiresIn != null && o.expiresAt != null) {
      throw new AgentKeyError('invalid_argument', 'Give expiresIn or expiresAt, not both.');
    }
    const expiresAt =
      o.expiresIn != null ? addDuration(new Date(), parseDuration(o.expiresIn)) : o.expiresAt != null ? parseInstant(o.expiresAt, 'expiresAt') : null;
    if (expiresAt && expiresAt.getTime() <= Date.now()) {
      throw new AgentKeyError('invalid_argument', `expiresAt must be in the future; got ${expiresAt.toISOString()}.`);
    }
    return {
      accountId,
      name: optionalText(o.name, 'name'),
      scopes: parseScopes(o.scopes, this.validScopes),
      budgetMicros: budgetToMicros(o.budgetCents),
      budgetPeriod: parsePeriod(o.budgetPeriod),
      expiresAt,
      delegatedBy: optionalText(o.delegatedBy, 'delegatedBy'),
      userId: optionalText(o.userId, 'userId'),
    };
  }

  /** Runs a storage call; database faults become `AgentKeyError`s with a clear code. */
  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw storageError(err, this.tableName);
    }
  }
}

function toValidKey(row: KeyRow): ValidKey {
  return {
    valid: true,
    keyId: row.id,
    accountId: row.account_id,
    name: row.name,
    scopes: row.scopes,
    budgetCents: row.budget_micros === null ? null : microsToCents(row.budget_micros),
    ...spendFields(row.budget_micros, row.spent_micros),
    budgetPeriod: row.budget_period as BudgetPeriod | null,
    budgetResetAt: iso(row.budget_reset_at),
    expiresAt: iso(row.expires_at),
    delegatedBy: row.delegated_by,
  };
}

function spendFields(budget: number | null, spent: number) {
  return {
    budgetUsedCents: microsToCents(spent),
    budgetRemainingCents: budget === null ? null : microsToCents(Math.max(0, budget - spent)),
  };
}

function iso(date: Date | string | null): string | null {
  return date === null ? null : new Date(date).toISOString();
}

function subjectText(subject: unknown): string {
  const s = optionalText(subject, 'subject');
  if (s === null) throw new AgentKeyError('invalid_argument', 'subject must be a non-empty string.');
  return s;
}

const MISSING_SCHEMA = new Set(['42P01', '42703', '42883']);
// 22021/22P05: text the database cannot store (e.g. a NUL character) is the caller's mistake.
const BAD_VALUE = new Set(['22P02', '22003', '22007', '22008', '22021', '22P05']);

function storageError(err: unknown, table: string): AgentKeyError {
  if (err instanceof AgentKeyError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const detail = err instanceof Error ? err.message : String(err);
  if (typeof code === 'string' && MISSING_SCHEMA.has(code)) {
    return new AgentKeyError('not_migrated', `The table ${table} is missing agentkey's columns (${detail}); run ak.migrate() first.`, { cause: err });
  }
  if (typeof code === 'string' && BAD_VALUE.has(code)) {
    return new AgentKeyError('invalid_argument', `A value does not fit the ${table} table: ${detail}.`, { cause: err });
  }
  return new AgentKeyError('storage_error', `The database call failed: ${detail}.`, { cause: err });
}
