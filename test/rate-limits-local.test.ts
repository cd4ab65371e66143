import { afterEach, describe, expect, it, vi } from 'vitest';
import { RateLimiter, type KeyLimits } from '../src/rate-limits.js';
import type { RateLimitStore } from '../src/store/rate-limits.js';
import { seededRandom as rng } from './helpers/random.js';

/**
 * The local mode's counter on its own (no database): a sliding window estimated from two
 * fixed ones. Its bounds, as the README states them: no fixed window ever admits more than
 * `requests` in one process, and a sliding span of `per` at most twice that (a burst at the
 * end of one window, then the estimate's weighting). Also: a refusal's resetAt is when a
 * retry passes. Time is simulated with a fake clock.
 */

afterEach(() => {
  vi.useRealTimers();
});

const limits = (limit: number, perSeconds: number): KeyLimits => ({
  rates: [{ scope: `k:${perSeconds}:1`, limit, perSeconds, limitedBy: { kind: 'key', keyId: 1 }, accountId: 'a' }],
  concurrency: [],
});
const limiter = () => new RateLimiter('local', {} as RateLimitStore, (e) => { throw e; }, { maxBatch: 1, lanes: 1 });

describe('the local sliding-window counter', () => {
  it('property: over random arrivals no fixed window admits more than the limit, no sliding span more than twice it', async () => {
    vi.useFakeTimers();
    for (let seed = 1; seed <= 20; seed++) {
      const random = rng(seed);
      const limit = 1 + Math.floor(random() * 20);
      const per = 10;
      const l = limiter();
      const admitted: number[] = [];
      let t = Date.UTC(2026, 0, 1) + Math.floor(random() * 10_000);
      const end = t + 6 * per * 1_000;
      while (t < end) {
        vi.setSystemTime(t);
        const a = await l.admit(limits(limit, per), false);
        if (a.admitted) admitted.push(t);
        else {
          // A refusal's resetAt is in the future, and a retry then passes.
          const at = Date.parse(a.refusal.resetAt as string);
          expect(at).toBeGreaterThan(t);
          expect(a.refusal.retryAfterMs).toBe(at - t);
        }
        // Bursts and lulls: sometimes many at once, sometimes a long gap.
        t += random() < 0.7 ? Math.floor(random() * 50) : Math.floor(random() * 4_000);
      }
      const byWindow = new Map<number, number>();
      for (const at of admitted) byWindow.set(Math.floor(at / (per * 1_000)), (byWindow.get(Math.floor(at / (per * 1_000))) ?? 0) + 1);
      for (const [, n] of byWindow) expect(n).toBeLessThanOrEqual(limit);
      for (let i = 0; i < admitted.length; i++) {
        const inSpan = admitted.filter((at) => at >= admitted[i]! && at < admitted[i]! + per * 1_000).length;
        expect(inSpan).toBeLessThanOrEqual(2 * limit);
      }
    }
  });

  it("happy: after a full window the previous one's weight shrinks as the window slides, and resetAt is when it has room", async () => {
    vi.useFakeTimers();
    const l = limiter();
    const start = Date.UTC(2026, 0, 1);
    vi.setSystemTime(start);
    for (let i = 0; i < 10; i++) expect((await l.admit(limits(10, 10), false)).admitted).toBe(true);
    // 10% into the next window: the estimate is 10 x 0.9 = 9, room for one more.
    vi.setSystemTime(start + 11_000);
    expect((await l.admit(limits(10, 10), false)).admitted).toBe(true);
    const refused = await l.admit(limits(10, 10), false);
    expect(refused.admitted).toBe(false);
    // Room again once 10 x (1 - f) + 1 + 1 <= 10: f >= 0.2, at 12 s.
    expect(refused.admitted === false && refused.refusal.resetAt).toBe(new Date(start + 12_000).toISOString());
    vi.setSystemTime(start + 12_000);
    expect((await l.admit(limits(10, 10), false)).admitted).toBe(true);
  });
});
