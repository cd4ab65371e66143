import { describe, expect, it } from 'vitest';
import { type CachedKey, KeyCache } from '../src/cache.js';

/**
 * The validation cache's ordering of reads against this process's steps, on the cache
 * itself (the database paths are in cache-listen.test.ts and express-hold.test.ts).
 * A step's database time is taken before it commits, so a read whose snapshot missed
 * the step can carry a later time: the order that counts is the local one.
 */

const M = 10_000; // micros per cent

function read(fields: Partial<CachedKey> & { asOf: number }): CachedKey {
  return {
    id: 1,
    accountId: 'acct_1',
    userId: null,
    name: null,
    scopes: null,
    budget: 100 * M,
    spent: 0,
    held: 50 * M,
    limits: ['aacct_1'],
    ownWindows: [],
    period: null,
    resetAt: null,
    expiresAt: null,
    delegatedBy: null,
    status: 'active',
    ancestors: [],
    until: Number.MAX_SAFE_INTEGER,
    rateLimits: null,
    ...fields,
  };
}

const account = { moved: -50 * M, ancestors: [], accountId: 'acct_1' };
const figures = (c: KeyCache) => {
  const e = c.get('h', 0) as CachedKey;
  return { spent: Number(e.spent) / M, held: Number(e.held) / M, account: (c.leastRoom(['aacct_1']) as number) / M };
};

describe('KeyCache: reads and steps of this process', () => {
  it('regression: a step that ends while a read is out wins, though the read carries a later database time', () => {
    const c = new KeyCache(100, 5_000);
    c.set('h', read({ asOf: 1_000 }), [900 * M]);
    const since = c.mark();
    // The hold of 50 is released: the step's time (1_100) is before the read's (1_200), but
    // its commit came after the read's snapshot, which still shows the hold.
    c.updateFigures(1, 100 * M, 0, 0, 1_100, account);
    c.set('h', read({ asOf: 1_200 }), [900 * M], since);
    expect(figures(c)).toEqual({ spent: 0, held: 0, account: 950 });
  });

  it('regression: the same when the key was not cached when the step ended', () => {
    const c = new KeyCache(100, 5_000);
    const since = c.mark();
    c.updateFigures(1, 100 * M, 0, 0, 1_100, { moved: 0, ancestors: [], accountId: 'acct_1' });
    c.set('h', read({ asOf: 1_200 }), [900 * M], since);
    expect(c.get('h', 0)?.held).toBe(0);
  });

  it('happy: a read that started after the step ended is newer, and its figures are kept', () => {
    const c = new KeyCache(100, 5_000);
    c.set('h', read({ asOf: 1_000 }), [900 * M]);
    c.updateFigures(1, 100 * M, 0, 0, 1_100, account);
    const since = c.mark();
    // Another process spent 30 since: the read saw it.
    c.set('h', read({ asOf: 1_200, spent: 30 * M, held: 0 }), [920 * M], since);
    expect(figures(c)).toEqual({ spent: 30, held: 0, account: 920 });
  });

  it('happy: a step that ends after the read ended applies to the cached entry', () => {
    const c = new KeyCache(100, 5_000);
    c.set('h', read({ asOf: 1_000, held: 0 }), [900 * M]);
    c.updateFigures(1, 100 * M, 20 * M, 0, 1_100, { moved: 20 * M, ancestors: [], accountId: 'acct_1' });
    expect(figures(c)).toEqual({ spent: 20, held: 0, account: 880 });
  });

  it('edge: replies of two steps on one key that cross: the later step by database time keeps its figures, both move the budgets above', () => {
    const c = new KeyCache(100, 5_000);
    c.set('h', read({ asOf: 1_000, held: 0 }), [900 * M]);
    const charge = (cents: number) => ({ moved: cents * M, ancestors: [], accountId: 'acct_1' });
    c.updateFigures(1, 100 * M, 30 * M, 0, 1_200, charge(10)); // the second charge of 10, answered first
    c.updateFigures(1, 100 * M, 20 * M, 0, 1_100, charge(20)); // the first charge of 20
    expect(figures(c)).toEqual({ spent: 30, held: 0, account: 870 });
  });

  it('edge: of two reads with no step between, the later snapshot wins whichever lands last', () => {
    const c = new KeyCache(100, 5_000);
    c.set('h', read({ asOf: 2_000, spent: 40 * M, held: 0 }), [860 * M]);
    c.set('h', read({ asOf: 1_000, spent: 10 * M, held: 0 }), [890 * M]);
    expect(figures(c)).toEqual({ spent: 40, held: 0, account: 860 });
  });
});
