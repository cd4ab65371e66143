import express, { type Request as ExpressRequest, type Response as ExpressResponse } from 'express';
import { Hono } from 'hono';
import { type JSONWebKeySet, exportJWK, exportSPKI, generateKeyPair } from 'jose';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, expect, vi } from 'vitest';
import type { AgentKey } from '../../src/agentkey.js';
import type { AgentKeyEnv } from '../../src/http/hono.js';
import { type JwtSubjectsOptions, jwtSubjects } from '../../src/identity/jwt.js';
import type { SubjectDefaults } from '../../src/identity/subjects.js';
import { AgentKeyError } from '../../src/index.js';
import { tableNames } from '../../src/store/identifiers.js';
import type { TestDb } from './databases.js';
import { PACKAGE_ERRORS } from './http.js';
import { CLERK_M2M_CATEGORY, type KeyPair, type PrivateKey, localServer, nextJti, nowSeconds, signToken } from './tokens.js';

/**
 * The identity tests' world: an issuer's key pairs (and an attacker's), a local JWKS
 * server and a stand-in for Clerk's Backend API on 127.0.0.1, tokens minted with them,
 * and one protected route per adapter (Express, Hono, fetch) guarded by an identity.
 * Nothing goes to the network.
 */

export const ISSUER = 'https://issuer.test/';
export const AUDIENCE = 'agentkey-api';
export const CLERK_SECRET = 'sk_test_agentkey_local';

export let issuer: KeyPair; // RS256, kid k1: the issuer's current key
export let rotated: KeyPair; // RS256, kid k3: a second key in the same set
export let attacker: KeyPair; // RS256, in no key set
export let ec: KeyPair; // ES256, kid k2
export let clerk: KeyPair; // RS256 2048: the Clerk instance's key
export let clerkPem: string;
export let jwks: JSONWebKeySet;
export let jwksServer: Awaited<ReturnType<typeof localServer>>;
export let clerkApi: Awaited<ReturnType<typeof localServer>>;

/**
 * Makes the keys and starts the local JWKS and Clerk API servers before the file's tests,
 * and stops the servers after them. Call it once at the top of a test file.
 */
export function useIdentityWorld(): void {
  beforeAll(makeWorld);
  afterAll(async () => {
    await Promise.all([jwksServer?.close(), clerkApi?.close()]);
  });
}

async function makeWorld(): Promise<void> {
  [issuer, rotated, attacker, ec, clerk] = await Promise.all([
    generateKeyPair('RS256', { extractable: true }),
    generateKeyPair('RS256', { extractable: true }),
    generateKeyPair('RS256', { extractable: true }),
    generateKeyPair('ES256', { extractable: true }),
    generateKeyPair('RS256', { extractable: true }),
  ]);
  clerkPem = await exportSPKI(clerk.publicKey);
  jwks = {
    keys: [
      { ...(await exportJWK(issuer.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' },
      { ...(await exportJWK(ec.publicKey)), kid: 'k2', alg: 'ES256', use: 'sig' },
      { ...(await exportJWK(rotated.publicKey)), kid: 'k3', alg: 'RS256', use: 'sig' },
    ],
  };
  const servedJwks = jwks;
  jwksServer = await localServer((req) => (req.url === '/.well-known/jwks.json' ? { body: servedJwks } : { status: 404, body: {} }));
  clerkApi = await localServer(clerkApiAnswer);
}

/** A stand-in for Clerk's Backend API: POST /m2m_tokens/verify for opaque mt_ tokens. */
function clerkApiAnswer(req: { method: string; url: string; headers: Record<string, string | string[] | undefined>; body: string }) {
  if (req.headers.authorization !== `Bearer ${CLERK_SECRET}`) {
    return { status: 401, body: { errors: [{ message: 'Invalid secret key', long_message: 'Invalid secret key', code: 'authentication_invalid' }] } };
  }
  if (req.method !== 'POST' || !req.url.endsWith('/m2m_tokens/verify')) return { status: 404, body: { errors: [{ message: 'not found', code: 'resource_not_found' }] } };
  const { token } = JSON.parse(req.body || '{}') as { token?: string };
  const base = {
    object: 'machine_to_machine_token',
    id: token,
    subject: 'mch_api',
    scopes: ['proxy.chat'],
    claims: { org_id: 'org_api' },
    revoked: false,
    revocation_reason: null,
    expired: false,
    expiration: Date.now() + 600_000,
    created_at: Date.now(),
    updated_at: Date.now(),
  };
  switch (token) {
    case 'mt_valid':
      return { body: base };
    case 'mt_revoked':
      return { body: { ...base, revoked: true, revocation_reason: 'rotated' } };
    case 'mt_expired':
      return { body: { ...base, expired: true, expiration: Date.now() - 60_000 } };
    case 'mt_user':
      return { body: { ...base, subject: 'user_123' } };
    default:
      return { status: 404, body: { errors: [{ message: 'not found', code: 'resource_not_found' }] } };
  }
}

/** A token from the issuer: RS256 with kid k1, iss/aud/sub/iat/exp/jti set; `claims` override (undefined removes). */
export function jwtToken(claims: Record<string, unknown> = {}, o: { key?: PrivateKey | Uint8Array; header?: Record<string, unknown> } = {}): Promise<string> {
  const now = nowSeconds();
  const payload = { iss: ISSUER, aud: AUDIENCE, sub: 'agent_1', iat: now, exp: now + 600, jti: nextJti(), ...claims };
  return signToken(o.key ?? issuer.privateKey, payload, { alg: 'RS256', kid: 'k1', ...o.header });
}

/** A JWT-format Clerk M2M token: RS256, kid, cat 'cl_B7d4PD333AAA', sub mch_..., iat, exp, jti, scopes. */
export function clerkToken(claims: Record<string, unknown> = {}, o: { key?: PrivateKey | Uint8Array; header?: Record<string, unknown> } = {}): Promise<string> {
  const now = nowSeconds();
  const payload = { sub: 'mch_1', iat: now, exp: now + 600, jti: nextJti('mt_'), scopes: 'proxy.chat', ...claims };
  return signToken(o.key ?? clerk.privateKey, payload, { alg: 'RS256', kid: 'ins_local', cat: CLERK_M2M_CATEGORY, ...o.header });
}

export const JWT_DEFAULTS: SubjectDefaults = { budgetCents: 500, budgetPeriod: 'day', scopes: ['proxy.chat', 'usage.read', 'tools.*'], accountId: 'acct_jwt' };

/** jwtSubjects over the local key set, with the issuer and audience required. */
export function jwtIds(ak: AgentKey, over: Partial<JwtSubjectsOptions> = {}) {
  return jwtSubjects(ak, { jwks, issuer: ISSUER, audience: AUDIENCE, subject: { ...JWT_DEFAULTS, scopes: ['proxy.chat', 'usage.read', 'tools.*'] }, ...over });
}

export type Ids = ReturnType<typeof jwtSubjects>;

/** Throws an AgentKeyError with code invalid_argument (and a message matching `message`). */
export function expectInvalidArgument(fn: () => unknown, message?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a throw').toBeInstanceOf(AgentKeyError);
  expect((thrown as AgentKeyError).code).toBe('invalid_argument');
  if (message) expect((thrown as Error).message).toMatch(message);
}

export type Adapter = 'express' | 'hono' | 'fetch';
export const ADAPTERS: Adapter[] = ['express', 'hono', 'fetch'];
export interface Reply {
  /** The adapter that answered: Express answers errors in the package's shape. */
  adapter: Adapter;
  status: number;
  // biome-ignore lint: response bodies are checked field by field
  body: any;
  contentType: string | null;
}
export type Call = (token: string | null, headers?: Record<string, string>) => Promise<Reply>;

/**
 * One protected POST route on `kind`, guarded by `ids` with `opts`. The handler answers
 * `handler.status` (200) with the validation result and the hold, and reports
 * `handler.costCents` when given. `reached` counts the requests the handler saw.
 */
export function mount(kind: Adapter, ids: Ids, opts: { scope?: string; reserveCents?: number }, handler: { costCents?: number; status?: number } = {}) {
  const state = { reached: 0 };
  const status = handler.status ?? 200;
  const headersOf = (token: string | null, extra: Record<string, string>) => {
    const h: Record<string, string> = { ...extra };
    if (token !== null) h.authorization = `Bearer ${token}`;
    return h;
  };
  let call: Call;
  if (kind === 'express') {
    const app = express();
    app.post('/api/chat', ids.express(opts), (req: ExpressRequest, res: ExpressResponse) => {
      state.reached += 1;
      if (handler.costCents !== undefined) res.locals.costCents = handler.costCents;
      const r = req as ExpressRequest & { agentKey?: unknown; agentKeyReservation?: unknown };
      res.status(status).json({ agentKey: r.agentKey, reservation: r.agentKeyReservation ?? null, locals: res.locals.agentKey });
    });
    call = async (token, extra = {}) => {
      let r = request(app).post('/api/chat');
      for (const [k, v] of Object.entries(headersOf(token, extra))) r = r.set(k, v);
      const res = await r;
      return { adapter: kind, status: res.status, body: res.body, contentType: res.headers['content-type'] ?? null };
    };
  } else if (kind === 'hono') {
    const app = new Hono<AgentKeyEnv>();
    app.post('/api/chat', ids.hono(opts), (c) => {
      state.reached += 1;
      if (handler.costCents !== undefined) c.set('costCents', handler.costCents);
      return c.json({ agentKey: c.get('agentKey'), reservation: c.get('agentKeyReservation') ?? null }, status as 200);
    });
    call = async (token, extra = {}) => {
      const res = await app.request('/api/chat', { method: 'POST', headers: headersOf(token, extra) });
      return { adapter: kind, status: res.status, body: await res.json(), contentType: res.headers.get('content-type') };
    };
  } else {
    const guard = ids.fetch(opts);
    call = async (token, extra = {}) => {
      const g = await guard(new Request('http://api.test/api/chat', { method: 'POST', headers: headersOf(token, extra) }));
      if (!g.ok) return { adapter: kind, status: g.status, body: await g.response.json(), contentType: g.response.headers.get('content-type') };
      state.reached += 1;
      await g.settle({ ...(handler.costCents !== undefined ? { costCents: handler.costCents } : {}), succeeded: status < 400 });
      return { adapter: kind, status, body: { agentKey: g.agentKey, reservation: g.reservation ?? null }, contentType: 'application/json' };
    };
  }
  return { call, state };
}

/**
 * A JSON error with this status and code, one sentence, no internals. Hono and fetch send
 * `{ error: { code, message, ... } }`; Express sends the package's shape, `{ error: '<string>',
 * code, message, ... }` (with `required`/`available` for a missing scope).
 */
export function expectError(res: Reply, status: number, code: string): void {
  expect(res.contentType).toMatch(/^application\/json/);
  if (res.adapter === 'express') {
    expect({ status: res.status, code: res.body?.code }).toEqual({ status, code });
    expect(typeof res.body.error).toBe('string');
    expect(res.body.error).toBe(status >= 500 ? 'auth_unavailable' : (PACKAGE_ERRORS[code] ?? res.body.message));
  } else {
    expect({ status: res.status, code: res.body?.error?.code }).toEqual({ status, code });
  }
  const message = messageOf(res);
  expect(typeof message).toBe('string');
  expect(message).toMatch(/[.!?]$/);
  expect(message).not.toMatch(/\n|\s+at |node_modules|\.ts:\d+/);
}

/** An error reply's message, wherever its adapter puts it. */
export function messageOf(res: Reply): string {
  return res.adapter === 'express' ? res.body.message : res.body.error.message;
}

/** A 403 insufficient_scope reply's required scope and the key's scopes, wherever its adapter puts them. */
export function scopesOf(res: Reply): { required: unknown; available: unknown } {
  return res.adapter === 'express'
    ? { required: res.body.required, available: res.body.available }
    : { required: res.body.error.requiredScope, available: res.body.error.availableScopes };
}

/**
 * Per-test tools over one database: `freshAk()` (a migrated AgentKey, closed after the
 * test), the budget rows of a subject, and its settled figures. Call it inside
 * forEachDatabase's suite.
 */
export function subjectTools(getDb: () => TestDb) {
  const opened: AgentKey[] = [];
  /** A migrated AgentKey on a table of its own, closed after the test. */
  async function freshAk(): Promise<AgentKey> {
    const ak = await getDb().agentKey();
    opened.push(ak);
    return ak;
  }
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((ak) => ak.close()));
  });

  /** How many budget rows name `subject` (straight from the table). */
  async function rowsFor(ak: AgentKey, subject: string): Promise<number> {
    const rows = await getDb().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${tableNames(ak.tableName).table} WHERE external_subject = $1`, [subject]);
    return rows[0]?.n ?? -1;
  }
  async function totalRows(ak: AgentKey): Promise<number> {
    const rows = await getDb().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${tableNames(ak.tableName).table}`);
    return rows[0]?.n ?? -1;
  }
  /** The subject's spend and holds, read from the database (waits for settlements still in flight). */
  async function settledFigures(ak: AgentKey, keyId: number) {
    let info = await ak.getKey(keyId);
    await vi.waitFor(
      async () => {
        info = await ak.getKey(keyId);
        expect(info?.heldCents).toBe(0);
      },
      { timeout: 10_000, interval: 20 },
    );
    return { spent: info?.spentCents, held: info?.heldCents };
  }
  return { freshAk, rowsFor, totalRows, settledFigures };
}
