// The life of keys and account ceilings: minting keys (children under their parent),
// subjects' budget rows, reading and revoking keys, and setting an account's ceiling. Every
// change here is told to validation at once, so no cached key outlives it in this process.
import { AgentKeyError } from './errors.js';
import { hashKey, lookupHash, mintKey } from './keys.js';
import { type CentsInput, budgetToMicros, microsToCentsNumber } from './money.js';
import { accountIdText, checkOptions, concurrencyOption, keyIdNumber, limitOption, metadataJson, optionalText, rateLimitOption, subjectText } from './options.js';
import { parseScopes } from './scopes.js';
import type { AccountStore } from './store/accounts.js';
import type { Actor } from './store/actor.js';
import { storageFault } from './store/errors.js';
import type { EventStore } from './store/events.js';
import type { InsertedKey, KeyStore } from './store/keys.js';
import { type BudgetPeriod, addDuration, durationMs, parseDuration, parseInstant, parsePeriod } from './time.js';
import { type LimitChanges, fitUnderParent, fitUpdate, mayActOn, mayChange } from './tree.js';
import type {
  AccountBudget,
  AccountBudgetOptions,
  CreateKeyOptions,
  CreateOptions,
  CreateKeyResult,
  KeyChanges,
  KeyEvent,
  KeyEventQuery,
  KeyInfo,
  RotateOptions,
  RotateResult,
  SubjectOptions,
  UpdateOptions,
} from './types.js';
import type { Validation } from './validation.js';
import { type BudgetWindowInput, type WindowPeriod, type WindowPlan, type WindowSpec, accountFirst, keyFirst, pagePeriod, parseAlerts, planWindows } from './windows.js';
import { iso, toAccountBudget, toKeyEvent, toKeyInfo } from './views.js';

const CREATE_OPTIONS = [
  'accountId', 'scopes', 'budgetCents', 'budgetPeriod', 'budgets', 'alerts', 'expiresIn', 'expiresAt', 'delegatedBy', 'name', 'userId',
  'parentId', 'metadata',
  // Rate limits (the key's own; not fitted under the parent).
  'rateLimit', 'concurrency',
] as const;
const SUBJECT_OPTIONS = CREATE_OPTIONS.filter((o) => o !== 'expiresAt' && o !== 'parentId');
const UPDATE_FIELDS = [
  'budgetCents', 'budgetPeriod', 'budgets', 'alerts', 'scopes', 'expiresIn', 'expiresAt', 'name', 'delegatedBy', 'metadata', 'rateLimit',
  'concurrency',
] as const;
/** The longest a rotated key's previous secret may keep working. */
const MAX_GRACE_MS = 7 * 86_400_000;

export interface KeyQuery {
  accountId?: string | number;
  parentId?: number | string;
  includeRevoked?: boolean;
  limit?: number;
}

export class KeyLifecycle {
  /** Turns a database fault into its AgentKeyError. */
  private readonly fault: (err: unknown) => never;

  constructor(
    private readonly store: KeyStore,
    private readonly accounts: AccountStore,
    private readonly events: EventStore,
    private readonly validation: Validation,
    private readonly rules: { keyPrefix: string; validScopes: ReadonlySet<string> | null; maxDepth: number; table: string; actor: Actor },
  ) {
    this.fault = storageFault(rules.table);
  }

  /** `create()`: a new key, under its parent when `parentId` is given; `how.by` is the parent that makes it (self-serve). */
  async create(options: CreateKeyOptions, how: CreateOptions = {}): Promise<CreateKeyResult> {
    const o = checkOptions<CreateKeyOptions>(options, CREATE_OPTIONS, 'create()');
    const h = checkOptions<CreateOptions>(how ?? {}, ['by', 'signup'], 'create() options');
    let actor: Actor = this.rules.actor;
    if (h.by !== undefined) {
      const by = keyIdNumber(h.by, 'by');
      if (o.parentId == null || keyIdNumber(o.parentId, 'parentId') !== by) {
        throw new AgentKeyError('invalid_argument', `A key makes keys only under itself: with by: ${by}, parentId must be ${by}.`);
      }
      actor = `key:${by}`;
    } else if (h.signup !== undefined) {
      if (typeof h.signup !== 'boolean') throw new AgentKeyError('invalid_argument', 'signup must be true or false.');
      if (h.signup) actor = 'signup';
    }
    const fields = this.keyFields(o, accountIdText(o.accountId));
    const minted = mintKey(this.rules.keyPrefix);
    const key = { hash: minted.hash, visiblePrefix: minted.visiblePrefix, subject: null };
    let row: InsertedKey | null;
    if (o.parentId != null) {
      const parentId = keyIdNumber(o.parentId, 'parentId');
      const given = { scopes: o.scopes !== undefined, expiry: o.expiresIn !== undefined || o.expiresAt !== undefined };
      // Fitted under the parent as it is under a share lock (see KeyStore.insertChild).
      row = await this.store
        .insertChild(parentId, (parent) => ({
          ...fitUnderParent(parent, fields, given, this.rules.maxDepth),
          ...key,
          parent: { id: Number(parent.id), ancestorIds: parent.ancestor_ids.map(Number) },
        }), actor)
        .catch(this.fault);
      if (!row) throw new AgentKeyError('parent_not_found', `No key has id ${parentId}; a child key needs an existing parent.`);
    } else {
      row = await this.store.insert({ ...fields, ...key, parent: null }, actor).catch(this.fault);
    }
    return { key: minted.raw, ...createdFields(row) };
  }

  /** `ensureSubject()`: a subject's budget row, made on first sight. */
  async ensureSubject(subject: string, options: SubjectOptions): Promise<void> {
    const s = subjectText(subject);
    const o = checkOptions<SubjectOptions>(options, SUBJECT_OPTIONS, 'ensureSubject()');
    const fields = this.keyFields(o, accountIdText(o.accountId ?? s));
    await this.store
      .insert({ ...fields, hash: `subject:${hashKey(s)}`, visiblePrefix: 'subject', subject: s, parent: null }, this.rules.actor)
      .catch(this.fault);
  }

  /** `identify()`: the id of the key a raw key is, whatever its status, or null. */
  async identify(rawKey: string): Promise<number | null> {
    const hash = lookupHash(rawKey, this.rules.keyPrefix);
    if (hash === null) return null;
    const row = await this.store.find({ hash }).catch(this.fault);
    return row ? row.id : null;
  }

  /** `revoke()`: a key and its subtree; with `by`, only where the tree lets that key act. */
  async revoke(keyId: number | string, accountId?: string | number | null, options?: { by?: number | string }): Promise<boolean> {
    const id = keyIdNumber(keyId);
    const account = accountId === undefined || accountId === null ? null : accountIdText(accountId);
    const o = checkOptions<{ by?: number | string }>(options ?? {}, ['by'], 'revoke()');
    let actor = this.rules.actor;
    if (o.by !== undefined) {
      const by = keyIdNumber(o.by, 'by');
      const [actingKey, target] = await Promise.all([this.store.find({ id: by }), this.store.find({ id })]).catch(this.fault);
      if (!actingKey) throw new AgentKeyError('invalid_argument', `No key has id ${by}; \`by\` must name the key that revokes.`);
      if (!target || target.status === 'revoked' || (account !== null && String(target.account_id) !== account)) return false;
      if (!mayActOn(actingKey, target)) {
        throw new AgentKeyError(
          'key_outside_tree',
          `Key ${by} may revoke only itself and its own descendants${actingKey.parent_id === null ? ' and keys of its account' : ''}; key ${id} is not one of them.`,
        );
      }
      actor = `key:${by}`;
    }
    const revoked = await this.store.revoke(id, account, actor).catch(this.fault);
    this.validation.keyChanged(revoked ? id : null);
    return revoked;
  }

  /**
   * `update()`: changes a key's budget, period, scopes, expiry, name or delegatedBy in one
   * transaction, within the tree's rules (tree.ts `fitUpdate`); with `cascade`, narrows its
   * descendants too. Bad input or a refused rule changes nothing. Every key written leaves
   * the caches at once.
   */
  async update(keyId: number | string, changes: KeyChanges, options: UpdateOptions = {}): Promise<KeyInfo> {
    const id = keyIdNumber(keyId);
    const c = checkOptions<KeyChanges>(changes, UPDATE_FIELDS, 'update()');
    const o = checkOptions<UpdateOptions>(options ?? {}, ['cascade', 'accountId', 'by'], 'update() options');
    const by = o.by === undefined ? null : keyIdNumber(o.by, 'by');
    if (o.cascade !== undefined && typeof o.cascade !== 'boolean') {
      throw new AgentKeyError('invalid_argument', 'cascade must be true or false.');
    }
    const account = o.accountId === undefined || o.accountId === null ? null : accountIdText(o.accountId);
    const given = (k: (typeof UPDATE_FIELDS)[number]) => c[k] !== undefined;
    if (!UPDATE_FIELDS.some(given)) {
      throw new AgentKeyError('invalid_argument', `update() needs at least one change: ${UPDATE_FIELDS.join(', ')}.`);
    }
    if (given('expiresIn') && given('expiresAt')) throw new AgentKeyError('invalid_argument', 'Give expiresIn or expiresAt, not both.');
    const limits: LimitChanges = {};
    const plan = given('budgets') ? budgetsOption(c, keyFirst) : null;
    if (given('budgetCents')) limits.budgetMicros = budgetToMicros(c.budgetCents);
    if (plan) limits.budgetMicros = plan.first?.micros ?? null;
    if (given('scopes')) limits.scopes = parseScopes(c.scopes, this.rules.validScopes);
    if (given('expiresIn')) limits.expiresAt = c.expiresIn === null ? null : addDuration(new Date(), parseDuration(c.expiresIn as string));
    if (given('expiresAt')) {
      const at = c.expiresAt === null ? null : parseInstant(c.expiresAt as Date | string, 'expiresAt');
      if (at && at.getTime() <= Date.now()) throw new AgentKeyError('invalid_argument', `expiresAt must be in the future; got ${at.toISOString()}.`);
      limits.expiresAt = at;
    }
    const own = {
      ...(given('budgetPeriod') ? { budgetPeriod: parsePeriod(c.budgetPeriod) } : {}),
      ...(plan ? { budgetPeriod: plan.first ? pagePeriod(plan.first.period) : null, windows: plan.others } : {}),
      ...(given('alerts') ? { alerts: parseAlerts(c.alerts) } : {}),
      ...(given('name') ? { name: optionalText(c.name, 'name') } : {}),
      ...(given('delegatedBy') ? { delegatedBy: optionalText(c.delegatedBy, 'delegatedBy') } : {}),
      ...(given('metadata') ? { metadata: metadataJson(c.metadata) } : {}),
      ...(given('rateLimit') ? { rateLimit: rateLimitOption(c.rateLimit) } : {}),
      ...(given('concurrency') ? { concurrency: concurrencyOption(c.concurrency) } : {}),
    };
    const written = await this.store
      .update(id, account, (key, parent, descendants) => {
        if (by !== null && !mayChange(by, key)) {
          throw new AgentKeyError('key_outside_tree', `Key ${by} may change only the keys under it, not itself; key ${id} is not one of them.`);
        }
        if (key.status === 'revoked') throw new AgentKeyError('key_inactive', `Key ${id} is revoked; a revoked key cannot be changed.`);
        const [self, ...below] = fitUpdate(key, parent, descendants, limits, o.cascade ?? false);
        return [{ ...(self as { id: number }), ...own }, ...below];
      }, by === null ? this.rules.actor : `key:${by}`)
      .catch(this.fault);
    if (written === null) throw new AgentKeyError('key_not_found', `No key has id ${id}${account === null ? '' : ` in account ${account}`}.`);
    for (const changed of written) this.validation.keyChanged(changed);
    const row = await this.store.find({ id }).catch(this.fault);
    if (!row) throw new AgentKeyError('key_not_found', `No key has id ${id}.`);
    return toKeyInfo(row);
  }

  /**
   * `rotate()`: a new secret for the same key (same id, budget, spend, ledger, children and
   * subject bindings). The previous secret works for `gracePeriod` more, then is refused as
   * 'invalid'; caches here and in every listening process drop the key at once, and never
   * keep a validation of the previous secret past its grace period.
   */
  async rotate(keyId: number | string, options: RotateOptions = {}): Promise<RotateResult> {
    const id = keyIdNumber(keyId);
    const o = checkOptions<RotateOptions>(options ?? {}, ['gracePeriod', 'accountId'], 'rotate()');
    const graceMs = graceOption(o.gracePeriod);
    const account = o.accountId === undefined || o.accountId === null ? null : accountIdText(o.accountId);
    const minted = mintKey(this.rules.keyPrefix);
    const rotated = await this.store
      .rotate(id, account, { hash: minted.hash, visiblePrefix: minted.visiblePrefix, graceMs }, (key) => {
        if (key.external_subject !== null) {
          throw new AgentKeyError('invalid_argument', `Key ${id} is a subject's budget row; it has no secret to rotate.`);
        }
        if (key.status === 'revoked') throw new AgentKeyError('key_inactive', `Key ${id} is revoked; a revoked key cannot be rotated.`);
      }, this.rules.actor)
      .catch(this.fault);
    if (rotated === null) throw new AgentKeyError('key_not_found', `No key has id ${id}${account === null ? '' : ` in account ${account}`}.`);
    this.validation.keyChanged(id);
    return { key: minted.raw, id, prefix: minted.visiblePrefix, previousKeyValidUntil: iso(rotated.previousValidUntil) };
  }

  /** `keyEvents()`: the event log, newest first. */
  async keyEvents(query: KeyEventQuery = {}): Promise<KeyEvent[]> {
    const q = checkOptions<KeyEventQuery>(query ?? {}, ['keyId', 'accountId', 'before', 'limit'], 'keyEvents()');
    const rows = await this.events
      .list({
        keyId: q.keyId === undefined ? null : keyIdNumber(q.keyId, 'keyId'),
        accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
        before: q.before === undefined ? null : keyIdNumber(q.before, 'before'),
        limit: limitOption(q.limit, 100, 1_000),
      })
      .catch(this.fault);
    return rows.map(toKeyEvent);
  }

  /** `listKeys()`: keys without their secrets, in id order. */
  async list(query: KeyQuery): Promise<KeyInfo[]> {
    const q = checkOptions<KeyQuery>(query, ['accountId', 'parentId', 'includeRevoked', 'limit'], 'listKeys()');
    if (q.includeRevoked !== undefined && typeof q.includeRevoked !== 'boolean') {
      throw new AgentKeyError('invalid_argument', 'includeRevoked must be true or false.');
    }
    const limit = limitOption(q.limit, 1_000, 10_000);
    const filter = {
      accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
      parentId: q.parentId === undefined ? null : keyIdNumber(q.parentId, 'parentId'),
      includeRevoked: q.includeRevoked ?? false,
      limit,
    };
    await this.validation.flushQuietly();
    const rows = await this.store.list(filter).catch(this.fault);
    return rows.map(toKeyInfo);
  }

  /** `getKey()`: one key without its secret, or null. */
  async get(keyId: number | string): Promise<KeyInfo | null> {
    const id = keyIdNumber(keyId);
    await this.validation.flushQuietly();
    const row = await this.store.find({ id }).catch(this.fault);
    return row ? toKeyInfo(row) : null;
  }

  /** `setAccountBudget()`: every key of the account counts against the ceiling. */
  async setCeiling(accountId: string | number, options: AccountBudgetOptions): Promise<AccountBudget> {
    const id = accountIdText(accountId);
    const o = checkOptions<AccountBudgetOptions>(options, ['budgetCents', 'budgetPeriod', 'budgets', 'alerts'], 'setAccountBudget()');
    const plan = o.budgets !== undefined ? budgetsOption(o, accountFirst) : null;
    if (plan && plan.first === null) {
      throw new AgentKeyError('invalid_budget', 'budgets needs at least one window for a ceiling; use clearAccountBudget() to remove one.');
    }
    const budget = plan ? (plan.first as WindowSpec).micros : budgetToMicros(o.budgetCents);
    if (budget === null) throw new AgentKeyError('invalid_budget', 'budgetCents (or budgets) is required; use clearAccountBudget() to remove a ceiling.');
    const period = plan ? (plan.first as WindowSpec).period : parseCeilingPeriod(o.budgetPeriod);
    const alerts = o.alerts === undefined ? undefined : parseAlerts(o.alerts);
    const row = await this.accounts
      .set(id, budget, period === 'lifetime' ? null : period, this.rules.actor, { windows: plan?.others ?? [], alerts })
      .catch(this.fault);
    this.validation.allChanged();
    return toAccountBudget(row);
  }

  /** `setAlerts()`: the table's alert percents ([] or null: none). */
  async setGlobalAlerts(percents: unknown): Promise<number[] | null> {
    const p = parseAlerts(percents, 'percents');
    const kept = p === null || p.length === 0 ? null : p;
    await this.store.setGlobalAlerts(kept).catch(this.fault);
    return kept;
  }

  async globalAlerts(): Promise<number[] | null> {
    return this.store.globalAlerts().catch(this.fault);
  }

  /** `getAccountBudget()`: an account's ceiling and spend this period, or null. */
  async getCeiling(accountId: string | number): Promise<AccountBudget | null> {
    const id = accountIdText(accountId);
    const row = await this.accounts.get(id).catch(this.fault);
    return row ? toAccountBudget(row) : null;
  }

  /** `clearAccountBudget()`: true when the account had a ceiling. */
  async clearCeiling(accountId: string | number): Promise<boolean> {
    const id = accountIdText(accountId);
    const cleared = await this.accounts.clear(id, this.rules.actor).catch(this.fault);
    this.validation.allChanged();
    return cleared;
  }

  private keyFields(o: SubjectOptions & { expiresAt?: Date | string | null; metadata?: unknown }, accountId: string) {
    if (o.expiresIn != null && o.expiresAt != null) {
      throw new AgentKeyError('invalid_argument', 'Give expiresIn or expiresAt, not both.');
    }
    // A zero expiresIn ('0h') makes a key that is expired at once, as in the package.
    const expiresAt = o.expiresIn != null ? addDuration(new Date(), parseDuration(o.expiresIn)) : null;
    const at = o.expiresAt != null ? parseInstant(o.expiresAt, 'expiresAt') : null;
    if (at && at.getTime() <= Date.now()) {
      throw new AgentKeyError('invalid_argument', `expiresAt must be in the future; got ${at.toISOString()}.`);
    }
    const plan = o.budgets !== undefined ? budgetsOption(o, keyFirst) : null;
    return {
      accountId,
      name: optionalText(o.name, 'name'),
      scopes: parseScopes(o.scopes, this.rules.validScopes),
      budgetMicros: plan ? (plan.first?.micros ?? null) : budgetToMicros(o.budgetCents),
      budgetPeriod: plan ? (plan.first ? pagePeriod(plan.first.period) : null) : parsePeriod(o.budgetPeriod),
      windows: plan?.others ?? [],
      alerts: parseAlerts(o.alerts),
      expiresAt: expiresAt ?? at,
      delegatedBy: optionalText(o.delegatedBy, 'delegatedBy'),
      userId: optionalText(o.userId, 'userId'),
      metadata: metadataJson(o.metadata),
      rateLimit: rateLimitOption(o.rateLimit),
      concurrency: concurrencyOption(o.concurrency),
    };
  }

}

/** An account's ceiling period: a key's, or a week (the ceiling row is agentkey's own). */
function parseCeilingPeriod(value: unknown): 'day' | 'week' | 'month' | null {
  return value === 'week' ? 'week' : parsePeriod(value);
}

/** `budgets`, given instead of budgetCents/budgetPeriod (never beside them), as a plan of windows. */
function budgetsOption(o: { budgets?: unknown; budgetCents?: unknown; budgetPeriod?: unknown }, fitsFirst: (p: WindowPeriod) => boolean): WindowPlan {
  if (o.budgetCents !== undefined || o.budgetPeriod !== undefined) {
    throw new AgentKeyError('invalid_argument', 'Give budgetCents/budgetPeriod or budgets, not both: budgets lists every window, the first included.');
  }
  return planWindows(o.budgets, fitsFirst);
}

/** `gracePeriod` in ms: 0 or a duration of at most 7 days. */
function graceOption(value: unknown): number {
  if (value === undefined || value === 0) return 0;
  if (typeof value === 'string' && /^\s*0(s|m|h|d|w|mo)?\s*$/.test(value)) return 0;
  const ms = durationMs(value, 'gracePeriod', Infinity);
  if (ms > MAX_GRACE_MS) {
    throw new AgentKeyError('invalid_duration', `Invalid duration: ${String(value).trim()} (gracePeriod must be at most 7 days, '7d').`);
  }
  return ms;
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
