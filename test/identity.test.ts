import express, { type Request as ExpressRequest, type Response as ExpressResponse } from 'express';
import { Hono } from 'hono';
import { type JSONWebKeySet, UnsecuredJWT, exportJWK, exportPKCS8, exportSPKI, generateKeyPair } from 'jose';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AgentKey } from '../src/agentkey.js';
import type { AgentKeyEnv } from '../src/http/hono.js';
import { clerkM2M } from '../src/identity/clerk.js';
import { type JwtSubjectsOptions, jwtSubjects } from '../src/identity/jwt.js';
import type { SubjectDefaults } from '../src/identity/subjects.js';
import { AgentKeyError } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase } from './helpers/databases.js';
import { PACKAGE_ERRORS } from './helpers/http.js';
import {
  CLERK_M2M_CATEGORY,
  CLERK_SESSION_CATEGORY,
  type KeyPair,
  type PrivateKey,
  localServer,
  nextJti,
  nowSeconds,
  signToken,
  tamperPayload,
} from './helpers/tokens.js';

/**
 * External identities as budgeted subjects: jwtSubjects (any OIDC/JWT issuer) and
 * clerkM2M (Clerk machine-to-machine tokens), on PostgreSQL and PGlite. Every token is
 * minted here with locally generated keys; the JWKS URL and Clerk's API are local
 * node:http servers on 127.0.0.1. Nothing goes to the network.
 */

const ISSUER = 'https://issuer.test/';
const AUDIENCE = 'agentkey-api';
const CLERK_SECRET = 'sk_test_agentkey_local';

let issuer: KeyPair; // RS256, kid k1: the issuer's current key
let rotated: KeyPair; // RS256, kid k3: a second key in the same set
let attacker: KeyPair; // RS256, in no key set
let ec: KeyPair; // ES256, kid k2
let clerk: KeyPair; // RS256 2048: the Clerk instance's key
let clerkPem: string;
let jwks: JSONWebKeySet;
let jwksServer: Awaited<ReturnType<typeof localServer>>;
let clerkApi: Awaited<ReturnType<typeof localServer>>;

beforeAll(async () => {
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
});

afterAll(async () => {
  await Promise.all([jwksServer?.close(), clerkApi?.close()]);
});

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
function jwtToken(claims: Record<string, unknown> = {}, o: { key?: PrivateKey | Uint8Array; header?: Record<string, unknown> } = {}): Promise<string> {
  const now = nowSeconds();
  const payload = { iss: ISSUER, aud: AUDIENCE, sub: 'agent_1', iat: now, exp: now + 600, jti: nextJti(), ...claims };
  return signToken(o.key ?? issuer.privateKey, payload, { alg: 'RS256', kid: 'k1', ...o.header });
}

/** A JWT-format Clerk M2M token: RS256, kid, cat 'cl_B7d4PD333AAA', sub mch_..., iat, exp, jti, scopes. */
function clerkToken(claims: Record<string, unknown> = {}, o: { key?: PrivateKey | Uint8Array; header?: Record<string, unknown> } = {}): Promise<string> {
  const now = nowSeconds();
  const payload = { sub: 'mch_1', iat: now, exp: now + 600, jti: nextJti('mt_'), scopes: 'proxy.chat', ...claims };
  return signToken(o.key ?? clerk.privateKey, payload, { alg: 'RS256', kid: 'ins_local', cat: CLERK_M2M_CATEGORY, ...o.header });
}

const JWT_DEFAULTS: SubjectDefaults = { budgetCents: 500, budgetPeriod: 'day', scopes: ['proxy.chat', 'usage.read', 'tools.*'], accountId: 'acct_jwt' };

/** jwtSubjects over the local key set, with the issuer and audience required. */
function jwtIds(ak: AgentKey, over: Partial<JwtSubjectsOptions> = {}) {
  return jwtSubjects(ak, { jwks, issuer: ISSUER, audience: AUDIENCE, subject: { ...JWT_DEFAULTS, scopes: ['proxy.chat', 'usage.read', 'tools.*'] }, ...over });
}

type Ids = ReturnType<typeof jwtSubjects>;

/** Throws an AgentKeyError with code invalid_argument (and a message matching `message`). */
function expectInvalidArgument(fn: () => unknown, message?: RegExp): void {
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

type Adapter = 'express' | 'hono' | 'fetch';
const ADAPTERS: Adapter[] = ['express', 'hono', 'fetch'];
interface Reply {
  /** The adapter that answered: Express answers errors in the package's shape. */
  adapter: Adapter;
  status: number;
  // biome-ignore lint: response bodies are checked field by field
  body: any;
  contentType: string | null;
}
type Call = (token: string | null, headers?: Record<string, string>) => Promise<Reply>;

/**
 * One protected POST route on `kind`, guarded by `ids` with `opts`. The handler answers
 * `handler.status` (200) with the validation result and the hold, and reports
 * `handler.costCents` when given. `reached` counts the requests the handler saw.
 */
function mount(kind: Adapter, ids: Ids, opts: { scope?: string; reserveCents?: number }, handler: { costCents?: number; status?: number } = {}) {
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
function expectError(res: Reply, status: number, code: string): void {
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
function messageOf(res: Reply): string {
  return res.adapter === 'express' ? res.body.message : res.body.error.message;
}

/** A 403 insufficient_scope reply's required scope and the key's scopes, wherever its adapter puts them. */
function scopesOf(res: Reply): { required: unknown; available: unknown } {
  return res.adapter === 'express'
    ? { required: res.body.required, available: res.body.available }
    : { required: res.body.error.requiredScope, available: res.body.error.availableScopes };
}

forEachDatabase((getDb) => {
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

  describe('jwtSubjects: verify() and first sight', () => {
    it('happy: a valid token is valid, names its subject and claims, and its row is made from the defaults', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const token = await jwtToken({ sub: 'agent_happy', scope: 'proxy.chat usage.read', org_id: 'org_9' });
      const res = await ids.verify(token);
      expect(res.valid).toBe(true);
      if (!res.valid) return;
      expect(res.subject).toBe('agent_happy');
      expect(res.claims).toMatchObject({ iss: ISSUER, aud: AUDIENCE, sub: 'agent_happy', scope: 'proxy.chat usage.read', org_id: 'org_9' });
      // Exactly validateBySubject's result, with the token's (narrowing) scopes, the subject and the claims.
      const base = await ak.validateBySubject('agent_happy');
      expect(res).toEqual({ ...base, scopes: ['proxy.chat', 'usage.read'], subject: 'agent_happy', claims: res.claims });
      expect(res).toMatchObject({ accountId: 'acct_jwt', budgetCents: 500, budgetUsedCents: 0, budgetRemainingCents: 500, budgetPeriod: 'day' });
      expect(res.budgetResetAt).not.toBeNull();
      const row = await ak.getKey(res.keyId);
      expect(row).toMatchObject({
        accountId: 'acct_jwt',
        externalSubject: 'agent_happy',
        scopes: ['proxy.chat', 'usage.read', 'tools.*'],
        budgetCents: 500,
        budgetPeriod: 'day',
        status: 'active',
        spentCents: 0,
      });
      expect(await rowsFor(ak, 'agent_happy')).toBe(1);
    });

    it('happy: accountId may be a function of the verified claims; without one the account is the subject', async () => {
      const ak = await freshAk();
      const seenClaims: Record<string, unknown>[] = [];
      const ids = jwtIds(ak, {
        subject: {
          budgetCents: 100,
          scopes: ['proxy.chat'],
          accountId: (claims) => {
            seenClaims.push(claims);
            return `acct_${String(claims.org_id)}`;
          },
        },
      });
      const a = await ids.verify(await jwtToken({ sub: 'agent_a', org_id: 'org_7' }));
      const b = await ids.verify(await jwtToken({ sub: 'agent_b', org_id: 'org_7' }));
      expect(a).toMatchObject({ valid: true, subject: 'agent_a', accountId: 'acct_org_7' });
      expect(b).toMatchObject({ valid: true, subject: 'agent_b', accountId: 'acct_org_7' });
      expect(seenClaims[0]).toMatchObject({ sub: 'agent_a', org_id: 'org_7', iss: ISSUER });
      expect(await ak.listKeys({ accountId: 'acct_org_7' })).toHaveLength(2);

      const plain = jwtIds(ak, { subject: { budgetCents: 100 } });
      expect(await plain.verify(await jwtToken({ sub: 'agent_c' }))).toMatchObject({ valid: true, accountId: 'agent_c', scopes: null, budgetPeriod: null });
    });

    it('happy: 20 concurrent first requests for one subject make exactly one row; later defaults never rewrite it', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const tokens = await Promise.all(Array.from({ length: 20 }, () => jwtToken({ sub: 'agent_burst' })));
      const results = await Promise.all(tokens.map((t) => ids.verify(t)));
      expect(results.every((r) => r.valid)).toBe(true);
      const keyIds = new Set(results.map((r) => (r.valid ? r.keyId : null)));
      expect(keyIds.size).toBe(1);
      expect(await rowsFor(ak, 'agent_burst')).toBe(1);
      expect(await totalRows(ak)).toBe(1);

      // Spend, then a second verifier (another process, other defaults) sees the same row: first sight only.
      expect(await ak.trackUsageBySubject('agent_burst', { costCents: 30 })).toMatchObject({ success: true });
      const other = jwtIds(ak, { subject: { budgetCents: 9_999, budgetPeriod: 'month', scopes: ['admin'], accountId: 'acct_other' } });
      const again = await Promise.all(Array.from({ length: 20 }, async () => other.verify(await jwtToken({ sub: 'agent_burst' }))));
      for (const r of again) expect(r).toMatchObject({ valid: true, accountId: 'acct_jwt', budgetCents: 500, budgetUsedCents: 30, budgetPeriod: 'day' });
      expect(await rowsFor(ak, 'agent_burst')).toBe(1);
      expect((await ak.getKey([...keyIds][0] as number))?.scopes).toEqual(['proxy.chat', 'usage.read', 'tools.*']);
    });

    it('happy: 20 concurrent first requests through two verifiers and the middleware still make one row', async () => {
      const ak = await freshAk();
      const one = jwtIds(ak);
      const two = jwtIds(ak);
      const { call } = mount('hono', two, { scope: 'proxy.chat' });
      const outcomes = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const token = await jwtToken({ sub: 'agent_mixed' });
          if (i % 2 === 0) return (await one.verify(token)).valid;
          return (await call(token)).status === 200;
        }),
      );
      expect(outcomes.every(Boolean)).toBe(true);
      expect(await rowsFor(ak, 'agent_mixed')).toBe(1);
    });

    it('unhappy: a forged signature (another key, same kid) or a tampered payload is invalid and makes no row', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const forged = await jwtToken({ sub: 'agent_forged' }, { key: attacker.privateKey });
      expect(await ids.verify(forged)).toEqual({ valid: false, reason: 'invalid', detail: 'its signature does not match' });
      const genuine = await jwtToken({ sub: 'agent_genuine' });
      const now = nowSeconds();
      const tampered = tamperPayload(genuine, { iss: ISSUER, aud: AUDIENCE, sub: 'agent_victim', iat: now, exp: now + 600 });
      expect(await ids.verify(tampered)).toEqual({ valid: false, reason: 'invalid', detail: 'its signature does not match' });
      // A signature of another token, moved onto this one.
      const [h, p] = (await jwtToken({ sub: 'agent_x' })).split('.');
      const otherSig = (await jwtToken({ sub: 'agent_y' })).split('.')[2];
      expect(await ids.verify(`${h}.${p}.${otherSig}`)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: an expired token is "expired"; clockTolerance accepts a token just past its exp, and 0 does not', async () => {
      const ak = await freshAk();
      const now = nowSeconds();
      const longGone = await jwtToken({ sub: 'agent_old', iat: now - 7200, exp: now - 3600 });
      expect(await jwtIds(ak).verify(longGone)).toEqual({ valid: false, reason: 'expired', detail: 'the token has expired' });
      const justGone = await jwtToken({ sub: 'agent_recent', iat: now - 600, exp: now - 60 });
      expect(await jwtIds(ak).verify(justGone)).toMatchObject({ valid: false, reason: 'expired' });
      expect(await jwtIds(ak, { clockTolerance: '2m' }).verify(justGone)).toMatchObject({ valid: true, subject: 'agent_recent' });
      expect(await jwtIds(ak, { clockTolerance: 300 }).verify(justGone)).toMatchObject({ valid: true, subject: 'agent_recent' });
      expect(await jwtIds(ak, { clockTolerance: 0 }).verify(justGone)).toMatchObject({ valid: false, reason: 'expired' });
      expect(await rowsFor(ak, 'agent_old')).toBe(0);
    });

    it('unhappy: a token not yet valid (nbf in the future) is invalid, unless within clockTolerance', async () => {
      const ak = await freshAk();
      const now = nowSeconds();
      const early = await jwtToken({ sub: 'agent_early', nbf: now + 600 });
      const res = await jwtIds(ak).verify(early);
      expect(res).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!res.valid && res.detail).toMatch(/"nbf"/);
      expect(await rowsFor(ak, 'agent_early')).toBe(0);
      expect(await jwtIds(ak, { clockTolerance: '15m' }).verify(early)).toMatchObject({ valid: true, subject: 'agent_early' });
    });

    it('unhappy: a wrong or missing issuer is invalid; a list of issuers accepts any of them', async () => {
      const ak = await freshAk();
      const wrong = await jwtIds(ak).verify(await jwtToken({ sub: 'agent_iss', iss: 'https://evil.test/' }));
      expect(wrong).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!wrong.valid && wrong.detail).toMatch(/"iss" claim is not accepted/);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_iss', iss: undefined }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await rowsFor(ak, 'agent_iss')).toBe(0);
      const both = jwtIds(ak, { issuer: ['https://other.test/', ISSUER] });
      expect(await both.verify(await jwtToken({ sub: 'agent_iss' }))).toMatchObject({ valid: true });
    });

    it('unhappy: a wrong or missing audience is invalid; an aud array that includes ours is valid', async () => {
      const ak = await freshAk();
      const wrong = await jwtIds(ak).verify(await jwtToken({ sub: 'agent_aud', aud: 'another-api' }));
      expect(wrong).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!wrong.valid && wrong.detail).toMatch(/"aud" claim is not accepted/);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_aud', aud: undefined }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await rowsFor(ak, 'agent_aud')).toBe(0);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_aud', aud: ['another-api', AUDIENCE] }))).toMatchObject({ valid: true });
    });

    it("unhappy: alg 'none' and algorithms outside `algorithms` are refused", async () => {
      const ak = await freshAk();
      const now = nowSeconds();
      const unsecured = new UnsecuredJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'agent_none', iat: now, exp: now + 600 }).encode();
      expect(await jwtIds(ak).verify(unsecured)).toEqual({ valid: false, reason: 'invalid', detail: 'its algorithm is not allowed' });
      // A hand-made 'none' token with a signature part, and one with alg "NONE".
      const [, payload] = unsecured.split('.');
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      expect(await jwtIds(ak).verify(`${b64({ alg: 'none', typ: 'JWT' })}.${payload}.c2ln`)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await jwtIds(ak).verify(`${b64({ alg: 'NONE' })}.${payload}.`)).toMatchObject({ valid: false, reason: 'invalid' });

      // ES256 is in the default list (and k2 is in the set) but not in ['RS256'].
      const es = await jwtToken({ sub: 'agent_es' }, { key: ec.privateKey, header: { alg: 'ES256', kid: 'k2' } });
      expect(await jwtIds(ak).verify(es)).toMatchObject({ valid: true, subject: 'agent_es' });
      expect(await jwtIds(ak, { algorithms: ['RS256'] }).verify(es)).toEqual({ valid: false, reason: 'invalid', detail: 'its algorithm is not allowed' });
      expect(await rowsFor(ak, 'agent_none')).toBe(0);
    });

    it('unhappy: an HS256 token is refused against an RSA key set, even when HS256 is allowed (no key confusion)', async () => {
      const ak = await freshAk();
      const secret = new TextEncoder().encode('a-shared-secret-of-at-least-32-bytes!!');
      const hs = await jwtToken({ sub: 'agent_hs' }, { key: secret, header: { alg: 'HS256', kid: 'k1' } });
      expect(await jwtIds(ak).verify(hs)).toEqual({ valid: false, reason: 'invalid', detail: 'its algorithm is not allowed' });
      const loose = jwtIds(ak, { algorithms: ['RS256', 'HS256'] });
      expect(await loose.verify(hs)).toMatchObject({ valid: false, reason: 'invalid' });
      // The classic confusion: HMAC keyed with the issuer's public key PEM, against that public key.
      const pem = new TextEncoder().encode(await exportSPKI(issuer.publicKey));
      const confused = await jwtToken({ sub: 'agent_hs' }, { key: pem, header: { alg: 'HS256', kid: 'k1' } });
      expect(await loose.verify(confused)).toMatchObject({ valid: false, reason: 'invalid' });
      const byKey = jwtIds(ak, { jwks: undefined, key: issuer.publicKey, algorithms: ['RS256', 'HS256'] });
      expect(await byKey.verify(confused)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: a token without a usable subject claim is invalid (missing, empty, not a string, too long)', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      expect(await ids.verify(await jwtToken({ sub: undefined }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'the token has no "sub" claim to name its subject',
      });
      for (const sub of ['', 42, ['agent_1'], { id: 'agent_1' }, 'x'.repeat(257)]) {
        expect(await ids.verify(await jwtToken({ sub }))).toMatchObject({ valid: false, reason: 'invalid' });
      }
      expect(await ids.verify(await jwtToken({ sub: 'y'.repeat(256) }))).toMatchObject({ valid: true, subject: 'y'.repeat(256) });
      expect(await totalRows(ak)).toBe(1);
    });

    it('happy: subjectClaim names the subject from another claim; a token without that claim is invalid', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subjectClaim: 'client_id' });
      const res = await ids.verify(await jwtToken({ sub: 'user_42', client_id: 'client_abc' }));
      expect(res).toMatchObject({ valid: true, subject: 'client_abc' });
      expect(await rowsFor(ak, 'client_abc')).toBe(1);
      expect(await rowsFor(ak, 'user_42')).toBe(0);
      expect(await ids.verify(await jwtToken({ sub: 'user_42' }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'the token has no "client_id" claim to name its subject',
      });
    });

    it('unhappy: garbage is invalid, never a throw', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const garbage = ['', 'garbage', 'a.b.c', '...', 'eyJ.eyJ.', 'Bearer x', 'mt_123', '\u0000\u0001', 'a'.repeat(20_000), `${'e'.repeat(50)}.${'f'.repeat(50)}.${'g'.repeat(50)}`];
      for (const g of garbage) expect(await ids.verify(g)).toMatchObject({ valid: false, reason: 'invalid' });
      for (const g of [undefined, null, 42, {}]) expect(await ids.verify(g as never)).toEqual({ valid: false, reason: 'invalid', detail: 'no token' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('happy: key sources: a local jwks with several keys, one `key`, an HS256 secret, and a jwksUrl on 127.0.0.1', async () => {
      const ak = await freshAk();
      // jwks: both RSA keys of the set verify (rotation); a kid outside it does not.
      const ids = jwtIds(ak);
      expect(await ids.verify(await jwtToken({ sub: 'agent_k1' }))).toMatchObject({ valid: true, subject: 'agent_k1' });
      expect(await ids.verify(await jwtToken({ sub: 'agent_k3' }, { key: rotated.privateKey, header: { kid: 'k3' } }))).toMatchObject({ valid: true });
      expect(await ids.verify(await jwtToken({ sub: 'agent_k9' }, { key: attacker.privateKey, header: { kid: 'k9' } }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'no key of the issuer matches it',
      });

      // key: one public key; another key's token fails.
      const byKey = jwtIds(ak, { jwks: undefined, key: issuer.publicKey });
      expect(await byKey.verify(await jwtToken({ sub: 'agent_key' }))).toMatchObject({ valid: true, subject: 'agent_key' });
      expect(await byKey.verify(await jwtToken({ sub: 'agent_key' }, { key: rotated.privateKey }))).toMatchObject({ valid: false, reason: 'invalid' });

      // key: an HS256 secret, with HS256 allowed.
      const secret = new TextEncoder().encode('0123456789abcdef0123456789abcdef');
      const hs = jwtIds(ak, { jwks: undefined, key: secret, algorithms: ['HS256'] });
      expect(await hs.verify(await jwtToken({ sub: 'agent_hs' }, { key: secret, header: { alg: 'HS256' } }))).toMatchObject({ valid: true, subject: 'agent_hs' });
      const otherSecret = new TextEncoder().encode('fedcba9876543210fedcba9876543210');
      expect(await hs.verify(await jwtToken({ sub: 'agent_hs' }, { key: otherSecret, header: { alg: 'HS256' } }))).toMatchObject({ valid: false, reason: 'invalid' });
      // An RS256 token against the HS256-only verifier.
      expect(await hs.verify(await jwtToken({ sub: 'agent_hs' }))).toMatchObject({ valid: false, reason: 'invalid' });

      // jwksUrl: fetched from the local server.
      const before = jwksServer.hits();
      const remote = jwtIds(ak, { jwks: undefined, jwksUrl: `${jwksServer.url}/.well-known/jwks.json` });
      expect(await remote.verify(await jwtToken({ sub: 'agent_remote' }))).toMatchObject({ valid: true, subject: 'agent_remote' });
      expect(jwksServer.hits()).toBeGreaterThan(before);
      expect(await remote.verify(await jwtToken({ sub: 'agent_remote' }, { key: rotated.privateKey, header: { kid: 'k3' } }))).toMatchObject({ valid: true });
      expect(await remote.verify(await jwtToken({ sub: 'agent_remote_forged' }, { key: attacker.privateKey }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'its signature does not match',
      });
      // A URL object works as well.
      const asUrl = jwtIds(ak, { jwks: undefined, jwksUrl: new URL(`${jwksServer.url}/.well-known/jwks.json`) });
      expect(await asUrl.verify(await jwtToken({ sub: 'agent_remote' }))).toMatchObject({ valid: true, subject: 'agent_remote' });
      expect(await rowsFor(ak, 'agent_remote_forged')).toBe(0);
    });

    it('unhappy: an unreachable or broken jwksUrl fails closed (invalid, no row), never a throw', async () => {
      const ak = await freshAk();
      const notFound = jwtIds(ak, { jwks: undefined, jwksUrl: `${jwksServer.url}/missing.json` });
      expect(await notFound.verify(await jwtToken({ sub: 'agent_nokeys' }))).toMatchObject({ valid: false, reason: 'invalid' });
      const down = await localServer(() => ({ body: {} }));
      const url = `${down.url}/.well-known/jwks.json`;
      await down.close();
      const unreachable = jwtIds(ak, { jwks: undefined, jwksUrl: url });
      expect(await unreachable.verify(await jwtToken({ sub: 'agent_nokeys' }))).toMatchObject({
        valid: false,
        reason: 'invalid',
        detail: "the issuer's key set could not be fetched",
      });
      expect(await rowsFor(ak, 'agent_nokeys')).toBe(0);
      // In the middleware it fails closed as the issuer's fault (503), not the client's token (401).
      for (const ids of [notFound, unreachable]) {
        const { call, state } = mount('hono', ids, {});
        expectError(await call(await jwtToken({ sub: 'agent_nokeys' })), 503, 'issuer_unavailable');
        expect(state.reached).toBe(0);
      }
      expect(await rowsFor(ak, 'agent_nokeys')).toBe(0);
    });

    it('unhappy: a revoked subject stays revoked for every new token and every new verifier', async () => {
      const ak = await freshAk();
      const first = await jwtIds(ak).verify(await jwtToken({ sub: 'agent_revoked' }));
      expect(first.valid).toBe(true);
      if (!first.valid) return;
      expect(await ak.revoke(first.keyId)).toBe(true);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_revoked' }))).toEqual({ valid: false, reason: 'revoked' });
      const { call } = mount('hono', jwtIds(ak), {});
      expectError(await call(await jwtToken({ sub: 'agent_revoked' })), 401, 'key_revoked');
      expect(await rowsFor(ak, 'agent_revoked')).toBe(1);
    });
  });

  describe('jwtSubjects: bad options throw at construction', () => {
    it('unhappy: no key source, two sources, a non-local http jwksUrl, a malformed URL', async () => {
      const ak = await freshAk();
      const subject = { budgetCents: 100 };
      expectInvalidArgument(() => jwtSubjects(ak, { subject }), /exactly one key source/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, key: issuer.publicKey, subject }), /exactly one key source/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, jwksUrl: 'https://issuer.test/jwks.json', subject }), /exactly one key source/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'http://issuer.example.com/.well-known/jwks.json', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'http://localhost.evil.test/jwks.json', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'http://127.0.0.2/jwks.json', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'not a url', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'ftp://issuer.test/jwks.json', subject }), /https/);
      // https anywhere, http only for localhost / 127.0.0.1: no throw.
      expect(() => jwtSubjects(ak, { jwksUrl: 'https://issuer.test/.well-known/jwks.json', subject })).not.toThrow();
      expect(() => jwtSubjects(ak, { jwksUrl: 'http://localhost:8080/jwks.json', subject })).not.toThrow();
      expect(() => jwtSubjects(ak, { jwksUrl: 'http://127.0.0.1:8080/jwks.json', subject })).not.toThrow();
    });

    it("unhappy: algorithms 'none' (any case), empty, or not a list; unknown options; no subject defaults; a bad tokenScopes", async () => {
      const ak = await freshAk();
      const subject = { budgetCents: 100 };
      for (const algorithms of [['none'], ['NONE'], ['RS256', 'None'], [], 'RS256', [42]]) {
        expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, algorithms: algorithms as never }), /never 'none'/);
      }
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, issuers: ISSUER } as never), /unknown option "issuers"/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, scope: 'proxy.chat' } as never), /unknown option "scope"/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks } as never), /subject defaults/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: null } as never), /subject defaults/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: 'budget' } as never), /subject defaults/);
      // Text defaults follow the library's rule for text, checked when the adapter is built.
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: { name: 'agent\u001b[2J' } }), /^subject\.name must not contain control characters/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: { delegatedBy: '\u202eevil' } }), /^subject\.delegatedBy must not contain control characters/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: { accountId: 'acct\u0000' } }), /^subject\.accountId must not contain control characters/);
      expectInvalidArgument(() => jwtSubjects(ak, undefined as never), /needs options/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, tokenScopes: 'widen' as never }), /tokenScopes/);
      expectInvalidArgument(() => jwtSubjects({} as never, { jwks, subject }), /AgentKey instance/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject }).express({ scopes: 'proxy.chat' } as never), /unknown option "scopes"/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject }).hono({ reserveCents: -1 }), /reserveCents/);
    });
  });

  describe('token scopes narrow, never widen', () => {
    it("happy: 'scope' (space-separated), 'scp' (array) and a custom scopesClaim narrow the subject's scopes", async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: 'proxy.chat' }))).toMatchObject({ valid: true, scopes: ['proxy.chat'] });
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: '  usage.read   proxy.chat ' }))).toMatchObject({ scopes: ['usage.read', 'proxy.chat'] });
      // tools.* on the row allows tools.search and tools.* in a token.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scp: ['usage.read', 'tools.search', 'tools.*'] }))).toMatchObject({
        scopes: ['usage.read', 'tools.search', 'tools.*'],
      });
      // 'scope' wins over 'scp' when both are there.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: 'usage.read', scp: ['proxy.chat'] }))).toMatchObject({ scopes: ['usage.read'] });
      // No scope claim at all: the row's scopes.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      // An empty or non-list scope claim narrows to nothing.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: '' }))).toMatchObject({ valid: true, scopes: [] });
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: 42 }))).toMatchObject({ valid: true, scopes: [] });

      const custom = jwtIds(ak, { scopesClaim: 'permissions' });
      expect(await custom.verify(await jwtToken({ sub: 'agent_s', permissions: ['proxy.chat', 'billing.write'], scope: 'usage.read' }))).toMatchObject({
        scopes: ['proxy.chat'],
      });
      expect(await custom.verify(await jwtToken({ sub: 'agent_s', scope: 'usage.read' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      expect(await rowsFor(ak, 'agent_s')).toBe(1);
      expect(await ak.validateBySubject('agent_s')).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
    });

    it("unhappy: a token claiming 'admin', '*', a wider wildcard or a scope the row lacks does not get it", async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const res = await ids.verify(await jwtToken({ sub: 'agent_w', scope: 'proxy.chat admin * billing.write proxy.* tools.search.deep *.x' }));
      expect(res).toMatchObject({ valid: true, scopes: ['proxy.chat', 'tools.search.deep'] });
      expect(ak.hasScope(res as never, 'billing.write')).toBe(false);
      expect(ak.hasScope(res as never, 'anything.at.all')).toBe(false);
      expect(ak.hasScope(res as never, 'proxy.chat')).toBe(true);
      const only = await ids.verify(await jwtToken({ sub: 'agent_w', scp: ['admin', '*'] }));
      expect(only).toMatchObject({ valid: true, scopes: [] });
      expect(ak.hasScope(only as never, 'proxy.chat')).toBe(false);
      // The row is never widened.
      expect((await ak.listKeys({ accountId: 'acct_jwt' }))[0]?.scopes).toEqual(['proxy.chat', 'usage.read', 'tools.*']);

      // An unlimited (null-scoped) subject is narrowed to what its token names.
      const open = jwtIds(ak, { subject: { budgetCents: 100 } });
      expect(await open.verify(await jwtToken({ sub: 'agent_open', scope: 'proxy.chat' }))).toMatchObject({ valid: true, scopes: ['proxy.chat'] });
      expect(await open.verify(await jwtToken({ sub: 'agent_open' }))).toMatchObject({ valid: true, scopes: null });
    });

    it("happy: tokenScopes 'ignore' gives the row's scopes, whatever the token claims", async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { tokenScopes: 'ignore' });
      expect(await ids.verify(await jwtToken({ sub: 'agent_i', scope: 'usage.read' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      expect(await ids.verify(await jwtToken({ sub: 'agent_i', scope: 'admin *' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      const { call } = mount('express', ids, { scope: 'billing.write' });
      expectError(await call(await jwtToken({ sub: 'agent_i', scope: 'admin billing.write' })), 403, 'insufficient_scope');
    });

    it('unhappy: in the middleware, a token narrowed below the route scope is 403 even though the row has it', async () => {
      const ak = await freshAk();
      const { call, state } = mount('express', jwtIds(ak), { scope: 'proxy.chat' });
      const res = await call(await jwtToken({ sub: 'agent_m', scope: 'usage.read' }));
      expectError(res, 403, 'insufficient_scope');
      expect(scopesOf(res)).toEqual({ required: 'proxy.chat', available: ['usage.read'] });
      const admin = await call(await jwtToken({ sub: 'agent_m', scope: 'admin' }));
      expectError(admin, 403, 'insufficient_scope');
      expect(scopesOf(admin)).toEqual({ required: 'proxy.chat', available: [] });
      expect(state.reached).toBe(0);
      const ok = await call(await jwtToken({ sub: 'agent_m', scope: 'proxy.chat' }));
      expect(ok.status).toBe(200);
      expect(ok.body.agentKey).toMatchObject({ subject: 'agent_m', scopes: ['proxy.chat'] });
    });
  });

  describe('one budget across many tokens of the same machine', () => {
    it('happy: 30 distinct tokens charging concurrently through trackUsageBySubject never pass the budget; audit is ok', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subject: { budgetCents: 100, scopes: ['proxy.chat'] } });
      const tokens = await Promise.all(Array.from({ length: 30 }, () => jwtToken({ sub: 'agent_budget', scope: 'proxy.chat' })));
      expect(new Set(tokens).size).toBe(30);
      const outcomes = await Promise.all(
        tokens.map(async (token) => {
          const v = await ids.verify(token);
          if (!v.valid) throw new Error(`token refused: ${v.reason}`);
          return ak.trackUsageBySubject(v.subject, { costCents: 7 });
        }),
      );
      const ok = outcomes.filter((o) => o.success);
      const refused = outcomes.filter((o) => !o.success);
      expect(ok).toHaveLength(14);
      for (const r of refused) expect(r).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const after = await ids.verify(await jwtToken({ sub: 'agent_budget' }));
      expect(after).toMatchObject({ valid: true, budgetUsedCents: 98, budgetRemainingCents: 2 });
      expect(await ak.trackUsageBySubject('agent_budget', { costCents: 3 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsageBySubject('agent_budget', { costCents: 2 })).toMatchObject({ success: true });
      // Nothing left to spend: validateBySubject refuses the subject; its row holds the whole budget as spent.
      expect(await ak.validateBySubject('agent_budget')).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(after.valid ? after.keyId : -1)).toMatchObject({ budgetCents: 100, spentCents: 100, heldCents: 0 });
      const audit = await ak.audit();
      expect(audit).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await rowsFor(ak, 'agent_budget')).toBe(1);
      // And a fresh token of the spent machine is refused with 429 by the middleware.
      const { call } = mount('hono', ids, { scope: 'proxy.chat' });
      expectError(await call(await jwtToken({ sub: 'agent_budget', scope: 'proxy.chat' })), 429, 'budget_exceeded');
    });

    it('happy: 25 concurrent requests with distinct tokens and reserveCents hold and commit exactly the budget (hono)', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subject: { budgetCents: 100, scopes: ['proxy.chat'] } });
      const { call, state } = mount('hono', ids, { scope: 'proxy.chat', reserveCents: 10 });
      const tokens = await Promise.all(Array.from({ length: 25 }, () => jwtToken({ sub: 'agent_holds' })));
      const replies = await Promise.all(tokens.map((t) => call(t)));
      const ok = replies.filter((r) => r.status === 200);
      expect(ok).toHaveLength(10);
      for (const r of replies.filter((x) => x.status !== 200)) expectError(r, 429, 'budget_exceeded');
      expect(state.reached).toBe(10);
      for (const r of ok) expect(r.body.reservation).toMatchObject({ heldCents: 10, reservationId: expect.any(String) });
      const keyId = ok[0]?.body.agentKey.keyId as number;
      expect(await settledFigures(ak, keyId)).toEqual({ spent: 100, held: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('happy: concurrent express requests with reserveCents and a smaller reported cost never pass the budget', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subject: { budgetCents: 100, scopes: ['proxy.chat'] } });
      const { call } = mount('express', ids, { scope: 'proxy.chat', reserveCents: 10 }, { costCents: 4 });
      const tokens = await Promise.all(Array.from({ length: 40 }, () => jwtToken({ sub: 'agent_express_holds' })));
      const replies = await Promise.all(tokens.map((t) => call(t)));
      const ok = replies.filter((r) => r.status === 200);
      for (const r of replies.filter((x) => x.status !== 200)) expectError(r, 429, 'budget_exceeded');
      expect(ok.length).toBeGreaterThanOrEqual(10);
      const keyId = ok[0]?.body.agentKey.keyId as number;
      const figures = await settledFigures(ak, keyId);
      expect(figures).toEqual({ spent: 4 * ok.length, held: 0 });
      expect(figures.spent).toBeLessThanOrEqual(100);
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
  });

  describe('clerkM2M: JWT-format machine tokens, offline with jwtKey', () => {
    const CLERK_DEFAULTS: SubjectDefaults = { budgetCents: 1000, budgetPeriod: 'month', scopes: ['proxy.chat', 'usage.read'] };
    const clerkIds = (ak: AgentKey, over: Record<string, unknown> = {}) =>
      clerkM2M(ak, { jwtKey: clerkPem, subject: { ...CLERK_DEFAULTS, scopes: ['proxy.chat', 'usage.read'] }, ...over });

    it("happy: a valid M2M token's subject is the machine id; the result is validateBySubject's plus subject and claims", async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const token = await clerkToken({ sub: 'mch_2abc', scopes: 'proxy.chat', org_id: 'org_1' });
      const res = await ids.verify(token);
      expect(res).toMatchObject({ valid: true, subject: 'mch_2abc', accountId: 'mch_2abc', budgetCents: 1000, budgetPeriod: 'month' });
      const base = await ak.validateBySubject('mch_2abc');
      expect(base.valid).toBe(true);
      expect(res).toEqual({ ...base, scopes: ['proxy.chat'], subject: 'mch_2abc', claims: { sub: 'mch_2abc', scopes: 'proxy.chat', org_id: 'org_1' } });
      expect(await rowsFor(ak, 'mch_2abc')).toBe(1);
      // Without the category header, with typ JWT, and from a second token: the same machine row.
      expect(await ids.verify(await clerkToken({ sub: 'mch_2abc' }, { header: { cat: undefined, typ: 'JWT' } }))).toMatchObject({ valid: true, subject: 'mch_2abc' });
      expect(await rowsFor(ak, 'mch_2abc')).toBe(1);
    });

    it('happy: first sight from the defaults, once under 20 concurrent tokens, with accountId from the claims', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak, { subject: { budgetCents: 250, scopes: ['proxy.chat'], accountId: (c: Record<string, unknown>) => String(c.org_id ?? 'no_org') } });
      const tokens = await Promise.all(Array.from({ length: 20 }, () => clerkToken({ sub: 'mch_burst', org_id: 'org_clerk' })));
      const results = await Promise.all(tokens.map((t) => ids.verify(t)));
      for (const r of results) expect(r).toMatchObject({ valid: true, subject: 'mch_burst', accountId: 'org_clerk', budgetCents: 250 });
      expect(await rowsFor(ak, 'mch_burst')).toBe(1);
      expect(await totalRows(ak)).toBe(1);
    });

    it('unhappy: forged (another key), tampered, HS256 and ES256 tokens are invalid and make no row', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const forged = await clerkToken({ sub: 'mch_forged' }, { key: attacker.privateKey });
      expect(await ids.verify(forged)).toMatchObject({ valid: false, reason: 'invalid' });
      const now = nowSeconds();
      const tampered = tamperPayload(await clerkToken({ sub: 'mch_genuine' }), { sub: 'mch_victim', iat: now, exp: now + 600, scopes: 'proxy.chat' });
      expect(await ids.verify(tampered)).toMatchObject({ valid: false, reason: 'invalid' });
      const hs = await clerkToken({ sub: 'mch_hs' }, { key: new TextEncoder().encode(clerkPem), header: { alg: 'HS256' } });
      expect(await ids.verify(hs)).toMatchObject({ valid: false, reason: 'invalid' });
      const es = await clerkToken({ sub: 'mch_es' }, { key: ec.privateKey, header: { alg: 'ES256' } });
      expect(await ids.verify(es)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: an expired token is "expired"; nbf in the future and a missing exp are invalid', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const now = nowSeconds();
      expect(await ids.verify(await clerkToken({ sub: 'mch_old', iat: now - 7200, exp: now - 3600 }))).toEqual({
        valid: false,
        reason: 'expired',
        detail: 'the token has expired',
      });
      expect(await ids.verify(await clerkToken({ sub: 'mch_early', nbf: now + 600 }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await ids.verify(await clerkToken({ sub: 'mch_noexp', exp: undefined }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await ids.verify(await clerkToken({ sub: 'mch_future', iat: now + 3600 }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: session-style tokens (sub user_...), OAuth access tokens and a wrong category are not machine tokens', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const session = await clerkToken({ sub: 'user_2abc', sid: 'sess_1' }, { header: { cat: CLERK_SESSION_CATEGORY } });
      expect(await ids.verify(session)).toMatchObject({ valid: false, reason: 'invalid' });
      const sessionNoCat = await clerkToken({ sub: 'user_2abc' }, { header: { cat: undefined } });
      expect(await ids.verify(sessionNoCat)).toMatchObject({ valid: false, reason: 'invalid' });
      // A machine subject under the session category: wrong token category.
      const wrongCat = await clerkToken({ sub: 'mch_wrongcat' }, { header: { cat: CLERK_SESSION_CATEGORY } });
      const wc = await ids.verify(wrongCat);
      expect(wc).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!wc.valid && wc.detail).toMatch(/category/i);
      expect(await ids.verify(await clerkToken({ sub: 'mch_wrongcat' }, { header: { cat: 'cl_other' } }))).toMatchObject({ valid: false, reason: 'invalid' });
      // A correctly signed OAuth access token (typ at+jwt) verifies with Clerk but is not M2M.
      const oauth = await clerkToken({ sub: 'user_2abc', client_id: 'oauth_app', scope: 'proxy.chat' }, { header: { typ: 'at+jwt', cat: undefined } });
      const o = await ids.verify(oauth);
      expect(o).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!o.valid && o.detail).toMatch(/machine-to-machine/);
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: an opaque mt_ token without secretKey is invalid with a clear reason, and no request is made', async () => {
      const ak = await freshAk();
      const before = clerkApi.hits();
      const ids = clerkIds(ak, { apiUrl: clerkApi.url });
      expect(await ids.verify('mt_valid')).toEqual({ valid: false, reason: 'invalid', detail: 'opaque mt_ tokens need the secretKey option' });
      const { call } = mount('express', ids, {});
      const res = await call('mt_valid');
      expectError(res, 401, 'invalid_token');
      expect(messageOf(res)).toMatch(/secretKey/);
      expect(clerkApi.hits()).toBe(before);
      expect(await totalRows(ak)).toBe(0);
    });

    it("happy: opaque mt_ tokens with secretKey are checked through Clerk's API (a local stand-in): valid, revoked, expired, unknown", async () => {
      const ak = await freshAk();
      const ids = clerkM2M(ak, { secretKey: CLERK_SECRET, apiUrl: clerkApi.url, subject: { budgetCents: 100, scopes: ['proxy.chat', 'usage.read'] } });
      expect(await ids.verify('mt_valid')).toMatchObject({ valid: true, subject: 'mch_api', scopes: ['proxy.chat'], claims: { org_id: 'org_api', sub: 'mch_api' } });
      expect(await ids.verify('mt_revoked')).toEqual({ valid: false, reason: 'invalid', detail: 'the token has been revoked' });
      expect(await ids.verify('mt_expired')).toMatchObject({ valid: false, reason: 'expired' });
      expect(await ids.verify('mt_unknown')).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await ids.verify('mt_user')).toMatchObject({ valid: false, reason: 'invalid', detail: 'it is not a machine-to-machine token' });
      const wrongSecret = clerkM2M(ak, { secretKey: 'sk_test_wrong', apiUrl: clerkApi.url, subject: { budgetCents: 100 } });
      expect(await wrongSecret.verify('mt_valid')).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(1);
      // Both kinds at once: a JWT offline, an mt_ token through the API.
      const both = clerkM2M(ak, { jwtKey: clerkPem, secretKey: CLERK_SECRET, apiUrl: clerkApi.url, subject: { budgetCents: 100 } });
      expect(await both.verify(await clerkToken({ sub: 'mch_jwt' }))).toMatchObject({ valid: true, subject: 'mch_jwt' });
      expect(await both.verify('mt_valid')).toMatchObject({ valid: true, subject: 'mch_api' });
    });

    it("happy: token scopes narrow and never widen the machine's; tokenScopes 'ignore' keeps the row's", async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      expect(await ids.verify(await clerkToken({ sub: 'mch_scopes', scopes: 'usage.read admin * billing.write' }))).toMatchObject({
        valid: true,
        scopes: ['usage.read'],
      });
      const ignore = clerkIds(ak, { tokenScopes: 'ignore' });
      expect(await ignore.verify(await clerkToken({ sub: 'mch_scopes', scopes: 'admin' }))).toMatchObject({ valid: true, scopes: ['proxy.chat', 'usage.read'] });
    });

    // A token that is neither JWT-shaped nor mt_/oat_/ak_ makes @clerk/backend throw
    // "Unknown machine token type": it must be an invalid token, never a 500.
    it('error: a garbage bearer is invalid for verify() (not a throw of "Unknown machine token type")', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      expect(await ids.verify('garbage')).toMatchObject({ valid: false, reason: 'invalid' });
    });
    it('error: a garbage bearer is 401 invalid_token in the middleware (never a 500)', async () => {
      const ak = await freshAk();
      const { call } = mount('express', clerkIds(ak), {});
      expectError(await call('not-a-clerk-token'), 401, 'invalid_token');
    });

    // @clerk/backend reports scopes: [] (or the audience) for a JWT with no scopes claim; that must not narrow.
    it("happy: an M2M token without a scopes claim leaves the machine's scopes as they are (never narrowed to [])", async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      expect(await ids.verify(await clerkToken({ sub: 'mch_noscopes', scopes: undefined }))).toMatchObject({
        valid: true,
        scopes: ['proxy.chat', 'usage.read'],
      });
    });

    it('unhappy: bad options throw at construction', async () => {
      const ak = await freshAk();
      const subject = { budgetCents: 100 };
      expectInvalidArgument(() => clerkM2M(ak, { subject }), /jwtKey .* or secretKey/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: '', subject }), /jwtKey .* or secretKey/);
      const privatePem = await exportPKCS8(clerk.privateKey);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: privatePem, subject }), /PEM public key/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: 'not-a-pem', subject }), /PEM public key/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: 42 as never, subject }), /PEM public key/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem, subject, publishableKey: 'pk_test' } as never), /unknown option "publishableKey"/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem } as never), /subject defaults/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem, subject: 5 } as never), /subject defaults/);
      expectInvalidArgument(() => clerkM2M(ak, null as never), /needs options/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem, subject, tokenScopes: 'all' as never }), /tokenScopes/);
      expectInvalidArgument(() => clerkM2M({ validate: () => null } as never, { jwtKey: clerkPem, subject }), /AgentKey instance/);
      expect(() => clerkM2M(ak, { jwtKey: clerkPem, subject })).not.toThrow();
      expect(() => clerkM2M(ak, { secretKey: CLERK_SECRET, subject })).not.toThrow();
    });
  });

  describe('middleware: express, hono and fetch guards of jwtSubjects and clerkM2M', () => {
    const MW_DEFAULTS = { budgetCents: 100, budgetPeriod: 'month' as const, scopes: ['proxy.chat', 'usage.read'] };
    const identities = {
      jwt: {
        make: (ak: AgentKey) => jwtIds(ak, { subject: { ...MW_DEFAULTS, scopes: [...MW_DEFAULTS.scopes] } }),
        mint: (o: { sub: string; scopes?: string; expired?: boolean; forged?: boolean }) => {
          const now = nowSeconds();
          return jwtToken(
            { sub: o.sub, scope: o.scopes, ...(o.expired ? { iat: now - 7200, exp: now - 3600 } : {}) },
            o.forged ? { key: attacker.privateKey } : {},
          );
        },
      },
      clerk: {
        make: (ak: AgentKey) => clerkM2M(ak, { jwtKey: clerkPem, subject: { ...MW_DEFAULTS, scopes: [...MW_DEFAULTS.scopes] } }),
        mint: (o: { sub: string; scopes?: string; expired?: boolean; forged?: boolean }) => {
          const now = nowSeconds();
          return clerkToken(
            { sub: o.sub, scopes: o.scopes, ...(o.expired ? { iat: now - 7200, exp: now - 3600 } : {}) },
            o.forged ? { key: attacker.privateKey } : {},
          );
        },
      },
    };

    for (const kind of ['jwt', 'clerk'] as const) {
      for (const adapter of ADAPTERS) {
        const id = identities[kind];
        const sub = `mch_${kind}_${adapter}`;

        it(`happy (${kind}, ${adapter}): a valid token passes; the result carries the subject and the narrowed scopes`, async () => {
          const ak = await freshAk();
          const { call, state } = mount(adapter, id.make(ak), { scope: 'proxy.chat' });
          const res = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expect(res.status).toBe(200);
          expect(state.reached).toBe(1);
          expect(res.body.agentKey).toMatchObject({
            valid: true,
            subject: sub,
            accountId: sub,
            scopes: ['proxy.chat'],
            budgetCents: 100,
            budgetUsedCents: 0,
            budgetRemainingCents: 100,
            budgetPeriod: 'month',
            keyId: expect.any(Number),
          });
          if (adapter === 'express') expect(res.body.locals).toEqual(res.body.agentKey);
          // X-API-Key carries a token too.
          const viaHeader = await call(null, { 'x-api-key': await id.mint({ sub, scopes: 'proxy.chat' }) });
          expect(viaHeader.status).toBe(200);
          expect(await rowsFor(ak, sub)).toBe(1);
        });

        it(`unhappy (${kind}, ${adapter}): 401 missing_key / invalid_token / token_expired, 403 insufficient_scope; the handler never runs`, async () => {
          const ak = await freshAk();
          const { call, state } = mount(adapter, id.make(ak), { scope: 'proxy.chat' });
          expectError(await call(null), 401, 'missing_key');
          expectError(await call(null, { authorization: 'Basic dXNlcjpwYXNz' }), 401, 'missing_key');
          const forged = await call(await id.mint({ sub, scopes: 'proxy.chat', forged: true }));
          expectError(forged, 401, 'invalid_token');
          expect(messageOf(forged)).toMatch(/^The bearer token is not valid: /);
          expectError(await call('a.b.c'), 401, 'invalid_token');
          expectError(await call(await id.mint({ sub, scopes: 'proxy.chat', expired: true })), 401, 'token_expired');
          expect(await totalRows(ak)).toBe(0);
          const narrowed = await call(await id.mint({ sub, scopes: 'usage.read' }));
          expectError(narrowed, 403, 'insufficient_scope');
          expect(scopesOf(narrowed)).toEqual({ required: 'proxy.chat', available: ['usage.read'] });
          expectError(await call(await id.mint({ sub, scopes: 'admin *' })), 403, 'insufficient_scope');
          expect(state.reached).toBe(0);
        });

        it(`unhappy (${kind}, ${adapter}): 429 once the subject's budget is spent, 401 key_revoked once it is revoked`, async () => {
          const ak = await freshAk();
          const { call, state } = mount(adapter, id.make(ak), { scope: 'proxy.chat' });
          const first = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expect(first.status).toBe(200);
          expect(await ak.trackUsageBySubject(sub, { costCents: 100 })).toMatchObject({ success: true });
          expectError(await call(await id.mint({ sub, scopes: 'proxy.chat' })), 429, 'budget_exceeded');
          expect(await ak.revoke(first.body.agentKey.keyId)).toBe(true);
          expectError(await call(await id.mint({ sub, scopes: 'proxy.chat' })), 401, 'key_revoked');
          expect(state.reached).toBe(1);
        });

        it(`happy (${kind}, ${adapter}): reserveCents holds through the subject, commits the reported cost, releases on failure, 429 when it cannot fit`, async () => {
          const ak = await freshAk();
          const ids = id.make(ak);
          const { call } = mount(adapter, ids, { scope: 'proxy.chat', reserveCents: 30 }, { costCents: 12 });
          const res = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expect(res.status).toBe(200);
          expect(res.body.agentKey).toMatchObject({ subject: sub });
          expect(res.body.reservation).toMatchObject({ heldCents: 30, reservationId: expect.any(String) });
          const keyId = res.body.agentKey.keyId as number;
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 12, held: 0 });

          // A failing handler: the hold is given back.
          const failing = mount(adapter, ids, { scope: 'proxy.chat', reserveCents: 30 }, { status: 502 });
          expect((await failing.call(await id.mint({ sub, scopes: 'proxy.chat' }))).status).toBe(502);
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 12, held: 0 });

          // No reported cost on a success: the whole hold is committed.
          const whole = mount(adapter, ids, { scope: 'proxy.chat', reserveCents: 30 });
          expect((await whole.call(await id.mint({ sub, scopes: 'proxy.chat' }))).status).toBe(200);
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 42, held: 0 });

          // 58 left: spend 40 more, then a 30-cent hold does not fit.
          expect(await ak.trackUsageBySubject(sub, { costCents: 40 })).toMatchObject({ success: true });
          const tooBig = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expectError(tooBig, 429, 'budget_exceeded');
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 82, held: 0 });
          expect(await ak.audit()).toMatchObject({ ok: true });
        });
      }
    }
  });
});
