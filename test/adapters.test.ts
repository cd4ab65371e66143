import { afterEach, describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { hangingPool, rejectingPool, throwingPool } from './helpers/faults.js';
import { stallablePool } from './helpers/fault-pools.js';
import { HARNESSES, NO_ANSWER, type Reply, closeApps, expectJsonError, mistype } from './helpers/adapters.js';
import { sleep } from './helpers/wait.js';

/**
 * The Hono middleware, the fetch guard / handler wrapper and the Fastify preHandler /
 * plugin, each through its framework's own in-process entry point (helpers/adapters.ts),
 * on PostgreSQL and PGlite: the key check's refusals, fail-closed storage faults and
 * options refused at construction, the same cases as the Express middleware
 * (express.test.ts). Holds around the handler and each adapter's own surface are in
 * adapters-hold.test.ts.
 *
 * One case guards a fixed bug: a store that stalls when the hold is taken is bounded by
 * `timeoutMs` too.
 */

afterEach(closeApps);

forEachDatabase((getDb) => {
  for (const h of HARNESSES) {
    describe(`${h.name}: the key check`, () => {
      it('happy: a valid key with the scope passes as Bearer (any case) and as X-API-Key; the handler sees its metadata', async () => {
        const ak = await getDb().agentKey();
        const created = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 500, name: 'agent-1', delegatedBy: 'user_1' });
        const { send, state } = await h.build(ak, { scope: 'proxy.chat' });
        expect((await send({ key: created.key })).status).toBe(200);
        expect((await send({ headers: { authorization: `bearer ${created.key}` } })).status).toBe(200);
        const viaHeader = await send({ key: created.key, via: 'x-api-key' });
        expect(viaHeader.status).toBe(200);
        expect(viaHeader.body).toEqual({ ok: true });
        expect(state.reached).toBe(3);
        for (const seen of state.seen) {
          expect(seen.agentKey).toMatchObject({
            valid: true,
            keyId: created.id,
            accountId: 'acct_1',
            name: 'agent-1',
            scopes: ['proxy.chat'],
            budgetCents: 500,
            budgetRemainingCents: 500,
            delegatedBy: 'user_1',
          });
          expect(seen.reservation).toBeUndefined();
        }
      });

      it('error: no key -> 401 missing_key (also an empty Bearer, an empty X-API-Key, another scheme); the handler never runs', async () => {
        const ak = await getDb().agentKey();
        const { key } = await ak.create({ accountId: 'acct_1' });
        const { send, state } = await h.build(ak, {});
        expectJsonError(await send(), 401, 'missing_key');
        expectJsonError(await send({ headers: { authorization: 'Bearer ' } }), 401, 'missing_key');
        expectJsonError(await send({ headers: { 'x-api-key': '' } }), 401, 'missing_key');
        expectJsonError(await send({ headers: { authorization: `Basic ${Buffer.from(`u:${key}`).toString('base64')}` } }), 401, 'missing_key');
        expect(state.reached).toBe(0);
      });

      it('error: a bad key (garbage, mistyped, truncated, by either header) -> 401 invalid_key', async () => {
        const ak = await getDb().agentKey();
        const { key } = await ak.create({ accountId: 'acct_1' });
        const { send, state } = await h.build(ak, {});
        for (const bad of ['not-a-key', 'ak_short', mistype(key), key.slice(0, -1), `${key}x`]) {
          expectJsonError(await send({ key: bad }), 401, 'invalid_key');
          expectJsonError(await send({ key: bad, via: 'x-api-key' }), 401, 'invalid_key');
        }
        expect(state.reached).toBe(0);
      });

      it('error: an expired key -> 401 key_expired', async () => {
        const db = getDb();
        const ak = await db.agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', expiresIn: '1h' });
        await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 minute' WHERE id = $1`, [id]);
        const { send, state } = await h.build(ak, {});
        expectJsonError(await send({ key }), 401, 'key_expired');
        expect(state.reached).toBe(0);
      });

      it('error: a revoked key, and a key under a revoked parent -> 401 key_revoked', async () => {
        const ak = await getDb().agentKey();
        const revoked = await ak.create({ accountId: 'acct_1' });
        const parent = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 100 });
        const child = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 50, parentId: parent.id });
        const { send, state } = await h.build(ak, { scope: 'proxy.chat' });
        expect((await send({ key: child.key })).status).toBe(200);
        expect(await ak.revoke(revoked.id)).toBe(true);
        expect(await ak.revoke(parent.id)).toBe(true);
        expectJsonError(await send({ key: revoked.key }), 401, 'key_revoked');
        expectJsonError(await send({ key: child.key }), 401, 'key_revoked');
        expectJsonError(await send({ key: child.key, via: 'x-api-key' }), 401, 'key_revoked');
        expect(state.reached).toBe(1);
      });

      it('error: a key without the scope -> 403 insufficient_scope with requiredScope in the body', async () => {
        const ak = await getDb().agentKey();
        const other = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
        const none = await ak.create({ accountId: 'acct_1', scopes: [] });
        const { send, state } = await h.build(ak, { scope: 'proxy.chat' });
        for (const key of [other.key, none.key]) {
          const res = await send({ key });
          expectJsonError(res, 403, 'insufficient_scope');
          expect(res.body.error.requiredScope).toBe('proxy.chat');
          expect(res.body.error.message).toContain('proxy.chat');
        }
        // An invalid key never learns which scope the route wants.
        const invalid = await send({ key: mistype(other.key) });
        expectJsonError(invalid, 401, 'invalid_key');
        expect(invalid.body.error.requiredScope).toBeUndefined();
        expect(state.reached).toBe(0);
      });

      it('error: a spent budget -> 429 budget_exceeded', async () => {
        const ak = await getDb().agentKey();
        const { key } = await ak.create({ accountId: 'acct_1', budgetCents: 10 });
        const { send, state } = await h.build(ak, {});
        expect((await send({ key })).status).toBe(200);
        expect(await ak.trackUsage(key, { costCents: 10 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
        expectJsonError(await send({ key }), 429, 'budget_exceeded');
        expect(state.reached).toBe(1);
      });
    });

    describe(`${h.name}: storage faults fail closed`, () => {
      it('security: a pool that rejects or throws -> 500 JSON storage_error, no driver detail, handler never runs', async () => {
        const real = await getDb().agentKey();
        const { key } = await real.create({ accountId: 'acct_1', scopes: ['proxy.chat'] });
        for (const pool of [rejectingPool(), throwingPool()]) {
          const broken = new AgentKey({ pool: pool as never, tableName: real.tableName });
          for (const options of [{ scope: 'proxy.chat' }, { scope: 'proxy.chat', reserveCents: 10 }]) {
            const { send, state } = await h.build(broken, options);
            const res = await send({ key });
            expectJsonError(res, 500, 'storage_error');
            expect(res.text).not.toMatch(/hunter2|ECONNREFUSED|10\.9\.8\.7|TypeError|reading/);
            expect(state.reached).toBe(0);
          }
        }
        // A malformed key is refused before any query, even with the pool down.
        const broken = new AgentKey({ pool: rejectingPool() as never, tableName: real.tableName });
        const { send } = await h.build(broken, {});
        expectJsonError(await send({ key: mistype(key) }), 401, 'invalid_key');
      });

      it('error: a store that never answers -> 503 storage_timeout after timeoutMs, not a hang', async () => {
        const real = await getDb().agentKey();
        const { key } = await real.create({ accountId: 'acct_1', scopes: ['proxy.chat'] });
        const broken = new AgentKey({ pool: hangingPool() as never, tableName: real.tableName });
        for (const options of [{ scope: 'proxy.chat', timeoutMs: 100 }, { timeoutMs: 100, reserveCents: 10 }]) {
          const { send, state } = await h.build(broken, options);
          expectJsonError(await send({ key }), 503, 'storage_timeout');
          expect(state.reached).toBe(0);
        }
      });

      // A store that stalls after the key check (say a row lock on the key) must not hang the request.
      it('error: a store that stops answering when the hold is taken -> 503 storage_timeout, not a hang', async () => {
        const db = getDb();
        const real = await db.agentKey();
        const { key } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
        const { ctl, pool } = stallablePool(db);
        const ak = new AgentKey({ pool: pool as never, tableName: real.tableName, cache: false });
        const { send, state } = await h.build(ak, {
          timeoutMs: 100,
          reserveCents: () => {
            ctl.hang = true; // the key check passed; the store stalls before the hold
            return 10;
          },
        });
        // A bound to tell a hang from an answer: ten times timeoutMs.
        const res = await Promise.race([send({ key }), sleep(1000).then(() => NO_ANSWER)]);
        expect(res).not.toBe(NO_ANSWER);
        expectJsonError(res as Reply, 503, 'storage_timeout');
        expect(state.reached).toBe(0);
      });
    });

  }
});

// ---------------------------------------------------------------------------------------
// Options, checked when each adapter is built (no database needed).

describe('options are checked when each adapter is built', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });

  for (const h of HARNESSES) {
    describe(h.name, () => {
      const build = (options: unknown) => () => {
        for (const make of h.constructors) make(ak, options);
      };
      const throwsEach = (options: unknown, what: RegExp | typeof AgentKeyError = AgentKeyError) => {
        for (const make of h.constructors) expect(() => make(ak, options), JSON.stringify(options) ?? String(options)).toThrow(what);
      };

      it('security: an unknown option (e.g. "scopes") throws instead of silently dropping a check', () => {
        for (const options of [{ scopes: 'admin' }, { requiredScope: 'admin' }, { reserve: 5 }, { reserveCents: 5, holdTTL: '1m' }, { costCents: 5 }]) {
          throwsEach(options, /unknown option/);
          throwsEach(options);
        }
      });

      it('error: a bad scope or timeoutMs, or options that are not an object, throw an AgentKeyError', () => {
        for (const options of [{ scope: 5 }, { scope: '' }, { scope: ['a'] }, { timeoutMs: 0 }, { timeoutMs: -1 }, { timeoutMs: 1.5 }, { timeoutMs: '200' }, 'proxy.chat', []]) {
          throwsEach(options);
        }
      });

      it('error: a bad reserveCents throws an AgentKeyError', () => {
        for (const reserveCents of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, MAX_CENTS + 1, '5', {}, [], true, null]) {
          throwsEach({ reserveCents });
        }
      });

      it('error: a bad holdTtl or onSettleError throws, with or without reserveCents', () => {
        for (const holdTtl of ['0s', '48h', '25h', 'x', '', '1mo', '1.5m', 5]) {
          throwsEach({ reserveCents: 5, holdTtl });
          throwsEach({ holdTtl });
        }
        for (const onSettleError of [5, 'console.error', {}, null]) {
          throwsEach({ reserveCents: 5, onSettleError });
          throwsEach({ onSettleError });
        }
      });

      it('error: something that is not an AgentKey throws', () => {
        for (const notAk of [undefined, null, {}, { validate: 1 }]) {
          for (const make of h.constructors) expect(() => make(notAk as never, {})).toThrow(AgentKeyError);
        }
      });

      it('happy: good options build the adapter', () => {
        const good = [
          undefined,
          {},
          { scope: 'proxy.chat', timeoutMs: 200 },
          { reserveCents: 0.0001 },
          { reserveCents: MAX_CENTS },
          { reserveCents: h.reserveFromHeader(false) },
          { reserveCents: h.reserveFromHeader(true) },
          { scope: 'proxy.chat', timeoutMs: 200, reserveCents: 5, holdTtl: '24h', onSettleError: () => {} },
          { reserveCents: undefined },
        ];
        for (const options of good) expect(build(options), JSON.stringify(options)).not.toThrow();
      });
    });
  }
});
