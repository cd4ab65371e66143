import { type Micros, roomMicros } from './money.js';
import type { KeyLimits } from './rate-limits.js';
import type { KeyStatus } from './store/keys.js';
import type { CacheStats } from './types.js';

/** What validation needs of a key, kept small: the cache may hold many thousands. */
export interface CachedKey {
  id: number;
  accountId: string | number;
  userId: string | null;
  name: string | null;
  scopes: string[] | null;
  budget: number | null;
  spent: Micros;
  held: Micros;
  /**
   * The budgets above the key: its budgeted ancestors (`k<id>`), its account's ceiling
   * (`a<id>`) and every window past the first over it, its own included (`w<id>`). What each
   * leaves is kept once for the whole cache (see KeyCache.rooms).
   */
  limits: readonly string[];
  /** Its own windows past the first (`w<id>`, also in limits): the least they leave caps its figures. */
  ownWindows: readonly string[];
  period: string | null;
  resetAt: number | null;
  expiresAt: number | null;
  delegatedBy: string | null;
  status: KeyStatus;
  ancestors: readonly number[];
  /** When this entry stops being served (ms): its TTL, its key's or an ancestor's expiry, or its period's end. */
  until: number;
  /** When its figures were true (ms, database time): older figures never replace them. */
  asOf: number;
  /** The rate and concurrency limits over the key (its own, its account's), or null for none. */
  rateLimits: KeyLimits | null;
}

/** What one budget above cached keys leaves, and as of when (ms, database time). */
interface Room {
  room: number;
  asOf: number;
}

/**
 * A bounded LRU of validated keys, by lookup hash (or subject). Entries also expire by time,
 * and are dropped by key id, for the key itself and for every key under it, when a change
 * is announced. `generation` moves on every drop, so a lookup that started before a drop
 * does not put a stale row back.
 *
 * Reads and this process's spend steps are ordered by a local counter (`mark()`), not by
 * database time: a step's time is taken before it commits, so a read whose snapshot
 * missed a step can carry a later time than the step. When a step here ended while a read
 * was out, which of the two saw more is unknown, and this process's step wins: its figures
 * for the key, and its moves of the budgets above. Steps on one key are ordered among
 * themselves by their database time, taken after their row locks.
 */
export class KeyCache {
  generation = 0;
  /** Change notifications are being received: entries live `ttlMs`. */
  listening = false;
  /**
   * Changes cannot be heard (the connection goes through a pooler and no direct URL was
   * given): entries live `fallbackTtlMs` instead, the bound on how late another process's
   * change shows here. Changes made here still show at once.
   */
  unheard = false;
  private readonly entries = new Map<string, CachedKey>();
  /** Key id -> the cache keys of that key and of keys under it (one string, or a set when several). */
  private readonly byId = new Map<number, string | Set<string>>();
  /**
   * What each budgeted key and account ceiling above cached keys leaves. Shared, so that a
   * charge here on one child is seen at once by its cached siblings: every step on a key
   * moves the rooms of its ancestors and account by what it moved the key. Steps taken by
   * other processes show when an entry is read again (at most its TTL), like other figures.
   */
  private readonly rooms = new Map<string, Room>();
  /** The local counter; when (by it) the latest step here ended on each budget (`k<id>`, `a<id>`, `w<id>`). */
  private tick = 0;
  private readonly stepEnds = new Map<string, number>();
  /** The figures of the latest step here on each key (by database time), and when it ended. */
  private readonly lastSteps = new Map<number, { budget: number | null; spent: Micros; held: Micros; at: number; end: number }>();
  /** The entries whose figures are a step's: its database time. */
  private readonly stepAt = new WeakMap<CachedKey, number>();
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private invalidations = 0;

  constructor(
    readonly maxKeys: number,
    readonly ttlMs: number,
    readonly fallbackTtlMs = 1_000,
  ) {}

  /** Whether entries are kept and served: while notifications flow, or in the fallback when they cannot. */
  get serving(): boolean {
    return this.listening || (this.unheard && this.fallbackTtlMs > 0);
  }

  /** How long an entry stored now may be served. */
  get entryTtlMs(): number {
    return this.listening ? this.ttlMs : Math.min(this.ttlMs, this.fallbackTtlMs);
  }

  /** 'notify' (changes heard), 'fallback' (cannot be heard: short-lived entries) or 'off' (nothing served now). */
  get mode(): CacheStats['mode'] {
    return this.listening ? 'notify' : this.serving ? 'fallback' : 'off';
  }

  get(cacheKey: string, now: number): CachedKey | undefined {
    const entry = this.entries.get(cacheKey);
    if (entry === undefined || entry.until <= now) {
      if (entry !== undefined) this.remove(cacheKey, entry);
      this.misses++;
      return undefined;
    }
    this.entries.delete(cacheKey);
    this.entries.set(cacheKey, entry);
    this.hits++;
    return entry;
  }

  /** The local counter's next value: taken when a read or a step starts. */
  mark(): number {
    return ++this.tick;
  }

  /**
   * Stores a key read from the database, with what the budgets above it left at that read
   * (`rooms`: the same names as `entry.limits`). `since`: the mark taken when the read started.
   */
  set(cacheKey: string, entry: CachedKey, rooms: readonly number[] = [], since = this.tick): void {
    // A budget a step here moved while the read was out keeps the step's figure.
    const stepped = (name: string) => (this.stepEnds.get(name) ?? 0) > since && this.rooms.has(name);
    entry.limits.forEach((name, i) => {
      if (!stepped(name)) this.note(name, rooms[i] as number, entry.asOf);
    });
    const step = this.lastSteps.get(entry.id);
    const old = this.entries.get(cacheKey);
    if (step !== undefined && step.end > since) {
      // (The budget is the read's: a change of it is announced, and a read the change raced is not kept.)
      Object.assign(entry, { spent: step.spent, held: step.held });
      this.stepAt.set(entry, step.at);
    } else {
      if (entry.budget !== null) this.note(`k${entry.id}`, roomMicros(entry.budget, entry.spent, entry.held), entry.asOf);
      // Of two reads, the one that saw the later snapshot wins.
      if (old !== undefined && !this.stepAt.has(old) && old.asOf > entry.asOf) {
        Object.assign(entry, { budget: old.budget, spent: old.spent, held: old.held, asOf: old.asOf });
      }
    }
    if (old !== undefined) this.remove(cacheKey, old);
    this.entries.set(cacheKey, entry);
    this.index(entry.id, cacheKey);
    for (const id of entry.ancestors) this.index(id, cacheKey);
    while (this.entries.size > this.maxKeys) {
      const [oldestKey, oldest] = this.entries.entries().next().value as [string, CachedKey];
      this.remove(oldestKey, oldest);
      this.evictions++;
    }
  }

  /**
   * The least the budgets above a key leave (null: none has one; undefined: not known here
   * any more, so the key must be read again).
   */
  pathRoom(entry: CachedKey): number | null | undefined {
    return this.leastRoom(entry.limits);
  }

  /** The least the named budgets leave (null: none named; undefined: one not known here any more). */
  leastRoom(names: readonly string[]): number | null | undefined {
    let least: number | null = null;
    for (const name of names) {
      const r = this.rooms.get(name);
      if (r === undefined) return undefined;
      if (least === null || r.room < least) least = r.room;
    }
    return least;
  }

  /** Drops a key and every key under it. */
  invalidate(id: number): void {
    this.generation++;
    this.invalidations++;
    this.rooms.delete(`k${id}`);
    const found = this.byId.get(id);
    if (found === undefined) return;
    for (const cacheKey of typeof found === 'string' ? [found] : [...found]) {
      const entry = this.entries.get(cacheKey);
      if (entry !== undefined) this.remove(cacheKey, entry);
    }
  }

  clear(): void {
    this.generation++;
    this.entries.clear();
    this.byId.clear();
    this.rooms.clear();
  }

  /**
   * The figures of a key after a step taken here (`at`: the step's database time, taken after
   * its row locks), and what the step moved the budgets above it by (its ancestors', its
   * account's and its windows' rooms shrink by `above.moved`).
   */
  updateFigures(
    id: number,
    budget: number | null,
    spent: Micros,
    held: Micros,
    at: number,
    above: { moved: number; ancestors: readonly number[]; accountId: string | null; windows?: readonly number[] } = {
      moved: 0,
      ancestors: [],
      accountId: null,
    },
  ): void {
    const end = ++this.tick;
    if (this.lastSteps.size > 2 * this.maxKeys + 1_000) {
      // Forgotten steps could let a read that missed them in: reads now out are not kept.
      this.lastSteps.clear();
      this.stepEnds.clear();
      this.generation++;
    }
    const prior = this.lastSteps.get(id);
    // A step that ends after a later one on the same key (replies can cross) only moves the budgets above.
    const latest = prior === undefined || at >= prior.at;
    if (latest) this.lastSteps.set(id, { budget, spent, held, at, end });
    this.stepEnds.set(`k${id}`, end);
    for (const ancestor of above.ancestors) this.stepEnds.set(`k${ancestor}`, end);
    if (above.accountId !== null) this.stepEnds.set(`a${above.accountId}`, end);
    for (const w of above.windows ?? []) this.stepEnds.set(`w${w}`, end);
    if (latest && budget !== null) this.rooms.set(`k${id}`, { room: roomMicros(budget, spent, held), asOf: at });
    if (above.moved !== 0) {
      for (const ancestor of above.ancestors) this.move(`k${ancestor}`, above.moved, at);
      if (above.accountId !== null) this.move(`a${above.accountId}`, above.moved, at);
      // (A refund may move a window's counter less, as it stops at 0: its room then reads tighter than it is until read again.)
      for (const w of above.windows ?? []) this.move(`w${w}`, above.moved, at);
    }
    const found = this.byId.get(id);
    if (found === undefined) return;
    for (const cacheKey of typeof found === 'string' ? [found] : found) {
      const entry = this.entries.get(cacheKey);
      if (entry?.id === id && latest) {
        entry.asOf = Math.max(entry.asOf, at);
        entry.budget = budget;
        entry.spent = spent;
        entry.held = held;
        this.stepAt.set(entry, at);
      }
    }
  }

  stats(): CacheStats {
    return {
      size: this.entries.size,
      maxKeys: this.maxKeys,
      ttlMs: this.ttlMs,
      fallbackTtlMs: this.fallbackTtlMs,
      mode: this.mode,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      invalidations: this.invalidations,
      listening: this.listening,
    };
  }

  /** A room as read at `asOf`: kept unless a later figure is already known. */
  private note(name: string, room: number, asOf: number): void {
    const r = this.rooms.get(name);
    if (r === undefined || asOf >= r.asOf) this.rooms.set(name, { room, asOf });
    // Rooms of keys long gone from the cache are dropped now and then (a missing room only costs a read).
    if (this.rooms.size > 2 * this.maxKeys + 1_000) this.rooms.clear();
  }

  private move(name: string, delta: number, at: number): void {
    const r = this.rooms.get(name);
    if (r !== undefined) this.rooms.set(name, { room: r.room - delta, asOf: Math.max(r.asOf, at) });
  }

  private index(id: number, cacheKey: string): void {
    const found = this.byId.get(id);
    if (found === undefined) this.byId.set(id, cacheKey);
    else if (typeof found === 'string') {
      if (found !== cacheKey) this.byId.set(id, new Set([found, cacheKey]));
    } else found.add(cacheKey);
  }

  private unindex(id: number, cacheKey: string): void {
    const found = this.byId.get(id);
    if (found === cacheKey) this.byId.delete(id);
    else if (typeof found === 'object') {
      found.delete(cacheKey);
      if (found.size === 1) this.byId.set(id, found.values().next().value as string);
    }
  }

  private remove(cacheKey: string, entry: CachedKey): void {
    this.entries.delete(cacheKey);
    this.unindex(entry.id, cacheKey);
    for (const id of entry.ancestors) this.unindex(id, cacheKey);
  }
}
