// Validation of a raw key or a subject: served from the in-process cache while this process
// hears every change to keys (LISTEN), otherwise read from the database, with concurrent
// reads of one key shared and reads of different keys sent together; a valid key's use is
// noted for its `last_used_at` stamp.
import type { CachedKey, KeyCache } from './cache.js';
import { Coalescer } from './coalesce.js';
import { microsToCentsNumber, roomMicros } from './money.js';
import type { PoolLike } from './store/db.js';
import { storageFault } from './store/errors.js';
import type { KeyRow, KeyStore } from './store/keys.js';
import { type ListenHandlers, type Subscription, listen } from './store/listen.js';
import { type RateLimiter, limitsOf, withRelease } from './rate-limits.js';
import type { BudgetPeriod } from './time.js';
import { Touches } from './touches.js';
import type { CacheStats, ValidKey, ValidationResult } from './types.js';
import { figures } from './views.js';

const TOUCH_INTERVAL_MS = 1_000;
const NO_ANCESTORS: readonly number[] = Object.freeze([]);
const NO_WINDOWS: readonly string[] = Object.freeze([]);
const NO_RELEASE = () => {};
/** Rows read from a read replica (they may lag the primary). */
const fromReplica = new WeakSet<KeyRow>();

export class Validation {
  /** Reads in flight, shared by validations of the same key, with the `changes` count they started at. */
  private readonly loading = new Map<string, { changes: number; read: Promise<KeyRow | null> }>();
  /** Moves on every key change seen here: a read that started before one is never shared after it. */
  private changes = 0;
  private readonly lookups: Coalescer<string, KeyRow | null>;
  private readonly touches: Touches;
  private subscription: Subscription | null = null;
  private listener: ListenHandlers | null = null;
  private closed = false;
  /** Turns a database fault into its AgentKeyError. */
  private readonly fault: (err: unknown) => never;

  constructor(
    private readonly store: KeyStore,
    /** The cache of validated keys, or null for none. */
    private readonly cache: KeyCache | null,
    /** Where changes to keys are announced: the pool and its NOTIFY channel. */
    private readonly changesFrom: { pool: PoolLike; channel: string; directUrl?: string | undefined },
    table: string,
    /** Counts requests against rate and concurrency limits. */
    private readonly limiter: RateLimiter,
    /** The keys on a read replica (`readPool`), read before the primary; null: none. */
    private readonly replica: KeyStore | null = null,
  ) {
    this.fault = storageFault(table);
    this.lookups = new Coalescer((hashes) => this.readHashes(hashes), { maxBatch: 256, lanes: 2 });
    this.touches = new Touches((ids, at) => this.store.touch(ids, at), TOUCH_INTERVAL_MS);
  }

  /**
   * `validate()` of a raw key's lookup hash, or of an external subject. `acquire`: also take
   * the key's concurrency slots (the valid result then has `release()`).
   */
  async validate(ref: { hash: string } | { subject: string }, acquire = false): Promise<ValidationResult> {
    const cache = this.cache;
    // Subjects get a prefix no hash can start with.
    const cacheKey = 'hash' in ref ? ref.hash : `\u0000${ref.subject}`;
    if (cache) {
      this.startListening();
      const hit = cache.serving ? cache.get(cacheKey, Date.now()) : undefined;
      const pathRoom = hit && cache.pathRoom(hit);
      // A budget above the key that this cache no longer knows: read the key again.
      const ownRoom = hit && (hit.ownWindows.length === 0 ? null : cache.leastRoom(hit.ownWindows));
      if (hit && pathRoom !== undefined && ownRoom !== undefined) return this.validation(hit, pathRoom, ownRoom, acquire);
    }
    let loading = this.loading.get(cacheKey);
    if (!loading || loading.changes !== this.changes) {
      const generation = cache?.generation;
      const since = cache?.mark();
      // Concurrent lookups of different keys go out together as one query.
      const read = 'hash' in ref ? this.lookups.submit(ref.hash) : this.readSubject(ref);
      const entry = {
        changes: this.changes,
        read: read.catch(this.fault).then((row) => {
          // Kept only if no change was announced while it was read (it might predate the change).
          if (row && cache?.serving && cache.generation === generation) {
            // A replica's row may predate a change already announced: it lives no longer than the fallback.
            const ttl = fromReplica.has(row) ? Math.min(cache.entryTtlMs, cache.fallbackTtlMs) : cache.entryTtlMs;
            cache.set(cacheKey, toCached(row, ttl), limitRooms(row), since);
          }
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
    // No key, or a rotated key's previous secret whose grace period has ended since it was read.
    if (!row || (row.secret_valid_until !== undefined && new Date(row.secret_valid_until).getTime() <= Date.now())) {
      return { valid: false, reason: 'invalid' };
    }
    const rooms = limitRooms(row);
    const key = toCached(row, 0);
    const own = rooms.filter((_, i) => key.ownWindows.includes(key.limits[i] as string));
    return this.validation(key, rooms.length === 0 ? null : Math.min(...rooms), own.length === 0 ? null : Math.min(...own), acquire);
  }

  /**
   * Keys by lookup hash: from the replica when there is one, and from the primary for what
   * the replica does not have (a key made since its last replay) or when it fails.
   */
  private async readHashes(hashes: readonly string[]): Promise<(KeyRow | null)[]> {
    if (!this.replica) return this.store.findByHashes(hashes);
    const rows = await this.replica.findByHashes(hashes).catch(() => null);
    if (rows === null) return this.store.findByHashes(hashes);
    for (const row of rows) if (row) fromReplica.add(row);
    const missing = hashes.filter((_, i) => rows[i] === null);
    if (missing.length === 0) return rows;
    const found = await this.store.findByHashes(missing);
    let next = 0;
    return rows.map((row) => row ?? found[next++] ?? null);
  }

  /** A subject's key, by the same rule as readHashes. */
  private async readSubject(ref: { subject: string }): Promise<KeyRow | null> {
    const row = this.replica ? await this.replica.find(ref).catch(() => null) : null;
    if (row) {
      fromReplica.add(row);
      return row;
    }
    return this.store.find(ref);
  }

  /** A change made here to one key (`id`), or to one not known (null): here at once; other processes hear it from the database. */
  keyChanged(id: number | null): void {
    this.changes++;
    if (id !== null) this.cache?.invalidate(id);
  }

  /** A change that may concern any cached key (here at once; other processes hear it from the database). */
  allChanged(): void {
    this.changes++;
    this.cache?.clear();
  }

  /** Counters of the cache (null when it is off). */
  stats(): CacheStats | null {
    return this.cache?.stats() ?? null;
  }

  /** Writes the `last_used_at` stamps noted so far. */
  flush(): Promise<void> {
    return this.touches.flush().catch(this.fault);
  }

  /** Reads show this process's own recent uses; a failed stamp write does not fail a read. */
  flushQuietly(): Promise<void> {
    return this.touches.flush().catch(() => {});
  }

  /** From now on no listening starts (the first step of closing: calls in flight may still validate). */
  stopListening(): void {
    this.closed = true;
  }

  /** Stops listening and stamping, empties the cache, and writes the stamps noted so far. */
  async close(): Promise<void> {
    this.closed = true;
    this.touches.stop();
    const subscription = this.subscription;
    this.subscription = null;
    await subscription?.close();
    this.listener = null;
    this.cache?.clear();
    await this.flush();
  }

  /** `pathRoom`: the least that the budgets above the key leave (null when none has a budget). */
  private validation(key: CachedKey, pathRoom: number | null, ownWindowRoom: number | null, acquire: boolean): ValidationResult | Promise<ValidationResult> {
    if (key.status !== 'active') return { valid: false, reason: key.status };
    // Nothing left under its own budget, an ancestor's or the account's: refused, as the package refuses a spent key.
    const own = key.budget === null ? null : roomMicros(key.budget, key.spent, key.held);
    if ((own !== null && own <= 0) || (pathRoom !== null && pathRoom <= 0)) return { valid: false, reason: 'budget_exceeded' };
    // Only a key under a rate or concurrency limit pays for one (and only one valid otherwise counts).
    if (key.rateLimits !== null) return this.limited(key, key.rateLimits, acquire, ownWindowRoom);
    this.touches.touch(key.id);
    const valid = toValidKey(key, ownWindowRoom);
    return acquire ? withRelease(valid, NO_RELEASE) : valid;
  }

  private async limited(key: CachedKey, limits: NonNullable<CachedKey['rateLimits']>, acquire: boolean, ownWindowRoom: number | null): Promise<ValidationResult> {
    const admission = await this.limiter.admit(limits, acquire);
    if (!admission.admitted) return admission.refusal;
    this.touches.touch(key.id);
    const valid = toValidKey(key, ownWindowRoom);
    return acquire ? withRelease(valid, admission.release) : valid;
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
      unheard: () => {
        // A pooler and no direct URL: short-lived entries (cache.fallbackTtlMs) stand in for notifications.
        cache.listening = false;
        cache.unheard = true;
        this.changes++;
        cache.clear();
      },
    };
    this.subscription = listen(this.changesFrom.pool, this.changesFrom.channel, this.listener, this.changesFrom.directUrl);
  }
}

function toCached(row: KeyRow, ttlMs: number): CachedKey {
  const ms = (d: Date | string | null) => (d === null ? null : new Date(d).getTime());
  const resetAt = ms(row.budget_reset_at);
  const expiresAt = ms(row.expires_at);
  let until = Date.now() + ttlMs;
  // An entry ends when its key (or an ancestor) expires or a period over it rolls over.
  // A rotated key's previous secret: never served past its grace period.
  const secretUntil = row.secret_valid_until === undefined ? null : ms(row.secret_valid_until);
  for (const at of [resetAt, expiresAt, ms(row.ancestors_expire_at), ms(row.path_reset_at), secretUntil]) if (at !== null && at < until) until = at;
  return {
    id: row.id,
    accountId: row.account_id,
    userId: row.user_id,
    name: row.name,
    scopes: row.scopes,
    budget: row.budget_micros,
    spent: row.spent_micros,
    held: row.held_micros,
    limits: [
      ...row.limit_ids.map((id) => `k${id}`),
      ...(row.account_room === null ? [] : [`a${row.account_id}`]),
      ...row.window_ids.map((id) => `w${id}`),
    ],
    ownWindows: row.windows === null ? NO_WINDOWS : ownWindowNames(row),
    period: row.budget_period,
    resetAt,
    expiresAt,
    delegatedBy: row.delegated_by,
    status: row.status,
    ancestors: row.ancestor_ids.length === 0 ? NO_ANCESTORS : row.ancestor_ids.map(Number),
    until,
    asOf: row.read_at ? new Date(row.read_at).getTime() : 0,
    rateLimits: limitsOf(row),
  };
}

/** What each budget in `toCached(row).limits` left when the row was read, in the same order. */
function limitRooms(row: KeyRow): number[] {
  const rooms = row.limit_rooms.map(Number);
  if (row.account_room !== null) rooms.push(Number(row.account_room));
  for (const r of row.window_rooms) rooms.push(Number(r));
  return rooms;
}

/** The names of a key's own windows: of the windows over it, those it owns (the rest are its ancestors' and account's). */
function ownWindowNames(row: KeyRow): string[] {
  return row.window_ids.filter((_, i) => row.window_owner_ids[i] !== null && Number(row.window_owner_ids[i]) === Number(row.id)).map((id) => `w${id}`);
}

function toValidKey(k: CachedKey, ownWindowRoom: number | null): ValidKey {
  return {
    valid: true,
    id: k.id,
    keyId: k.id,
    accountId: k.accountId,
    userId: k.userId,
    name: k.name ?? 'default',
    scopes: k.scopes === null ? null : [...k.scopes],
    budgetCents: k.budget === null ? null : microsToCentsNumber(k.budget),
    ...figures({ outcome: 'ok', budget: k.budget, spent: k.spent, held: k.held, ...(ownWindowRoom === null ? {} : { window_room: ownWindowRoom }) }),
    budgetHeldCents: microsToCentsNumber(k.held),
    budgetPeriod: k.period as BudgetPeriod | null,
    budgetResetAt: k.resetAt === null ? null : new Date(k.resetAt).toISOString(),
    expiresAt: k.expiresAt === null ? null : new Date(k.expiresAt).toISOString(),
    delegatedBy: k.delegatedBy,
  };
}
