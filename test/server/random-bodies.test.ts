import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { costFromUsage } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { type Reply, ADMIN, UNKNOWN_KEY, expectShape, expireKey, onDatabase, snapshot } from '../helpers/service.js';

/**
 * Random request bodies to the routes that spend (in cents, or an LLM call's model and usage)
 * and create, on PostgreSQL and PGlite:
 * never a 5xx, always the error shape, and no change unless the answer is a success.
 */

forEachDatabase((getDb) => {
  const { setup } = onDatabase(getDb);

  describe('property: random bodies', () => {
    const anyJson = fc.jsonValue({ maxDepth: 2 });
    const field = (...examples: unknown[]) => fc.oneof(anyJson, fc.constantFrom(...examples));

    const check = (res: Reply, what: string) => {
      expect(res.status, what).toBeLessThan(500);
      if (res.status >= 300) {
        expect(res.status, what).toBeGreaterThanOrEqual(400);
        expectShape(res);
      }
    };

    it('security: random bodies to POST /v1/charge never get a 5xx, always the error shape, and change nothing unless 2xx', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_f', budgetCents: 1_000 });
      const revoked = await ak.create({ accountId: 'acct_f' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_f', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      const charge = {
        key: fc.oneof(fc.constantFrom(k.key, k.key, ADMIN, revoked.key, expired.key, 'ak_garbage', UNKNOWN_KEY), fc.string(), anyJson),
        costCents: fc.oneof(fc.double(), fc.integer(), fc.constantFrom(0, 0.5, 1, 5e-324, 0.00001, 999.9999, 1e12, -1, '1', null), anyJson),
        idempotencyKey: field('i-1', 'i-2', '', 'n\u0000'),
        metadata: field({}, { model: 'm' }, { n: '\u0000' }, [], 'm'),
        budget_cents: anyJson,
      };
      const body = fc.oneof(
        { weight: 4, arbitrary: fc.record(charge, { requiredKeys: ['key', 'costCents'] }).map((b) => JSON.stringify(b)) },
        { weight: 2, arbitrary: fc.record(charge, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: anyJson.map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: fc.string() },
      );
      await fc.assert(
        fc.asyncProperty(body, async (raw) => {
          const before = await snapshot(ak);
          const res = await svc.send('POST', '/v1/charge', { raw });
          check(res, raw);
          const after = await snapshot(ak);
          if (res.status === 200) {
            expect(res.body.success).toBe(true);
            // A zero cost succeeds without figures and records nothing (as in the package).
            const charged = !res.body.replayed && res.body.budgetUsedCents !== undefined;
            expect(after.usage.count).toBe(before.usage.count + (charged ? 1 : 0));
            if (charged) expect(after.keys.find((x) => x.id === k.id)?.spentCents).toBe(res.body.budgetUsedCents);
            else if (!res.body.replayed) expect(res.body, raw).toEqual({ success: true });
            if (!charged) expect(after, raw).toEqual(before);
          } else {
            expect(after, raw).toEqual(before);
          }
        }),
        { numRuns: 60 },
      );
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('security: random LLM usages (model, provider, token counts) to POST /v1/charge never get a 5xx, always the error shape; a 200 charges the catalog\'s cost, anything else nothing', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_f', budgetCents: 1_000 });
      const count = fc.oneof(fc.nat({ max: 2_000_000 }), fc.nat({ max: 50 }), fc.constantFrom(-1, 1.5, 2e12, '10', null), anyJson);
      const usage = fc.oneof(
        { weight: 3, arbitrary: fc.record({ inputTokens: fc.nat({ max: 2_000_000 }), outputTokens: fc.nat({ max: 100_000 }) }) },
        { weight: 3, arbitrary: fc.record({ inputTokens: count, outputTokens: count, cachedInputTokens: count, cacheWriteTokens: count, reasoningTokens: count, prompt_tokens: count }, { requiredKeys: [] }) },
        { weight: 1, arbitrary: anyJson },
      );
      // Left out (undefined is no field in JSON) more often than not, so that many bodies are good ones.
      const rarely = <T>(arbitrary: fc.Arbitrary<T>) => fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary });
      const metered = {
        key: fc.constantFrom(k.key, k.key, k.key, 'ak_garbage'),
        model: fc.oneof(
          { weight: 3, arbitrary: fc.constantFrom('gpt-4o-mini', 'gpt-4o', 'claude-haiku-4-5') },
          { weight: 2, arbitrary: fc.oneof(fc.constantFrom('my-private-llama', '', ' ', 'x'.repeat(201)), fc.string(), anyJson) },
        ),
        provider: rarely(field('openai', 'anthropic', 'nobody', 'open ai', '')),
        usage,
        costCents: rarely(fc.constantFrom(1, 0, -1)),
        idempotencyKey: rarely(field('i-1', 'i-2')),
      };
      const body = fc.record(metered).map((b) => JSON.stringify(b));
      let charged = 0;
      await fc.assert(
        fc.asyncProperty(body, async (raw) => {
          const before = await snapshot(ak);
          const res = await svc.send('POST', '/v1/charge', { raw });
          check(res, raw);
          const after = await snapshot(ak);
          const spent = (keys: typeof before.keys) => keys.find((x) => x.id === k.id)?.spentCents as number;
          if (res.status === 200 && !res.body.replayed && res.body.budgetUsedCents !== undefined) {
            const sent = JSON.parse(raw);
            const cost = costFromUsage({ model: sent.model, usage: sent.usage, ...(sent.provider === undefined ? {} : { provider: sent.provider }) }).costCents;
            expect(spent(after.keys), raw).toBeCloseTo(spent(before.keys) + cost, 4);
            expect(after.usage.count).toBe(before.usage.count + 1);
            charged++;
          } else {
            expect(after, raw).toEqual(before);
          }
        }),
        { numRuns: 80 },
      );
      // The property held over real charges too, not only refusals.
      expect(charged).toBeGreaterThan(0);
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('security: random bodies to POST /v1/keys never get a 5xx, always the error shape, and create exactly one key on 201 and none otherwise', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d' });
      const other = await ak.create({ accountId: 'acct_q' });
      const create = {
        accountId: fc.oneof(fc.constantFrom('acct_p', 'acct_p', 'acct_q', 7, '', 'a\u0000'), fc.string(), anyJson),
        scopes: field(['proxy.chat'], [], null, ['admin'], ['a b'], 'proxy.chat'),
        budgetCents: fc.oneof(fc.double(), fc.constantFrom(0, 50, 100, 100.0001, -1, null, '5'), anyJson),
        budgetPeriod: field('day', 'month', null, 'week'),
        expiresIn: field('1h', '7d', '2d', '0d', null, 3600),
        expiresAt: field('2099-01-01T00:00:00Z', '2001-01-01', 'soon', null),
        name: field('n', '', null, 'x'.repeat(300)),
        delegatedBy: field('u', null),
        userId: field('u', null, 'n\u0000'),
        parentId: fc.constantFrom(parent.id, String(parent.id), other.id, 0, '0', 'abc', null, 999_999, -1),
        budget_cents: anyJson,
      };
      const body = fc.oneof(
        { weight: 4, arbitrary: fc.record(create, { requiredKeys: ['accountId'] }).map((b) => JSON.stringify(b)) },
        { weight: 2, arbitrary: fc.record(create, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: anyJson.map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: fc.string() },
      );
      await fc.assert(
        fc.asyncProperty(body, async (raw) => {
          const before = await snapshot(ak);
          const res = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw });
          check(res, raw);
          const after = await snapshot(ak);
          if (res.status === 201) {
            expect(after.keys.length).toBe(before.keys.length + 1);
            expect(after.keys.slice(0, -1)).toEqual(before.keys);
            const { key, ...info } = res.body;
            expect(after.keys.at(-1)).toEqual(Object.fromEntries(Object.entries(info).filter(([name]) => name !== 'lastUsedAt')));
            // A zero duration makes a key expired at once, and a $0 budget leaves nothing to spend: validate() refuses both.
            const expected =
              info.expiresAt !== null && Date.parse(info.expiresAt) <= Date.now()
                ? { valid: false, reason: 'expired' }
                : info.budgetCents === 0
                  ? { valid: false, reason: 'budget_exceeded' }
                  : { valid: true, keyId: info.id };
            expect(await ak.validate(key), raw).toMatchObject(expected);
            expect([null, parent.id, other.id]).toContain(info.parentId);
            if (info.parentId === parent.id) {
              // Never wider than its parent.
              expect(info.accountId).toBe('acct_p');
              expect(Array.isArray(info.scopes)).toBe(true);
              for (const scope of info.scopes as string[]) expect(scope).toBe('proxy.chat');
              expect(info.budgetCents === null || info.budgetCents <= 100).toBe(true);
              expect(Date.parse(info.expiresAt)).toBeLessThanOrEqual(Date.parse(parent.expiresAt as string));
            }
          } else {
            expect(after, raw).toEqual(before);
          }
        }),
        { numRuns: 60 },
      );
    });
  });
});
