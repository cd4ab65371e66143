import { describe, expect, it } from 'vitest';
import type { AgentKey, AgentKeyOptions, RateLimited, ValidationResult } from '../src/index.js';
import { forEachDatabase, type TestDb, uniqueName } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { ISO, valid } from './helpers/results.js';
import { tableState } from './helpers/tables.js';

/**
 * Request rate limits and concurrency limits through the library, on PostgreSQL and
 * PGlite, in both modes: a key's own limit and its account's, all or nothing; refusals say
 * which limit, until when; a key with no limit is never refused by one and costs no query;
 * bad input changes nothing. Windows of a day ('1d') keep every test inside one window.
 */

const MODES = ['exact', 'local'] as const;
const account = () => uniqueName('acct_rl');

function rateLimited(r: ValidationResult): RateLimited {
  expect(r.valid, JSON.stringify(r)).toBe(false);
  expect((r as RateLimited).reason).toBe('rate_limited');
  return r as RateLimited;
}

/** The next UTC midnight: where a '1d' window ends. */
function nextMidnight(): number {
  const d = new Date();
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
}

/** A counter of statements: `wrap` counts `query` calls on an object, passing everything else through. */
function counter(texts: string[]) {
  const wrap = <T extends object>(target: T, inner?: (value: unknown) => unknown): T =>
    new Proxy(target, {
      get(t, prop) {
        const value = Reflect.get(t, prop, t);
        if (typeof value !== 'function') return value;
        if (prop === 'query') {
          return (text: string, ...rest: unknown[]) => {
            texts.push(text);
            return (value as (...a: unknown[]) => unknown).call(t, text, ...rest);
          };
        }
        // A node-postgres client handed out by connect(): its statements are counted too.
        if (prop === 'connect' && inner) return (...a: unknown[]) => (value as (...a: unknown[]) => Promise<unknown>).call(t, ...a).then(inner);
        return (value as (...a: unknown[]) => unknown).bind(t);
      },
    });
  return wrap;
}

/** The test database's pool, counting every statement sent through it (pool.query, and clients from pool.connect). */
function countingPool(db: TestDb) {
  const texts: string[] = [];
  const wrap = counter(texts);
  const pool = wrap(db.pool as unknown as object, (client) => wrap(client as object));
  return { pool: pool as unknown as AgentKeyOptions['pool'], texts };
}

forEachDatabase((getDb) => {
  describe('configuring rate limits', () => {
    it('happy: create() and update() take rateLimit and concurrency; getKey() and listKeys() show them; null removes them', async () => {
      const ak = await getDb().agentKey();
      const acct = account();
      const { id } = await ak.create({ accountId: acct, rateLimit: { requests: 60, per: '60s' }, concurrency: 5 });
      expect(await ak.getKey(id)).toMatchObject({ rateLimit: { requests: 60, per: '1m' }, concurrency: 5 });
      expect((await ak.listKeys({ accountId: acct }))[0]).toMatchObject({ rateLimit: { requests: 60, per: '1m' }, concurrency: 5 });
      expect(await ak.update(id, { rateLimit: { requests: 10, per: '1h' } })).toMatchObject({ rateLimit: { requests: 10, per: '1h' }, concurrency: 5 });
      expect(await ak.update(id, { rateLimit: null, concurrency: null })).toMatchObject({ rateLimit: null, concurrency: null });
      const plain = await ak.create({ accountId: acct });
      expect(await ak.getKey(plain.id)).toMatchObject({ rateLimit: null, concurrency: null });
    });

    it('error: a bad rateLimit or concurrency is invalid_rate_limit on create, update, ensureSubject and the account setter, and changes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const acct = account();
      const { id } = await ak.create({ accountId: acct });
      const bad: unknown[] = [
        { requests: 0, per: '1m' },
        { requests: 1.5, per: '1m' },
        { requests: '60', per: '1m' },
        { requests: 1_000_000_001, per: '1m' },
        { requests: 60 },
        { requests: 60, per: '0s' },
        { requests: 60, per: '2d' },
        { requests: 60, per: '1w' },
        { requests: 60, per: '1mo' },
        { requests: 60, per: 60 },
        { requests: 60, per: '1m', burst: 2 },
        [60, '1m'],
        '60/1m',
      ];
      const before = await tableState(db, ak);
      for (const rateLimit of bad) {
        const label = JSON.stringify(rateLimit);
        await rejectsWith(() => ak.create({ accountId: acct, rateLimit } as never), 'invalid_rate_limit', `create ${label}`);
        await rejectsWith(() => ak.update(id, { rateLimit } as never), 'invalid_rate_limit', `update ${label}`);
        await rejectsWith(() => ak.ensureSubject(uniqueName('sub'), { rateLimit } as never), 'invalid_rate_limit', `subject ${label}`);
        await rejectsWith(() => ak.setAccountRateLimit(acct, { rateLimit } as never), 'invalid_rate_limit', `account ${label}`);
      }
      for (const concurrency of [0, -1, 2.5, '5', 1_000_001]) {
        await rejectsWith(() => ak.create({ accountId: acct, concurrency } as never), 'invalid_rate_limit', `create concurrency ${concurrency}`);
        await rejectsWith(() => ak.update(id, { concurrency } as never), 'invalid_rate_limit', `update concurrency ${concurrency}`);
        await rejectsWith(() => ak.setAccountRateLimit(acct, { concurrency } as never), 'invalid_rate_limit', `account concurrency ${concurrency}`);
      }
      await rejectsWith(() => ak.setAccountRateLimit(acct, {}), 'invalid_rate_limit');
      await rejectsWith(() => ak.setAccountRateLimit(acct, { burst: 1 } as never), 'invalid_argument');
      await rejectsWith(() => ak.validate('ak_x', { acquire: 'yes' } as never), 'invalid_argument');
      await rejectsWith(() => ak.validate('ak_x', { acquired: true } as never), 'invalid_argument');
      expect(await tableState(db, ak)).toEqual(before);
      expect(await ak.getAccountRateLimit(acct)).toBeNull();
      expect(() => new (ak.constructor as new (o: unknown) => AgentKey)({ pool: db.pool, rateLimits: { mode: 'fast' } })).toThrow(/rateLimits.mode/);
    });

    it('happy: an account limit is set, read, changed field by field and removed; listAccounts shows it', async () => {
      const ak = await getDb().agentKey();
      const acct = account();
      await ak.create({ accountId: acct });
      const set = await ak.setAccountRateLimit(acct, { rateLimit: { requests: 600, per: '1m' }, concurrency: 20 });
      expect(set).toEqual({ accountId: acct, rateLimit: { requests: 600, per: '1m' }, concurrency: 20, updatedAt: expect.stringMatching(ISO) });
      expect(await ak.getAccountRateLimit(acct)).toEqual(set);
      expect(await ak.setAccountRateLimit(acct, { concurrency: null })).toMatchObject({ rateLimit: { requests: 600, per: '1m' }, concurrency: null });
      expect((await ak.listAccounts()).find((a) => a.accountId === acct)).toMatchObject({ rateLimit: { requests: 600, per: '1m' }, concurrency: null });
      // Nothing left: the row goes.
      expect(await ak.setAccountRateLimit(acct, { rateLimit: null })).toBeNull();
      expect(await ak.getAccountRateLimit(acct)).toBeNull();
      await ak.setAccountRateLimit(acct, { concurrency: 3 });
      expect(await ak.clearAccountRateLimit(acct)).toBe(true);
      expect(await ak.clearAccountRateLimit(acct)).toBe(false);
      expect((await ak.listAccounts()).find((a) => a.accountId === acct)).toMatchObject({ rateLimit: null, concurrency: null });
    });
  });

  for (const mode of MODES) {
    describe(`enforcing request rate limits (${mode})`, () => {
      const make = () => getDb().agentKey({ rateLimits: { mode } });

      it('happy: a key admits `requests` validations per window, then refuses with which limit, until when and how long', async () => {
        const ak = await make();
        const { key, id } = await ak.create({ accountId: account(), rateLimit: { requests: 3, per: '1d' } });
        for (let i = 0; i < 3; i++) valid(await ak.validate(key));
        const before = Date.now();
        const r = rateLimited(await ak.validate(key));
        expect(r).toEqual({
          valid: false,
          reason: 'rate_limited',
          limit: 'requests',
          limitedBy: { kind: 'key', keyId: id },
          retryAfterMs: expect.any(Number),
          resetAt: new Date(nextMidnight()).toISOString(),
        });
        // retryAfterMs is the time to resetAt (from the clock that counted: this process's or the database's).
        expect(Math.abs(before + r.retryAfterMs - nextMidnight())).toBeLessThan(10_000);
        // A refusal counts against nothing: still refused, still the same window.
        expect(rateLimited(await ak.validate(key)).resetAt).toBe(r.resetAt);
        // Raising the limit takes effect at once (this process's cache is told).
        await ak.update(id, { rateLimit: { requests: 5, per: '1d' } });
        valid(await ak.validate(key));
        valid(await ak.validate(key));
        rateLimited(await ak.validate(key));
        // Removing it: never refused again.
        await ak.update(id, { rateLimit: null });
        for (let i = 0; i < 20; i++) valid(await ak.validate(key));
        await ak.close();
      });

      it('happy: 60 concurrent validations of a key limited to 25 a day admit exactly 25', async () => {
        const ak = await make();
        const { key } = await ak.create({ accountId: account(), rateLimit: { requests: 25, per: '1d' } });
        const results = await Promise.all(Array.from({ length: 60 }, () => ak.validate(key)));
        expect(results.filter((r) => r.valid)).toHaveLength(25);
        expect(results.filter((r) => !r.valid && r.reason === 'rate_limited')).toHaveLength(35);
        await ak.close();
      });

      it("happy: an account's limit covers all its keys together, all or nothing with each key's own", async () => {
        const ak = await make();
        const acct = account();
        const a = await ak.create({ accountId: acct, rateLimit: { requests: 1, per: '1d' } });
        const b = await ak.create({ accountId: acct });
        await ak.setAccountRateLimit(acct, { rateLimit: { requests: 3, per: '1d' } });
        valid(await ak.validate(a.key));
        // Refused by the key's own limit: the account's window is not charged for it.
        expect(rateLimited(await ak.validate(a.key)).limitedBy).toEqual({ kind: 'key', keyId: a.id });
        valid(await ak.validate(b.key));
        valid(await ak.validate(b.key));
        expect(rateLimited(await ak.validate(b.key)).limitedBy).toEqual({ kind: 'account', accountId: acct });
        // Another account is not under it.
        const other = await ak.create({ accountId: account() });
        for (let i = 0; i < 5; i++) valid(await ak.validate(other.key));
        // The account limit removed: b passes again, a stays under its own.
        await ak.clearAccountRateLimit(acct);
        valid(await ak.validate(b.key));
        rateLimited(await ak.validate(a.key));
        await ak.close();
      });

      it("happy: a subject's limit is its row's; a child's limit is its own, not its parent's", async () => {
        const ak = await make();
        const acct = account();
        const subject = uniqueName('agent');
        await ak.ensureSubject(subject, { accountId: acct, rateLimit: { requests: 2, per: '1d' } });
        valid(await ak.validateBySubject(subject));
        valid(await ak.validateBySubject(subject));
        rateLimited(await ak.validateBySubject(subject));
        const parent = await ak.create({ accountId: acct, rateLimit: { requests: 1, per: '1d' } });
        const child = await ak.create({ accountId: acct, parentId: parent.id, rateLimit: { requests: 3, per: '1d' } });
        valid(await ak.validate(parent.key));
        rateLimited(await ak.validate(parent.key));
        for (let i = 0; i < 3; i++) valid(await ak.validate(child.key));
        expect(rateLimited(await ak.validate(child.key)).limitedBy).toEqual({ kind: 'key', keyId: child.id });
        await ak.close();
      });

      it('happy: a key with no limit is never refused by one, and its cached validations send no statement', async () => {
        const db = getDb();
        const { pool, texts } = countingPool(db);
        const ak = await db.agentKey({ pool, rateLimits: { mode } });
        const free = await ak.create({ accountId: account() });
        const limited = await ak.create({ accountId: account(), rateLimit: { requests: 1_000, per: '1d' } });
        valid(await ak.validate(free.key));
        valid(await ak.validate(limited.key));
        // Wait for the cache to hear changes, so both keys are served from it.
        for (let i = 0; i < 200 && !ak.cacheStats()?.listening; i++) await new Promise((r) => setTimeout(r, 10));
        valid(await ak.validate(free.key));
        valid(await ak.validate(limited.key));
        await ak.flush();
        // Statements about this table, but not the batched last_used_at stamps (nor the listener's own).
        const counted = (from: number) => texts.slice(from).filter((t) => t.includes(ak.tableName) && !/last_used_at/.test(t));
        const start = texts.length;
        for (let i = 0; i < 100; i++) valid(await ak.validate(free.key));
        expect(counted(start), 'validations of a key with no limit sent statements').toEqual([]);
        const limitedStart = texts.length;
        for (let i = 0; i < 10; i++) valid(await ak.validate(limited.key));
        // The exact mode pays one statement per validation of a limited key (none are concurrent here); local none.
        expect(counted(limitedStart).filter((t) => /rate_take/.test(t))).toHaveLength(mode === 'exact' ? 10 : 0);
        await ak.close();
      });
    });

    describe(`concurrency limits (${mode})`, () => {
      it('happy: validate(key, { acquire: true }) takes a slot, refused past the limit, freed by release() once', async () => {
        const ak = await getDb().agentKey({ rateLimits: { mode } });
        const acct = account();
        const { key, id } = await ak.create({ accountId: acct, concurrency: 2 });
        const first = valid(await ak.validate(key, { acquire: true }));
        const second = valid(await ak.validate(key, { acquire: true }));
        const third = rateLimited(await ak.validate(key, { acquire: true }));
        expect(third).toEqual({ valid: false, reason: 'rate_limited', limit: 'concurrency', limitedBy: { kind: 'key', keyId: id }, retryAfterMs: 1000, resetAt: null });
        // Without acquire, no slot is taken or checked.
        valid(await ak.validate(key));
        expect(Object.keys(first)).not.toContain('release');
        first.release?.();
        first.release?.();
        const again = valid(await ak.validate(key, { acquire: true }));
        rateLimited(await ak.validate(key, { acquire: true }));
        second.release?.();
        again.release?.();
        // The account's concurrency covers its keys together.
        await ak.setAccountRateLimit(acct, { concurrency: 1 });
        const other = await ak.create({ accountId: acct });
        const held = valid(await ak.validate(other.key, { acquire: true }));
        expect(rateLimited(await ak.validate(key, { acquire: true })).limitedBy).toEqual({ kind: 'account', accountId: acct });
        held.release?.();
        valid(await ak.validate(key, { acquire: true })).release?.();
        await ak.close();
      });

      it('happy: a refused rate limit gives back the concurrency slot it took', async () => {
        const ak = await getDb().agentKey({ rateLimits: { mode } });
        const { key } = await ak.create({ accountId: account(), concurrency: 1, rateLimit: { requests: 1, per: '1d' } });
        valid(await ak.validate(key, { acquire: true })).release?.();
        expect(rateLimited(await ak.validate(key, { acquire: true })).limit).toBe('requests');
        // Had the refused request kept its slot, this would be a concurrency refusal.
        expect(rateLimited(await ak.validate(key, { acquire: true })).limit).toBe('requests');
        await ak.close();
      });
    });
  }
});
