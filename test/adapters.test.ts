import type { AddressInfo } from 'node:net';
import type { PGlite } from '@electric-sql/pglite';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import { type Context, Hono } from 'hono';
import type pg from 'pg';
import type request from 'supertest';
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS, type ValidKey } from '../src/index.js';
import { type AgentKeyEnv, agentKey } from '../src/http/hono.js';
import { agentKeyGuard, withAgentKey } from '../src/http/fetch.js';
import { agentKeyPlugin, agentKeyPreHandler } from '../src/http/fastify.js';
import type { HeldReservation } from '../src/http/hold.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { sleep, until } from './helpers/wait.js';
import { hangingPool, rejectingPool, throwingPool } from './helpers/faults.js';
import { expectJsonError as expectSupertestJsonError } from './helpers/http.js';

/**
 * The Hono middleware, the fetch guard / handler wrapper and the Fastify preHandler /
 * plugin, each through its framework's own in-process entry point (Hono `app.request()`,
 * plain `Request` objects, Fastify `app.inject()`), on PostgreSQL and PGlite. Every
 * adapter gets the same cases as the Express middleware (express.test.ts and
 * express-hold.test.ts): the key check's refusals, fail-closed storage faults, options
 * refused at construction, and reserve-and-commit around the handler. Each adapter's own
 * surface (Hono's typed context, the fetch GuardResult and its rethrow, the Fastify
 * plugin's encapsulation) has its own block at the end.
 *
 * Two cases guard fixed bugs: a store that stalls when the hold is taken is bounded by
 * `timeoutMs` too, and under `app.inject()` (where light-my-request leaves
 * `raw.writableFinished` false at 'finish') a successful Fastify request commits its hold.
 */

// ---------------------------------------------------------------------------------------
// Harness: one protected POST /api/chat per adapter, driven the same way.

/** A response, whatever the framework: status, headers, raw text and parsed JSON. */
interface Reply {
  status: number;
  headers: Record<string, string>;
  text: string;
  body: any;
}

/** What the protected handler sees, whatever the framework. */
interface HandlerContext {
  agentKey: ValidKey;
  reservation: HeldReservation | undefined;
  /** The adapter's way to report the real cost (c.set, reportCost, request.costCents). */
  reportCost(cents: number): void;
}

/** The handler's answer (default 200 `{ ok: true }`); it may also throw. */
type Behaviour = (ctx: HandlerContext) => { status?: number; body?: unknown } | void | Promise<{ status?: number; body?: unknown } | void>;

interface Call {
  key?: string;
  /** How the key is sent; default `Authorization: Bearer`. */
  via?: 'bearer' | 'x-api-key';
  headers?: Record<string, string>;
}

interface TestApp {
  send(call?: Call): Promise<Reply>;
  /** `reached`: requests the protected handler saw; `seen`: what it saw. */
  state: { reached: number; seen: HandlerContext[] };
}

interface Harness {
  name: 'hono' | 'fetch' | 'fastify';
  /** True when the hold is settled before the response reaches the caller. */
  settlesBeforeResponse: boolean;
  build(ak: AgentKey, options: Record<string, unknown>, behaviour?: Behaviour): Promise<TestApp>;
  /** Every public way to build the adapter with these options (each must throw on bad ones). */
  constructors: ((ak: AgentKey, options: unknown) => unknown)[];
  /** A reserveCents function reading the `x-reserve-cents` header of the adapter's request type. */
  reserveFromHeader(async: boolean): unknown;
}

/** Closed after each test: Fastify instances. */
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()?.();
});

function headersFor(call: Call): Record<string, string> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...call.headers };
  if (call.key !== undefined) {
    if (call.via === 'x-api-key') headers['x-api-key'] = call.key;
    else headers.authorization = `Bearer ${call.key}`;
  }
  return headers;
}

async function fromFetch(res: Response): Promise<Reply> {
  const text = await res.text();
  return { status: res.status, headers: Object.fromEntries(res.headers), text, body: parse(text) };
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Runs the behaviour, counting the request and keeping what the handler saw. */
async function runHandler(state: TestApp['state'], ctx: HandlerContext, behaviour?: Behaviour) {
  state.reached += 1;
  state.seen.push(ctx);
  return (await behaviour?.(ctx)) ?? {};
}

const hono: Harness = {
  name: 'hono',
  settlesBeforeResponse: true,
  async build(ak, options, behaviour) {
    const state: TestApp['state'] = { reached: 0, seen: [] };
    const app = new Hono<AgentKeyEnv>();
    app.onError((err, c) => c.json({ app: err.message }, 500));
    app.post('/api/chat', agentKey(ak, options), async (c) => {
      const out = await runHandler(
        state,
        { agentKey: c.get('agentKey'), reservation: c.get('agentKeyReservation'), reportCost: (n) => c.set('costCents', n) },
        behaviour,
      );
      return c.json(out.body ?? { ok: true }, (out.status ?? 200) as 200);
    });
    return {
      state,
      send: async (call = {}) => fromFetch(await app.request('/api/chat', { method: 'POST', headers: headersFor(call), body: '{}' })),
    };
  },
  constructors: [(ak, o) => agentKey(ak, o as never)],
  reserveFromHeader: (async) =>
    async
      ? async (c: Context) => Number(c.req.header('x-reserve-cents'))
      : (c: Context) => Number(c.req.header('x-reserve-cents')),
};

const fetchAdapter: Harness = {
  name: 'fetch',
  settlesBeforeResponse: true,
  async build(ak, options, behaviour) {
    const state: TestApp['state'] = { reached: 0, seen: [] };
    const handler = withAgentKey(ak, options, async (_request, ctx) => {
      const out = await runHandler(state, { agentKey: ctx.agentKey, reservation: ctx.reservation, reportCost: ctx.reportCost }, behaviour);
      return Response.json(out.body ?? { ok: true }, { status: out.status ?? 200 });
    });
    return {
      state,
      async send(call = {}) {
        const req = new Request('http://localhost/api/chat', { method: 'POST', headers: headersFor(call), body: '{}' });
        try {
          return await fromFetch(await handler(req));
        } catch (err) {
          // withAgentKey rethrows a handler's error (its own test checks that): here it
          // becomes the 500 the other frameworks' error handlers answer.
          return { status: 500, headers: {}, text: '', body: { app: (err as Error).message } };
        }
      },
    };
  },
  constructors: [(ak, o) => agentKeyGuard(ak, o as never), (ak, o) => withAgentKey(ak, o as never, () => new Response())],
  reserveFromHeader: (async) =>
    async
      ? async (r: Request) => Number(r.headers.get('x-reserve-cents'))
      : (r: Request) => Number(r.headers.get('x-reserve-cents')),
};

async function fastifyApp(): Promise<FastifyInstance> {
  const app = Fastify();
  app.setErrorHandler((err: Error, _request, reply) => reply.code(500).send({ app: err.message }));
  cleanups.push(() => app.close());
  return app;
}

async function inject(app: FastifyInstance, call: Call = {}, url = '/api/chat', method: 'GET' | 'POST' = 'POST'): Promise<Reply> {
  const res = await app.inject({ method, url, headers: headersFor(call), ...(method === 'POST' ? { payload: '{}' } : {}) });
  return { status: res.statusCode, headers: res.headers as Record<string, string>, text: res.body, body: parse(res.body) };
}

const fastify: Harness = {
  name: 'fastify',
  // The preHandler settles on the raw response's 'finish', detached from the reply.
  settlesBeforeResponse: false,
  async build(ak, options, behaviour) {
    const state: TestApp['state'] = { reached: 0, seen: [] };
    const app = await fastifyApp();
    app.post('/api/chat', { preHandler: agentKeyPreHandler(ak, options) }, async (req, reply) => {
      const out = await runHandler(
        state,
        {
          agentKey: req.agentKey as ValidKey,
          reservation: req.agentKeyReservation,
          reportCost: (n) => {
            req.costCents = n;
          },
        },
        behaviour,
      );
      reply.code(out.status ?? 200);
      return out.body ?? { ok: true };
    });
    await app.ready();
    return { state, send: (call) => inject(app, call) };
  },
  constructors: [(ak, o) => agentKeyPreHandler(ak, o as never)],
  reserveFromHeader: (async) =>
    async
      ? async (r: FastifyRequest) => Number(r.headers['x-reserve-cents'])
      : (r: FastifyRequest) => Number(r.headers['x-reserve-cents']),
};

const HARNESSES = [hono, fetchAdapter, fastify];

// ---------------------------------------------------------------------------------------
// Helpers

/** helpers/http.ts's checks (JSON content type, `{ error: { code, message } }`, no internals, one sentence). */
function expectJsonError(reply: Reply, status: number, code?: string): void {
  expectSupertestJsonError(reply as unknown as request.Response, status, code);
}


/** The key's money as getKey() reports it, in cents. */
async function money(ak: AgentKey, keyId: number) {
  const k = await ak.getKey(keyId);
  if (!k) throw new Error(`no key ${keyId}`);
  return { held: Number(k.heldCents), spent: Number(k.spentCents), remaining: k.remainingCents };
}

/**
 * Waits for the request's hold to be settled. The Hono and fetch adapters settle before
 * the response leaves, so for them it must already be so, with no waiting at all.
 */
async function settled(h: Harness, ak: AgentKey, keyId: number): Promise<void> {
  if (h.settlesBeforeResponse) expect((await money(ak, keyId)).held).toBe(0);
  else await until(async () => (await money(ak, keyId)).held === 0, 'the hold to be settled');
}

/** The key's ledger, oldest first. */
async function ledger(ak: AgentKey, keyId: number) {
  return (await ak.ledger({ keyId, limit: 1000 })).reverse().map((e) => ({ kind: e.kind, cents: e.amountCents, reservationId: e.reservationId }));
}

const kinds = async (ak: AgentKey, keyId: number) => (await ledger(ak, keyId)).map((e) => e.kind);

/** Changes one character of the key's random part. */
function mistype(key: string): string {
  const i = 10;
  return key.slice(0, i) + (key[i] === 'a' ? 'b' : 'a') + key.slice(i + 1);
}

/**
 * A pool over the test database that stops answering (its calls never settle) once
 * `ctl.hang` is set; until then it delegates to the real pool.
 */
function stallablePool(db: TestDb) {
  const ctl = { hang: false };
  const never = () => new Promise<never>(() => {});
  if (db.name === 'postgres') {
    const real = db.pool as pg.Pool;
    return {
      ctl,
      pool: {
        query: (text: string, values?: unknown[]) => (ctl.hang ? never() : real.query(text, values)),
        connect: () => (ctl.hang ? never() : real.connect()),
      },
    };
  }
  const real = db.pool as PGlite;
  return {
    ctl,
    pool: {
      query: (text: string, params?: unknown[]) => (ctl.hang ? never() : real.query(text, params)),
      transaction: (fn: Parameters<PGlite['transaction']>[0]) => (ctl.hang ? never() : real.transaction(fn)),
    },
  };
}

const NO_ANSWER = 'no answer within 1 s';

// ---------------------------------------------------------------------------------------
// The shared cases, once per adapter and database.

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
