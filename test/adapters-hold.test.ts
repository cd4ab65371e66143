import type { AddressInfo } from 'node:net';
import { Hono } from 'hono';
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import { AgentKey, AgentKeyError, type ValidKey } from '../src/index.js';
import { type AgentKeyEnv, agentKey } from '../src/http/hono.js';
import { agentKeyGuard, withAgentKey } from '../src/http/fetch.js';
import { agentKeyPlugin, agentKeyPreHandler } from '../src/http/fastify.js';
import type { HeldReservation } from '../src/http/hold.js';
import { forEachDatabase } from './helpers/databases.js';
import { hangingPool } from './helpers/faults.js';
import { HARNESSES, closeApps, expectJsonError, fastifyApp, fromFetch, inject, kinds, ledger, money, settled } from './helpers/adapters.js';
import { sleep, until } from './helpers/wait.js';

/**
 * The Hono, fetch and Fastify adapters with `reserveCents`: the hold is taken before the
 * handler and settled after it (the reported cost committed, the whole hold on a success,
 * a release on a failure), the same cases as the Express middleware
 * (express-hold.test.ts); then each adapter's own surface: Hono's typed context, the
 * fetch GuardResult and its rethrow, the Fastify plugin's encapsulation.
 *
 * One case guards a fixed bug: under `app.inject()` (where light-my-request leaves
 * `raw.writableFinished` false at 'finish') a successful Fastify request commits its hold.
 */

afterEach(closeApps);

forEachDatabase((getDb) => {
  for (const h of HARNESSES) {
    describe(`${h.name}: reserveCents, a hold around the handler`, () => {
      it('happy: the hold is taken before the handler, then the reported cost is committed and the rest given back', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 100 });
        let during: Awaited<ReturnType<typeof money>> | undefined;
        const { send, state } = await h.build(ak, { scope: 'proxy.chat', reserveCents: 50 }, async ({ reportCost }) => {
          during = await money(ak, id);
          reportCost(12);
          return { body: { answer: 42 } };
        });
        const res = await send({ key });
        expect(res.status).toBe(200);
        expect(res.body).toEqual({ answer: 42 });
        expect(during).toEqual({ held: 50, spent: 0, remaining: 50 });
        const reservation = state.seen[0]?.reservation;
        expect(reservation).toEqual({ reservationId: expect.stringMatching(/^rsv_[0-9A-Za-z]{24}$/), heldCents: 50 });
        expect(state.seen[0]?.agentKey).toMatchObject({ valid: true, keyId: id });
        await settled(h, ak, id);
        expect(await money(ak, id)).toEqual({ held: 0, spent: 12, remaining: 88 });
        expect(await ledger(ak, id)).toEqual([
          { kind: 'hold', cents: 50, reservationId: reservation?.reservationId },
          { kind: 'commit', cents: 12, reservationId: reservation?.reservationId },
        ]);
        expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true, mismatches: [] });
      });

      it('error: a hold that does not fit -> 429 budget_exceeded, the handler never runs, nothing held', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 30 });
        const { send, state } = await h.build(ak, { reserveCents: 50 });
        expectJsonError(await send({ key }), 429, 'budget_exceeded');
        expect(state.reached).toBe(0);
        expect(await money(ak, id)).toEqual({ held: 0, spent: 0, remaining: 30 });
        expect(await kinds(ak, id)).toEqual([]);
      });

      // Under app.inject() writableFinished is still false at 'finish': success is read from 'finish' itself.
      it(
        'happy: no cost reported on a success -> the whole hold is committed',
        async () => {
          const ak = await getDb().agentKey();
          const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
          const { send, state } = await h.build(ak, { reserveCents: 40 });
          expect((await send({ key })).status).toBe(200);
          expect(state.reached).toBe(1);
          await settled(h, ak, id);
          expect(await money(ak, id)).toEqual({ held: 0, spent: 40, remaining: 60 });
          expect(await ledger(ak, id)).toEqual([
            { kind: 'hold', cents: 40, reservationId: state.seen[0]?.reservation?.reservationId },
            { kind: 'commit', cents: 40, reservationId: state.seen[0]?.reservation?.reservationId },
          ]);
        },
      );

      it('error: a handler answering >= 400 without a cost -> the hold is released, its response passes through', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
        for (const status of [400, 502]) {
          const { send } = await h.build(ak, { reserveCents: 40 }, () => ({ status, body: { upstream: 'down' } }));
          const res = await send({ key });
          expect(res.status).toBe(status);
          expect(res.body).toEqual({ upstream: 'down' });
          await settled(h, ak, id);
        }
        expect(await money(ak, id)).toEqual({ held: 0, spent: 0, remaining: 100 });
        expect(await kinds(ak, id)).toEqual(['hold', 'release', 'hold', 'release']);
        expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      });

      it('error: a handler that throws -> the hold is released and the error reaches the app', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
        const { send, state } = await h.build(ak, { reserveCents: 40 }, async () => {
          throw new Error('upstream exploded');
        });
        const res = await send({ key });
        expect(res.status).toBe(500);
        expect(res.body).toEqual({ app: 'upstream exploded' });
        expect(state.reached).toBe(1);
        await settled(h, ak, id);
        expect(await money(ak, id)).toEqual({ held: 0, spent: 0, remaining: 100 });
        expect(await kinds(ak, id)).toEqual(['hold', 'release']);
      });

      it('happy: a cost reported before a failure is still committed (that money was spent)', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
        const { send } = await h.build(ak, { reserveCents: 40 }, ({ reportCost }) => {
          reportCost(7.5);
          return { status: 502 };
        });
        expect((await send({ key })).status).toBe(502);
        await settled(h, ak, id);
        expect(await money(ak, id)).toEqual({ held: 0, spent: 7.5, remaining: 92.5 });
        expect(await kinds(ak, id)).toEqual(['hold', 'commit']);
      });

      it('happy: reserveCents as a function of the request (sync and async) holds what it returns', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
        for (const async of [false, true]) {
          const during: number[] = [];
          const { send, state } = await h.build(ak, { reserveCents: h.reserveFromHeader(async) }, async ({ reportCost }) => {
            during.push((await money(ak, id)).held);
            reportCost(1);
          });
          expect((await send({ key, headers: { 'x-reserve-cents': '30' } })).status).toBe(200);
          await settled(h, ak, id);
          expect((await send({ key, headers: { 'x-reserve-cents': '2.5' } })).status).toBe(200);
          await settled(h, ak, id);
          expect(during).toEqual([30, 2.5]);
          expect(state.seen.map((s) => s.reservation?.heldCents)).toEqual([30, 2.5]);
          // More than is left: 429 before the handler; not a number: 500 invalid_reserve.
          expectJsonError(await send({ key, headers: { 'x-reserve-cents': '99' } }), 429, 'budget_exceeded');
          expectJsonError(await send({ key, headers: { 'x-reserve-cents': 'lots' } }), 500, 'invalid_reserve');
          expect(state.reached).toBe(2);
        }
        expect(await money(ak, id)).toEqual({ held: 0, spent: 4, remaining: 96 });
        expect(await kinds(ak, id)).toEqual(['hold', 'commit', 'hold', 'commit', 'hold', 'commit', 'hold', 'commit']);
      });

      it('happy: without reserveCents nothing is held, and a reported cost charges nothing', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
        const { send, state } = await h.build(ak, { holdTtl: '1m' }, ({ reportCost }) => reportCost(12));
        expect((await send({ key })).status).toBe(200);
        expect(state.seen[0]?.reservation).toBeUndefined();
        await sleep(20);
        expect(await money(ak, id)).toEqual({ held: 0, spent: 0, remaining: 100 });
        expect(await kinds(ak, id)).toEqual([]);
      });

      it('security: 20 concurrent requests reserving and committing never spend past the budget', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
        const { send, state } = await h.build(ak, { reserveCents: 15 }, async ({ reportCost }) => {
          await new Promise((resolve) => setImmediate(resolve)); // let the others interleave
          reportCost(12);
        });
        const replies = await Promise.all(Array.from({ length: 20 }, () => send({ key })));
        const ok = replies.filter((r) => r.status === 200).length;
        for (const r of replies.filter((r) => r.status !== 200)) expectJsonError(r, 429, 'budget_exceeded');
        expect(state.reached).toBe(ok);
        await settled(h, ak, id);
        const after = await money(ak, id);
        expect(after.spent).toBeLessThanOrEqual(100);
        expect(after.spent).toBe(12 * ok);
        // A hold fails only when spent + held > 85, so at least 6 fit; 9 commits of 12 would pass 100.
        expect(ok).toBeGreaterThanOrEqual(6);
        expect(ok).toBeLessThanOrEqual(8);
        const rows = await kinds(ak, id);
        expect(rows.filter((k) => k === 'hold')).toHaveLength(ok);
        expect(rows.filter((k) => k === 'commit')).toHaveLength(ok);
        expect(rows).toHaveLength(2 * ok);
        expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true, mismatches: [] });
      });
    });
  }


  // -------------------------------------------------------------------------------------
  // Each adapter's own surface.

  describe('hono: the typed context', () => {
    it('happy: c.get("agentKey") is a typed ValidKey with the key id; c.get("agentKeyReservation") the hold', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 100 });
      const app = new Hono<AgentKeyEnv>();
      app.get('/me', agentKey(ak, { scope: 'proxy.chat' }), (c) => {
        const k = c.get('agentKey');
        expectTypeOf(k).toEqualTypeOf<ValidKey>();
        expectTypeOf(k.keyId).toBeNumber();
        expectTypeOf(c.get('agentKeyReservation')).toEqualTypeOf<HeldReservation | undefined>();
        expectTypeOf(c.get('costCents')).toEqualTypeOf<number | undefined>();
        return c.json({ keyId: k.keyId, accountId: k.accountId, scopes: k.scopes, reservation: c.get('agentKeyReservation') ?? null });
      });
      app.post('/chat', agentKey(ak, { reserveCents: 5 }), (c) => {
        c.set('costCents', 1);
        return c.json({ reservation: c.get('agentKeyReservation') });
      });
      const me = await app.request('/me', { headers: { authorization: `Bearer ${key}` } });
      expect(me.status).toBe(200);
      expect(await me.json()).toEqual({ keyId: id, accountId: 'acct_1', scopes: ['proxy.chat'], reservation: null });
      const chat = await app.request('/chat', { method: 'POST', headers: { 'x-api-key': key } });
      expect(await chat.json()).toEqual({ reservation: { reservationId: expect.stringMatching(/^rsv_/), heldCents: 5 } });
      expect(await money(ak, id)).toEqual({ held: 0, spent: 1, remaining: 99 });
    });

    it('happy: app.use() on a path guards only the routes under it', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1' });
      const app = new Hono<AgentKeyEnv>();
      app.use('/api/*', agentKey(ak));
      app.get('/api/private', (c) => c.json({ keyId: c.get('agentKey').keyId }));
      app.get('/public', (c) => c.json({ open: true }));
      expectJsonError(await fromFetch(await app.request('/api/private')), 401, 'missing_key');
      expect((await app.request('/api/private', { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
      expect(await (await app.request('/public')).json()).toEqual({ open: true });
    });
  });

  describe('fetch: agentKeyGuard and withAgentKey', () => {
    const req = (key?: string, headers: Record<string, string> = {}) =>
      new Request('http://localhost/api', { headers: key ? { authorization: `Bearer ${key}`, ...headers } : headers });

    it('happy: a refusal carries status, body and a ready JSON Response; a pass carries the key and a no-op settle', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], budgetCents: 100 });
      const guard = agentKeyGuard(ak, { scope: 'proxy.chat' });
      const refused = await guard(req(key));
      expect(refused.ok).toBe(false);
      if (refused.ok) throw new Error('unreachable');
      expect(refused.status).toBe(403);
      expect(refused.body.error).toMatchObject({ code: 'insufficient_scope', requiredScope: 'proxy.chat' });
      const asReply = await fromFetch(refused.response);
      expectJsonError(asReply, 403, 'insufficient_scope');
      expect(asReply.body).toEqual(refused.body);

      const pass = await agentKeyGuard(ak, { scope: 'usage.read' })(req(key));
      if (!pass.ok) throw new Error(`refused: ${pass.status}`);
      expect(pass.agentKey).toMatchObject({ valid: true, keyId: id });
      expect(pass.reservation).toBeUndefined();
      await pass.settle({ costCents: 30 });
      expect(await money(ak, id)).toEqual({ held: 0, spent: 0, remaining: 100 });
    });

    it('happy: settle() commits the given cost, the whole hold, or releases it; a second settle is a no-op', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const guard = agentKeyGuard(ak, { reserveCents: (r: Request) => Number(r.headers.get('x-reserve-cents') ?? 20) });

      const a = await guard(req(key));
      if (!a.ok) throw new Error('refused');
      expect(a.reservation).toEqual({ reservationId: expect.stringMatching(/^rsv_/), heldCents: 20 });
      expect(await money(ak, id)).toEqual({ held: 20, spent: 0, remaining: 80 });
      await a.settle({ costCents: 3 });
      await a.settle({ costCents: 50 });
      await a.settle({ succeeded: false });
      expect(await money(ak, id)).toEqual({ held: 0, spent: 3, remaining: 97 });

      const b = await guard(req(key, { 'x-reserve-cents': '10' }));
      if (!b.ok) throw new Error('refused');
      await b.settle();
      expect(await money(ak, id)).toEqual({ held: 0, spent: 13, remaining: 87 });

      const c = await guard(req(key));
      if (!c.ok) throw new Error('refused');
      await c.settle({ succeeded: false });
      await c.settle({ costCents: 5 });
      expect(await money(ak, id)).toEqual({ held: 0, spent: 13, remaining: 87 });

      const tooMuch = await guard(req(key, { 'x-reserve-cents': '88' }));
      expect(tooMuch).toMatchObject({ ok: false, status: 429, body: { error: { code: 'budget_exceeded' } } });
      expect(await kinds(ak, id)).toEqual(['hold', 'commit', 'hold', 'commit', 'hold', 'release']);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
    });

    it('error: withAgentKey rethrows the very error its handler threw, after releasing the hold', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const boom = new Error('handler failed');
      let heldInside: number | undefined;
      const handler = withAgentKey(ak, { reserveCents: 25 }, async (_request, ctx) => {
        heldInside = (await money(ak, id)).held;
        ctx.reportCost(99); // a failure's reported cost is dropped by withAgentKey's throw path
        throw boom;
      });
      const err = await handler(req(key)).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBe(boom);
      expect(heldInside).toBe(25);
      // Released before the rejection reached the caller.
      expect(await money(ak, id)).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(await kinds(ak, id)).toEqual(['hold', 'release']);
    });

    it('error: withAgentKey without a handler function throws at construction', () => {
      const ak = new AgentKey({ pool: hangingPool() as never });
      expect(() => withAgentKey(ak, {}, undefined as never)).toThrow(TypeError);
    });
  });

  describe('fastify: the plugin and a real socket', () => {
    it('happy: agentKeyPlugin guards the routes of the context it is registered in, and only those', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const narrow = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'] });
      const app = await fastifyApp();
      await app.register(async (api) => {
        await api.register(agentKeyPlugin, { ak, scope: 'usage.read' });
        api.get('/api/usage', async (request) => ({ keyId: request.agentKey?.keyId }));
      });
      app.get('/open', async (request) => ({ open: true, agentKey: request.agentKey ?? null }));
      await app.ready();
      expectJsonError(await inject(app, {}, '/api/usage', 'GET'), 401, 'missing_key');
      const forbidden = await inject(app, { key: narrow.key }, '/api/usage', 'GET');
      expectJsonError(forbidden, 403, 'insufficient_scope');
      expect(forbidden.body.error.requiredScope).toBe('usage.read');
      const ok = await inject(app, { key, via: 'x-api-key' }, '/api/usage', 'GET');
      expect(ok.status).toBe(200);
      expect(ok.body).toEqual({ keyId: id });
      const open = await inject(app, {}, '/open', 'GET');
      expect(open.status).toBe(200);
      expect(open.body).toEqual({ open: true, agentKey: null });
    });

    it('happy: the plugin takes a hold too, and accepts Fastify\'s own register options beside its own', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const app = await fastifyApp();
      await app.register(async (api) => {
        await api.register(agentKeyPlugin, { ak, reserveCents: 30, prefix: '/ignored' } as never);
        api.post('/api/chat', async (request) => {
          request.costCents = 4;
          return { heldCents: request.agentKeyReservation?.heldCents };
        });
      });
      const res = await inject(app, { key });
      expect(res.body).toEqual({ heldCents: 30 });
      await until(async () => (await money(ak, id)).held === 0, 'the hold to be settled');
      expect(await money(ak, id)).toEqual({ held: 0, spent: 4, remaining: 96 });
      expect(await kinds(ak, id)).toEqual(['hold', 'commit']);
    });

    it('security: the plugin refuses a misspelt option (the app does not start) instead of guarding nothing', async () => {
      const ak = await getDb().agentKey();
      for (const options of [{ ak, scopes: 'admin' }, { ak, reserveCent: 5 }, { ak, scope: '' }, { ak, reserveCents: 0 }, { scope: 'x' }]) {
        const app = await fastifyApp();
        void app.register(async (api) => {
          await api.register(agentKeyPlugin, options as never);
          api.get('/x', async () => ({}));
        });
        await expect(app.ready(), JSON.stringify(Object.keys(options))).rejects.toThrow(AgentKeyError);
      }
    });

    it('happy: on a real socket, a success with no reported cost commits the whole hold', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const app = await fastifyApp();
      app.post('/api/chat', { preHandler: agentKeyPreHandler(ak, { reserveCents: 40 }) }, async () => ({ ok: true }));
      await app.listen({ port: 0, host: '127.0.0.1' });
      const { port } = app.server.address() as AddressInfo;
      const res = await fetch(`http://127.0.0.1:${port}/api/chat`, { method: 'POST', headers: { authorization: `Bearer ${key}` } });
      expect(res.status).toBe(200);
      await until(async () => (await money(ak, id)).held === 0, 'the hold to be settled');
      expect(await money(ak, id)).toEqual({ held: 0, spent: 40, remaining: 60 });
      expect(await kinds(ak, id)).toEqual(['hold', 'commit']);
    });
  });
});
