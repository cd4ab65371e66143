import express, { type Request as ExpressRequest } from 'express';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import Fastify from 'fastify';
import { type Context, Hono } from 'hono';
import request from 'supertest';
import { expect } from 'vitest';
import { type AgentKey, type ValidKey, agentKeyMiddleware } from '../../src/index.js';
import { type AgentKeyEnv, agentKey } from '../../src/http/hono.js';
import { agentKeyGuard, withAgentKey } from '../../src/http/fetch.js';
import { agentKeyPreHandler } from '../../src/http/fastify.js';
import type { HeldReservation } from '../../src/http/hold.js';
import { expectJsonError as expectSupertestJsonError } from './http.js';
import { until } from './wait.js';

/**
 * One protected POST /api/chat per adapter (Hono, fetch, Fastify), driven the same way
 * through each framework's own in-process entry point: Hono `app.request()`, plain
 * `Request` objects, Fastify `app.inject()`. Shared by the adapter test files.
 */
/** A response, whatever the framework: status, headers, raw text and parsed JSON. */
export interface Reply {
  status: number;
  headers: Record<string, string>;
  text: string;
  body: any;
}

/** What the protected handler sees, whatever the framework. */
export interface HandlerContext {
  agentKey: ValidKey;
  reservation: HeldReservation | undefined;
  /** The adapter's way to report the real cost (c.set, reportCost, request.costCents). */
  reportCost(cents: number): void;
}

/** The handler's answer (default 200 `{ ok: true }`); it may also throw. */
export type Behaviour = (ctx: HandlerContext) => { status?: number; body?: unknown } | void | Promise<{ status?: number; body?: unknown } | void>;

export interface Call {
  key?: string;
  /** How the key is sent; default `Authorization: Bearer`. */
  via?: 'bearer' | 'x-api-key';
  headers?: Record<string, string>;
}

export interface TestApp {
  send(call?: Call): Promise<Reply>;
  /** `reached`: requests the protected handler saw; `seen`: what it saw. */
  state: { reached: number; seen: HandlerContext[] };
}

export interface Harness {
  name: 'express' | 'hono' | 'fetch' | 'fastify';
  /** True when the hold is settled before the response reaches the caller. */
  settlesBeforeResponse: boolean;
  build(ak: AgentKey, options: Record<string, unknown>, behaviour?: Behaviour): Promise<TestApp>;
  /** Every public way to build the adapter with these options (each must throw on bad ones). */
  constructors: ((ak: AgentKey, options: unknown) => unknown)[];
  /** A reserveCents function reading the `x-reserve-cents` header of the adapter's request type. */
  reserveFromHeader(async: boolean): unknown;
}

/** Closed by closeApps() (call it in afterEach): Fastify instances. */
const cleanups: (() => Promise<unknown>)[] = [];
export async function closeApps(): Promise<void> {
  while (cleanups.length) await cleanups.pop()?.();
}

function headersFor(call: Call): Record<string, string> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...call.headers };
  if (call.key !== undefined) {
    if (call.via === 'x-api-key') headers['x-api-key'] = call.key;
    else headers.authorization = `Bearer ${call.key}`;
  }
  return headers;
}

export async function fromFetch(res: Response): Promise<Reply> {
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

export const hono: Harness = {
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

export const fetchAdapter: Harness = {
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

export async function fastifyApp(): Promise<FastifyInstance> {
  const app = Fastify();
  app.setErrorHandler((err: Error, _request, reply) => reply.code(500).send({ app: err.message }));
  cleanups.push(() => app.close());
  return app;
}

export async function inject(app: FastifyInstance, call: Call = {}, url = '/api/chat', method: 'GET' | 'POST' = 'POST'): Promise<Reply> {
  const res = await app.inject({ method, url, headers: headersFor(call), ...(method === 'POST' ? { payload: '{}' } : {}) });
  return { status: res.statusCode, headers: res.headers as Record<string, string>, text: res.body, body: parse(res.body) };
}

export const fastify: Harness = {
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

export const HARNESSES = [hono, fetchAdapter, fastify];

/**
 * The Express middleware on the same route, for cases every surface shares. Not in
 * HARNESSES: it answers refusals in the package's shape (see `refusalView`).
 */
export const expressHarness: Harness = {
  name: 'express',
  settlesBeforeResponse: false,
  async build(ak, options, behaviour) {
    const state: TestApp['state'] = { reached: 0, seen: [] };
    const app = express();
    app.post('/api/chat', agentKeyMiddleware(ak, options), async (req, res) => {
      const ctx = { agentKey: req.agentKey as ValidKey, reservation: req.agentKeyReservation, reportCost: (n: number) => void (res.locals.costCents = n) };
      const out = await runHandler(state, ctx, behaviour);
      res.status(out.status ?? 200).json(out.body ?? { ok: true });
    });
    return {
      state,
      async send(call = {}) {
        const res = await request(app).post('/api/chat').set(headersFor(call)).send({});
        return { status: res.status, headers: res.headers as Record<string, string>, text: res.text, body: res.body };
      },
    };
  },
  constructors: [(ak, o) => agentKeyMiddleware(ak, o as never)],
  reserveFromHeader: (async) =>
    async
      ? async (r: ExpressRequest) => Number(r.headers['x-reserve-cents'])
      : (r: ExpressRequest) => Number(r.headers['x-reserve-cents']),
};

/** Every surface with the same route: the Express middleware and the three adapters. */
export const ALL_SURFACES = [expressHarness, ...HARNESSES];

/**
 * A refusal read from either shape: `{ error: { code, message, ... } }`, or the package's
 * `{ error: '<string>', code, message, ... }` from its Express surfaces. `fields` are
 * the other fields beside code and message.
 */
export function refusalView(reply: Reply): { status: number; code: string; message: string; fields: Record<string, unknown> } {
  const inner = typeof reply.body?.error === 'string' ? reply.body : reply.body?.error;
  const { code, message, ...fields } = (inner ?? {}) as { code: string; message: string };
  return { status: reply.status, code, message, fields };
}

// ---------------------------------------------------------------------------------------
// Helpers

/** helpers/http.ts's checks (JSON content type, `{ error: { code, message } }`, no internals, one sentence). */
export function expectJsonError(reply: Reply, status: number, code?: string): void {
  expectSupertestJsonError(reply as unknown as request.Response, status, code);
}


/** The key's money as getKey() reports it, in cents. */
export async function money(ak: AgentKey, keyId: number) {
  const k = await ak.getKey(keyId);
  if (!k) throw new Error(`no key ${keyId}`);
  return { held: Number(k.heldCents), spent: Number(k.spentCents), remaining: k.remainingCents };
}

/**
 * Waits for the request's hold to be settled. The Hono and fetch adapters settle before
 * the response leaves, so for them it must already be so, with no waiting at all.
 */
export async function settled(h: Harness, ak: AgentKey, keyId: number): Promise<void> {
  if (h.settlesBeforeResponse) expect((await money(ak, keyId)).held).toBe(0);
  else await until(async () => (await money(ak, keyId)).held === 0, 'the hold to be settled');
}

/** The key's ledger, oldest first. */
export async function ledger(ak: AgentKey, keyId: number) {
  return (await ak.ledger({ keyId, limit: 1000 })).reverse().map((e) => ({ kind: e.kind, cents: e.amountCents, reservationId: e.reservationId }));
}

export const kinds = async (ak: AgentKey, keyId: number) => (await ledger(ak, keyId)).map((e) => e.kind);

/** Changes one character of the key's random part. */
export function mistype(key: string): string {
  const i = 10;
  return key.slice(0, i) + (key[i] === 'a' ? 'b' : 'a') + key.slice(i + 1);
}

export const NO_ANSWER = 'no answer within 1 s';
