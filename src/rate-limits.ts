// Request rate limits and concurrency limits, as validation enforces them: which limits a
// key is under (its own and its account's), and the two ways of counting requests per
// window. 'exact' counts in the database (sql/functions/rate_take.sql), one statement for
// the validations that arrive together; 'local' counts in this process's memory. Requests
// in flight are counted in this process in both modes.
import { Coalescer, ItemFailure } from './coalesce.js';
import type { RateItem, RateTaken, RateLimitStore } from './store/rate-limits.js';
import type { KeyRow } from './store/keys.js';
import type { RateLimitedBy, RateLimited } from './types.js';

/** One limit over a key: requests per window, or requests in flight. */
interface Rule {
  /** Names the limit (and, for a rate, its window length): 'k:<per_s>:<id>', 'a:<per_s>:<account>', 'kc:<id>', 'ac:<account>'. */
  scope: string;
  limit: number;
  perSeconds: number;
  limitedBy: RateLimitedBy;
  /** The key's account: the exact mode counts each account's limits inside that account. */
  accountId: string;
}

/** The limits over a key, as cached with it; null on a key with none (the fast path). */
export interface KeyLimits {
  rates: readonly Rule[];
  concurrency: readonly Rule[];
}

/** The limits a key row is under: its own and its account's. */
export function limitsOf(row: KeyRow): KeyLimits | null {
  const rates: Rule[] = [];
  const concurrency: Rule[] = [];
  const key: RateLimitedBy = { kind: 'key', keyId: Number(row.id) };
  const accountId = String(row.account_id);
  const account: RateLimitedBy = { kind: 'account', accountId };
  const n = (v: number | string | null) => (v === null || v === undefined ? null : Number(v));
  const [kr, kp, kc] = [n(row.rate_limit_requests), n(row.rate_limit_per_s), n(row.concurrency_limit)];
  const [ar, ap, ac] = [n(row.account_rate_requests), n(row.account_rate_per_s), n(row.account_concurrency)];
  // A value no library call writes (an SQL edit: 0 or less) is no limit, as NULL is.
  if (kr !== null && kp !== null && kr > 0 && kp > 0) rates.push({ scope: `k:${kp}:${row.id}`, limit: kr, perSeconds: kp, limitedBy: key, accountId });
  if (ar !== null && ap !== null && ar > 0 && ap > 0) rates.push({ scope: `a:${ap}:${row.account_id}`, limit: ar, perSeconds: ap, limitedBy: account, accountId });
  if (kc !== null && kc > 0) concurrency.push({ scope: `kc:${row.id}`, limit: kc, perSeconds: 0, limitedBy: key, accountId });
  if (ac !== null && ac > 0) concurrency.push({ scope: `ac:${row.account_id}`, limit: ac, perSeconds: 0, limitedBy: account, accountId });
  return rates.length === 0 && concurrency.length === 0 ? null : { rates, concurrency };
}

/** Admitted (with the release of its concurrency slots), or refused. */
export type Admission = { admitted: true; release: () => void } | { admitted: false; refusal: RateLimited };

const NOTHING = () => {};
/** What a concurrency refusal suggests waiting: a slot frees when some request ends, which no one can know. */
const CONCURRENCY_RETRY_MS = 1_000;
/** Most windows the local mode keeps before it drops the ones that ended. */
const LOCAL_MAX_WINDOWS = 100_000;

/** A window of the local mode: requests admitted in this one and in the one before. */
interface LocalWindow {
  win: number;
  cur: number;
  prev: number;
}

export class RateLimiter {
  private readonly windows = new Map<string, LocalWindow>();
  private readonly inFlight = new Map<string, number>();
  private readonly takes: Coalescer<readonly Rule[], RateTaken> | null;

  constructor(
    readonly mode: 'local' | 'exact',
    store: RateLimitStore,
    /** Turns a database fault into its AgentKeyError. */
    private readonly fault: (err: unknown) => never,
    batching: { maxBatch: number; lanes: number },
  ) {
    this.takes = mode === 'exact' ? new Coalescer((batch) => this.takeExact(store, batch), batching) : null;
  }

  /**
   * Counts one request against every limit over a key: its concurrency slots first when
   * `acquire` (free, in memory), then its rate limits; all or nothing, so a refused request
   * counts against no limit. Throws only a database fault (exact mode), holding no slot.
   */
  async admit(limits: KeyLimits, acquire: boolean): Promise<Admission> {
    let release = NOTHING;
    if (acquire && limits.concurrency.length > 0) {
      const full = limits.concurrency.find((r) => (this.inFlight.get(r.scope) ?? 0) >= r.limit);
      if (full) return { admitted: false, refusal: refusal('concurrency', full.limitedBy, CONCURRENCY_RETRY_MS, null) };
      for (const r of limits.concurrency) this.inFlight.set(r.scope, (this.inFlight.get(r.scope) ?? 0) + 1);
      release = this.releaser(limits.concurrency);
    }
    if (limits.rates.length === 0) return { admitted: true, release };
    let refused: RateLimited | null;
    try {
      refused = this.takes === null ? this.takeLocal(limits.rates, Date.now()) : await this.exact(limits.rates);
    } catch (err) {
      release();
      throw err;
    }
    if (refused === null) return { admitted: true, release };
    release();
    return { admitted: false, refusal: refused };
  }

  /** Requests in flight under a limit here (for tests and metrics). */
  inFlightCount(scope: string): number {
    return this.inFlight.get(scope) ?? 0;
  }

  /** Resolves when no exact take is queued or in flight. */
  settled(): Promise<void> {
    return this.takes?.settled() ?? Promise.resolve();
  }

  private releaser(rules: readonly Rule[]): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const r of rules) {
        const left = (this.inFlight.get(r.scope) ?? 1) - 1;
        if (left <= 0) this.inFlight.delete(r.scope);
        else this.inFlight.set(r.scope, left);
      }
    };
  }

  /**
   * The local mode: a sliding window estimated from two fixed ones (the current window's
   * count, plus the previous window's weighted by how much of it the sliding window still
   * covers). A request passes when the estimate leaves room for it and the current fixed
   * window is under the limit too, so no fixed window ever admits more than the limit here.
   */
  private takeLocal(rules: readonly Rule[], now: number): RateLimited | null {
    const states: LocalWindow[] = [];
    for (const r of rules) {
      const perMs = r.perSeconds * 1_000;
      const win = Math.floor(now / perMs);
      let w = this.windows.get(r.scope);
      if (w === undefined) {
        if (this.windows.size >= LOCAL_MAX_WINDOWS) this.sweep(now);
        w = { win, cur: 0, prev: 0 };
        this.windows.set(r.scope, w);
      } else if (w.win !== win) {
        // A window ended: the one just past becomes the previous one (or none, after a gap).
        w.prev = w.win === win - 1 ? w.cur : 0;
        w.cur = 0;
        w.win = win;
      }
      const start = win * perMs;
      const covered = 1 - (now - start) / perMs;
      if (w.cur >= r.limit) return refusal('requests', r.limitedBy, start + perMs - now, start + perMs);
      if (w.prev * covered + w.cur + 1 > r.limit) {
        // The estimate falls as the window slides: room for one more once prev * covered <= limit - cur - 1.
        const at = start + Math.ceil(perMs * (1 - (r.limit - w.cur - 1) / w.prev));
        return refusal('requests', r.limitedBy, Math.max(1, at - now), at);
      }
      states.push(w);
    }
    for (const w of states) w.cur++;
    return null;
  }

  /** Drops the windows that no longer count (older than the previous one). */
  private sweep(now: number): void {
    for (const [scope, w] of this.windows) {
      const perMs = Number(scope.split(':')[1]) * 1_000;
      if (Math.floor(now / perMs) - w.win > 1) this.windows.delete(scope);
    }
  }

  private async exact(rules: readonly Rule[]): Promise<RateLimited | null> {
    const taken = await (this.takes as Coalescer<readonly Rule[], RateTaken>).submit(rules).catch(this.fault);
    if (taken.refused_scope === null) return null;
    const rule = rules.find((r) => r.scope === taken.refused_scope) ?? (rules[0] as Rule);
    const resetAt = new Date(taken.reset_at as Date).getTime();
    return refusal('requests', rule.limitedBy, Math.max(0, resetAt - new Date(taken.at).getTime()), resetAt);
  }

  /** One statement for the batch: each request's limits, in order. */
  private async takeExact(store: RateLimitStore, batch: (readonly Rule[])[]): Promise<(RateTaken | ItemFailure)[]> {
    const items: RateItem[] = batch.flatMap((rules, req) => rules.map((r) => ({ req, scope: r.scope, perSeconds: r.perSeconds, limit: r.limit, accountId: r.accountId })));
    const rows = await store.take(items);
    const byReq = new Map(rows.map((r) => [Number(r.req), r]));
    return batch.map((_, req) => byReq.get(req) ?? new ItemFailure(new Error('agentkey: the rate limit function returned no row for a request.')));
  }
}

function refusal(limit: 'requests' | 'concurrency', limitedBy: RateLimitedBy, retryAfterMs: number, resetAt: number | null): RateLimited {
  return {
    valid: false,
    reason: 'rate_limited',
    limit,
    limitedBy,
    retryAfterMs: Math.ceil(retryAfterMs),
    resetAt: resetAt === null ? null : new Date(resetAt).toISOString(),
  };
}

/**
 * Gives a valid result its `release()`, not enumerable: it stays out of JSON and of
 * comparisons of results, as a method would.
 */
export function withRelease<T extends object>(result: T, release: () => void): T {
  Object.defineProperty(result, 'release', { value: release, enumerable: false, configurable: true, writable: true });
  return result;
}

/** A copy of a valid result (`{ ...result, ... }`) keeps its `release()`. */
export function keepRelease<T extends object>(from: { release?: () => void }, to: T): T {
  return typeof from.release === 'function' ? withRelease(to, from.release) : to;
}
