import type { KeyStatus } from './store/keys.js';

/** What validation needs of a key, kept small: the cache may hold many thousands. */
export interface CachedKey {
  id: number;
  accountId: string | number;
  name: string | null;
  scopes: string[] | null;
  budget: number | null;
  spent: number;
  held: number;
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
}

export interface CacheStats {
  size: number;
  maxKeys: number;
  ttlMs: number;
  hits: number;
  misses: number;
  evictions: number;
  invalidations: number;
  /** True while change notifications are being received: only then are entries kept. */
  listening: boolean;
}

/**
 * A bounded LRU of validated keys, by lookup hash (or subject). Entries also expire by time,
 * and are dropped by key id, for the key itself and for every key under it, when a change
 * is announced. `generation` moves on every drop, so a lookup that started before a drop
 * does not put a stale row back.
 */
export class KeyCache {
  generation = 0;
  listening = false;
  private readonly entries = new Map<string, CachedKey>();
  /** Key id -> the cache keys of that key and of keys under it (one string, or a set when several). */
  private readonly byId = new Map<number, string | Set<string>>();
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private invalidations = 0;

  constructor(readonly maxKeys: number, readonly ttlMs: number) {}

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

  set(cacheKey: string, entry: CachedKey): void {
    const old = this.entries.get(cacheKey);
    if (old !== undefined && old.asOf > entry.asOf) {
      // A read that started before the latest spend seen here keeps that spend's figures.
      Object.assign(entry, { budget: old.budget, spent: old.spent, held: old.held, asOf: old.asOf });
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

  /** Drops a key and every key under it. */
  invalidate(id: number): void {
    this.generation++;
    this.invalidations++;
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
  }

  /** Fresher spend figures for a cached key, from a charge or hold made here. */
  updateFigures(id: number, budget: number | null, spent: number, held: number, at: number): void {
    const found = this.byId.get(id);
    if (found === undefined) return;
    for (const cacheKey of typeof found === 'string' ? [found] : found) {
      const entry = this.entries.get(cacheKey);
      if (entry?.id === id && at >= entry.asOf) {
        entry.asOf = at;
        entry.budget = budget;
        entry.spent = spent;
        entry.held = held;
      }
    }
  }

  stats(): CacheStats {
    return {
      size: this.entries.size,
      maxKeys: this.maxKeys,
      ttlMs: this.ttlMs,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      invalidations: this.invalidations,
      listening: this.listening,
    };
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
