import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import fc from 'fast-check';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, type AgentKeyRoutesOptions, createAgentKeyRoutes } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { hangingPool, rejectingPool } from './helpers/faults.js';
import { PACKAGE_ERRORS, expectPackageError } from './helpers/http.js';


/**
 * The routes answer in the package's shape: `{ error: '<string>', code, message }`. `error`
 * is the package's string for the refusals it had, `failure` for a 5xx ('auth_unavailable'
 * when the key check fails, the route's own 'Failed to ...' inside a handler), and the
 * message itself for any other refusal.
 */
function expectRouteError(res: request.Response, status: number, code?: string, failure?: string): void {
  const seen = code ?? (res.body?.code as string | undefined) ?? '';
  const signupScopes = seen === 'scope_not_allowed' && res.body?.allowed !== undefined;
  const error =
    status >= 500
      ? (failure ?? /^(auth_unavailable|Failed to (create|read|revoke) key)$/)
      : signupScopes
        ? /^Scopes not allowed on signup: \S/
        : (PACKAGE_ERRORS[seen] ?? (res.body?.message as string));
  expectPackageError(res, status, error, code);
}

/**
 * createAgentKeyRoutes(ak, opts) mounted with app.use(...) on real Express 5 apps, on
 * PostgreSQL and PGlite: POST /signup, GET /sdk-keys/me, POST /sdk-keys,
 * DELETE /sdk-keys/:id and the page's security model.
 */

/** An app with the self-serve routes mounted, as the page shows. */
function routesApp(ak: AgentKey, options?: AgentKeyRoutesOptions): Express {
  const app = express();
  app.use(createAgentKeyRoutes(ak, options));
  return app;
}

const auth = (key: string) => ({ Authorization: `Bearer ${key}` });

async function countRows(getDb: () => { query: (text: string) => Promise<Record<string, unknown>[]> }, ak: AgentKey): Promise<number> {
  const [row] = await getDb().query(`SELECT count(*)::int AS n FROM ${ak.tableName}`);
  return Number(row?.n);
}

describe('createAgentKeyRoutes: options are checked when the router is built', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });

  it('error: bad options throw an AgentKeyError at construction', () => {
    const bad: unknown[] = [
      { signupScopes: 'proxy.chat' },
      { signupScopes: [5] },
      { signupScopes: ['has space'] },
      { signupRateLimit: 0 },
      { signupRateLimit: -3 },
      { signupRateLimit: 2.5 },
      { signupRateLimit: '10' },
      { signupRateLimit: true },
      { requireEmailForSignup: 'yes' },
      { signupScope: ['proxy.chat'] },
    ];
    for (const options of bad) {
      expect(() => createAgentKeyRoutes(ak, options as never), JSON.stringify(options)).toThrow(AgentKeyError);
    }
  });

  it('happy: good options build a router', () => {
    expect(typeof createAgentKeyRoutes(ak)).toBe('function');
    expect(typeof createAgentKeyRoutes(ak, { signupScopes: ['proxy.chat'], signupRateLimit: false, requireEmailForSignup: true })).toBe('function');
    expect(typeof createAgentKeyRoutes(ak, { signupScopes: null as never })).toBe('function');
  });
});

forEachDatabase((getDb) => {
  describe('POST /signup', () => {
    it('happy: 201 with a key that holds exactly signupScopes, in a new account of its own', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupScopes: ['proxy.chat', 'usage.read'] });
      const before = Date.now();
      const res = await request(app).post('/signup').send({ email: 'agent@example.com' });
      expect(res.status).toBe(201);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.body).toMatchObject({ key: expect.stringMatching(/^ak_/), id: expect.any(Number), accountId: expect.any(String), scopes: ['proxy.chat', 'usage.read'] });
      // As in the package: without expires_in a signup key lasts 24 hours.
      const expires = Date.parse(res.body.expiresAt);
      expect(expires).toBeGreaterThanOrEqual(before + 24 * 3_600_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 24 * 3_600_000);
      const v = await ak.validate(res.body.key);
      expect(v).toMatchObject({ valid: true, keyId: res.body.id, accountId: res.body.accountId, scopes: ['proxy.chat', 'usage.read'] });
      const [row] = await getDb().query(`SELECT user_id FROM ${ak.tableName} WHERE id = $1`, [res.body.id]);
      expect(row?.user_id).toBe('agent@example.com');
    });

    it('security: scopes outside signupScopes (admin included) are refused with 400; null scopes get signupScopes; an account id asked for in the body is ignored', async () => {
      const ak = await getDb().agentKey();
      const victim = await ak.create({ accountId: 'acct_victim', scopes: ['admin'] });
      const app = routesApp(ak, { signupScopes: ['proxy.chat'], signupRateLimit: false });
      // Wider asks are refused, naming the scopes refused and the ones allowed, and make no key.
      const refused: [Record<string, unknown>, string][] = [
        [{ scopes: ['admin'] }, 'admin'],
        [{ scopes: ['proxy.chat', 'billing.write'] }, 'billing.write'],
        [{ scopes: ['admin'], accountId: 'acct_victim', account_id: 'acct_victim', user_id: 'x', keyId: victim.id }, 'admin'],
      ];
      for (const [body, named] of refused) {
        const res = await request(app).post('/signup').send({ email: 'a@example.com', ...body });
        expectPackageError(res, 400, `Scopes not allowed on signup: ${named}`, 'scope_not_allowed');
        expect(res.body.allowed, JSON.stringify(body)).toEqual(['proxy.chat']);
      }
      expect(await countRows(getDb, ak)).toBe(1);
      // Asks within signupScopes (or none) get them; account and user ids in the body are ignored.
      const asks = [
        { scopes: null },
        { scopes: ['proxy.chat'] },
        { scopes: ['proxy.chat'], accountId: 'acct_victim', account_id: 'acct_victim', user_id: 'x', userId: 'x', keyId: victim.id },
      ];
      for (const body of asks) {
        const res = await request(app).post('/signup').send({ email: 'a@example.com', ...body });
        expect(res.status, JSON.stringify(body)).toBe(201);
        expect(res.body.scopes).toEqual(['proxy.chat']);
        expect(res.body.accountId).not.toBe('acct_victim');
        const v = await ak.validate(res.body.key);
        expect(v).toMatchObject({ valid: true, scopes: ['proxy.chat'], userId: 'a@example.com' });
        expect(ak.hasScope(v, 'admin')).toBe(false);
        expect(ak.hasScope(v, 'billing.write')).toBe(false);
        expect(v.valid && v.accountId).not.toBe('acct_victim');
      }
      expect(await ak.validate(victim.key)).toMatchObject({ valid: true, accountId: 'acct_victim' });
    });

    it('security: with signupScopes unset the key is scopeless ([]), never unlimited', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak);
      const res = await request(app).post('/signup').send({ email: 'a@example.com', scopes: ['admin'] });
      expect(res.status).toBe(201);
      expect(res.body.scopes).toEqual([]);
      const v = await ak.validate(res.body.key);
      expect(v).toMatchObject({ valid: true, scopes: [] });
      expect(ak.hasScope(v, 'admin')).toBe(false);
      expect(ak.hasScope(v, 'anything')).toBe(false);
      // and it can mint nothing wider than itself
      const child = await request(app).post('/sdk-keys').set(auth(res.body.key)).send({ scopes: ['anything'] });
      expectRouteError(child, 403, 'scope_not_allowed');
    });

    it('happy: each signup gets its own new account, even with the same email', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupScopes: ['proxy.chat'] });
      const anonymous = routesApp(ak, { signupScopes: ['proxy.chat'], requireEmailForSignup: false });
      const a = await request(app).post('/signup').send({ email: 'same@example.com' });
      const b = await request(app).post('/signup').send({ email: 'same@example.com' });
      // Signups without an email (where allowed) never share an account either.
      const c = await request(anonymous).post('/signup');
      const d = await request(anonymous).post('/signup');
      expect([a.status, b.status, c.status, d.status]).toEqual([201, 201, 201, 201]);
      const accounts = new Set([a.body.accountId, b.body.accountId, c.body.accountId, d.body.accountId]);
      expect(accounts.size).toBe(4);
      // one account cannot touch another's keys
      expectRouteError(await request(app).delete(`/sdk-keys/${b.body.id}`).set(auth(a.body.key)), 404, 'not_found');
    });

    it('happy: budget_cents, budget_period and expires_in from the body are applied', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupScopes: ['proxy.chat'] });
      const before = Date.now();
      const res = await request(app).post('/signup').send({ email: 'a@example.com', budget_cents: 500, budget_period: 'day', expires_in: '1h', name: 'my-agent' });
      expect(res.status).toBe(201);
      const v = await ak.validate(res.body.key);
      expect(v).toMatchObject({ valid: true, budgetCents: 500, budgetRemainingCents: 500, budgetPeriod: 'day', name: 'my-agent' });
      const expires = Date.parse((v as { expiresAt: string }).expiresAt);
      expect(expires).toBeGreaterThanOrEqual(before + 3_600_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 3_600_000);
      expect(res.body.expiresAt).toBe((v as { expiresAt: string }).expiresAt);
    });

    it('error: bad budget_cents, expires_in or budget_period -> 400 with a code, and no key', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupRateLimit: false });
      // ('0d' is no longer among them: a zero duration is valid, as in the package, and makes a key that is expired at once.)
      const cases: [Record<string, unknown>, string][] = [
        [{ budget_cents: -1 }, 'invalid_budget'],
        [{ budget_cents: '1e2' }, 'invalid_budget'],
        [{ budget_cents: 'one hundred' }, 'invalid_budget'],
        [{ budget_cents: 1e20 }, 'invalid_budget'],
        [{ budget_cents: true }, 'invalid_budget'],
        [{ budget_cents: {} }, 'invalid_budget'],
        [{ expires_in: '7 days' }, 'invalid_duration'],
        [{ expires_in: '00d' }, 'invalid_duration'],
        [{ expires_in: '' }, 'invalid_duration'],
        [{ expires_in: 3600 }, 'invalid_duration'],
        [{ expires_in: '1y' }, 'invalid_duration'],
        [{ budget_period: 'week' }, 'invalid_period'],
        [{ budget_period: 1 }, 'invalid_period'],
      ];
      for (const [body, code] of cases) {
        const res = await request(app).post('/signup').send({ email: 'a@example.com', ...body });
        expectRouteError(res, 400, code);
        if (code === 'invalid_duration') expect(res.body.error).toMatch(/^Invalid duration: /);
        if (code === 'invalid_period') expect(res.body.error).toMatch(/^Invalid budget period: /);
      }
      expect(await countRows(getDb, ak)).toBe(0);
    });

    it('error: an invalid email -> 400 invalid_email', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupRateLimit: false });
      for (const email of ['not-an-email', 'a@b', 'a b@c.de', '@example.com', 'a@@b.co', 42, true, ['a@b.co'], { a: 1 }]) {
        expectRouteError(await request(app).post('/signup').send({ email }), 400, 'invalid_email');
      }
      expect(await countRows(getDb, ak)).toBe(0);
    });

    it("error: requireEmailForSignup (the default) and no email -> 400 'Valid email is required'; false allows none", async () => {
      const ak = await getDb().agentKey();
      for (const app of [routesApp(ak, { requireEmailForSignup: true, signupRateLimit: false }), routesApp(ak, { signupRateLimit: false })]) {
        expectRouteError(await request(app).post('/signup').send({}), 400, 'email_required');
        expectRouteError(await request(app).post('/signup'), 400, 'email_required');
        expectRouteError(await request(app).post('/signup').send({ email: null }), 400, 'email_required');
        expectPackageError(await request(app).post('/signup').send({ email: '' }), 400, 'Valid email is required');
      }
      expect(await countRows(getDb, ak)).toBe(0);
      expect((await request(routesApp(ak)).post('/signup').send({ email: 'ok@example.com' })).status).toBe(201);
      expect((await request(routesApp(ak, { requireEmailForSignup: false })).post('/signup').send({})).status).toBe(201);
    });

    it('security: signupRateLimit 3 -> the 4th signup from one address within a minute is 429 rate_limited and creates no key', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupRateLimit: 3 });
      for (let i = 0; i < 3; i++) expect((await request(app).post('/signup').send({ email: `a${i}@example.com` })).status).toBe(201);
      expect(await countRows(getDb, ak)).toBe(3);
      expectRouteError(await request(app).post('/signup').send({ email: 'a4@example.com' }), 429, 'rate_limited');
      expectRouteError(await request(app).post('/signup').send({ email: 'a5@example.com' }), 429, 'rate_limited');
      expect(await countRows(getDb, ak)).toBe(3);
    });

    it('happy: the signup limit is per client address (behind a trusted proxy)', async () => {
      const ak = await getDb().agentKey();
      const app = express();
      app.set('trust proxy', true);
      app.use(createAgentKeyRoutes(ak, { signupRateLimit: 1 }));
      const email = { email: 'a@example.com' };
      expect((await request(app).post('/signup').set('X-Forwarded-For', '203.0.113.1').send(email)).status).toBe(201);
      expectRouteError(await request(app).post('/signup').set('X-Forwarded-For', '203.0.113.1').send(email), 429, 'rate_limited');
      expect((await request(app).post('/signup').set('X-Forwarded-For', '203.0.113.2').send(email)).status).toBe(201);
      expect(await countRows(getDb, ak)).toBe(2);
    });

    it('security: without trust proxy, X-Forwarded-For does not get around the limit', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupRateLimit: 1 });
      const email = { email: 'a@example.com' };
      expect((await request(app).post('/signup').set('X-Forwarded-For', '203.0.113.1').send(email)).status).toBe(201);
      expectRouteError(await request(app).post('/signup').set('X-Forwarded-For', '203.0.113.2').send(email), 429, 'rate_limited');
      expect(await countRows(getDb, ak)).toBe(1);
    });

    it('error: malformed JSON -> 400 invalid_json; an array or a scalar body -> 400', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupRateLimit: false });
      const post = (raw: string) => request(app).post('/signup').set('Content-Type', 'application/json').send(raw);
      expectRouteError(await post('{"email": '), 400, 'invalid_json');
      expectRouteError(await post('{bad json}'), 400, 'invalid_json');
      expectRouteError(await post('[]'), 400);
      expectRouteError(await post('[{"email":"a@example.com"}]'), 400);
      expectRouteError(await post('"a string"'), 400);
      expectRouteError(await post('42'), 400);
      expectRouteError(await post('null'), 400);
      expect(await countRows(getDb, ak)).toBe(0);
    });

    it('error: a body over 16 KB -> 413 JSON, and no key', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak);
      const huge = JSON.stringify({ email: 'a@example.com', name: 'x'.repeat(20_000) });
      const res = await request(app).post('/signup').set('Content-Type', 'application/json').send(huge);
      expectRouteError(res, 413);
      expect(await countRows(getDb, ak)).toBe(0);
    });

    it('error: over-long or control-character fields -> 400, never 500', async () => {
      const ak = await getDb().agentKey();
      const app = routesApp(ak, { signupRateLimit: false });
      for (const body of [
        { email: 'a@example.com', name: 'x'.repeat(1000) },
        { email: 'a@example.com', name: '' },
        { email: 'a@example.com', name: 'nul\u0000byte' },
        { email: 'a@example.com', delegated_by: 'nul\u0000byte' },
        { email: 'nul\u0000@example.com' },
        { email: `${'a'.repeat(200)}@${'b'.repeat(100)}.com` },
      ]) {
        const res = await request(app).post('/signup').send(body);
        expectRouteError(res, 400);
      }
      expect(await countRows(getDb, ak)).toBe(0);
    });
  });

  describe('GET /sdk-keys/me', () => {
    it("happy: 200 with the caller's metadata and no secret", async () => {
      const ak = await getDb().agentKey();
      const created = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 300, budgetPeriod: 'month', expiresIn: '7d', delegatedBy: 'user_9', name: 'me' });
      await ak.trackUsage(created.key, { costCents: 0.25 });
      const app = routesApp(ak);
      const res = await request(app).get('/sdk-keys/me').set(auth(created.key));
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({
        valid: true,
        keyId: created.id,
        accountId: 'acct_1',
        name: 'me',
        scopes: ['proxy.chat'],
        budgetCents: 300,
        budgetUsedCents: 0.25,
        budgetRemainingCents: 299.75,
        budgetPeriod: 'month',
        expiresAt: created.expiresAt,
        delegatedBy: 'user_9',
      });
      const [row] = await getDb().query<{ key_hash: string }>(`SELECT key_hash FROM ${ak.tableName} WHERE id = $1`, [created.id]);
      for (const secret of [created.key, created.key.slice(3), row?.key_hash as string]) expect(res.text).not.toContain(secret);
      for (const field of ['key', 'key_hash', 'keyHash', 'hash']) expect(res.body).not.toHaveProperty(field);
    });

    it('happy: X-API-Key works too', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1' });
      const res = await request(routesApp(ak)).get('/sdk-keys/me').set('X-API-Key', key);
      expect(res.status).toBe(200);
      expect(res.body.accountId).toBe('acct_1');
    });

    it('error: 401 without a key, with a garbage key, an expired key or a revoked key', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const app = routesApp(ak);
      const expired = await ak.create({ accountId: 'acct_1', expiresIn: '1h' });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expired.id]);
      const revoked = await ak.create({ accountId: 'acct_1' });
      await ak.revoke(revoked.id);
      expectRouteError(await request(app).get('/sdk-keys/me'), 401, 'missing_key');
      expectRouteError(await request(app).get('/sdk-keys/me').set(auth('ak_garbage')), 401, 'invalid_key');
      expectRouteError(await request(app).get('/sdk-keys/me').set(auth(expired.key)), 401, 'key_expired');
      expectRouteError(await request(app).get('/sdk-keys/me').set(auth(revoked.key)), 401, 'key_revoked');
    });

    it("error: a key with budget left reads its own metadata; once the budget is spent it gets 429 'budget_exceeded', as in the package", async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', budgetCents: 5 });
      const app = routesApp(ak);
      await ak.trackUsage(key, { costCents: 4.99 });
      const res = await request(app).get('/sdk-keys/me').set(auth(key));
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ budgetCents: 5, budgetUsedCents: 4.99, budgetRemainingCents: 0.01 });
      await ak.trackUsage(key, { costCents: 0.01 });
      expectRouteError(await request(app).get('/sdk-keys/me').set(auth(key)), 429, 'budget_exceeded');
      // A $0 key has nothing to spend from the start.
      const zero = await ak.create({ accountId: 'acct_1', budgetCents: 0 });
      expectRouteError(await request(app).get('/sdk-keys/me').set(auth(zero.key)), 429, 'budget_exceeded');
    });
  });

  describe('POST /sdk-keys', () => {
    it("happy: a child key in the caller's account, with a subset of its scopes", async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat', 'usage.read'], delegatedBy: 'user_1' });
      const app = routesApp(ak);
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ scopes: ['usage.read'], name: 'child', accountId: 'acct_other', account_id: 'acct_other' });
      expect(res.status).toBe(201);
      expect(res.body).toMatchObject({ key: expect.stringMatching(/^ak_/), id: expect.any(Number), accountId: 'acct_p', scopes: ['usage.read'] });
      expect(res.body.id).not.toBe(parent.id);
      const v = await ak.validate(res.body.key);
      expect(v).toMatchObject({ valid: true, accountId: 'acct_p', scopes: ['usage.read'], name: 'child', delegatedBy: 'user_1' });
    });

    it("happy: omitted scopes inherit the caller's; a budgeted, expiring caller must name budget_cents and expires_in (403 without: never inherited silently)", async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 250, expiresIn: '2h' });
      const app = routesApp(ak);
      for (const body of [{}, undefined, { budget_cents: null, expires_in: null }, { expires_in: '1h' }]) {
        const req = request(app).post('/sdk-keys').set(auth(parent.key));
        const res = body === undefined ? await req : await req.send(body);
        expectRouteError(res, 403, 'budget_exceeds_parent');
        expect(res.body.error, JSON.stringify(body)).toMatch(/^budget_cents is required: /);
      }
      for (const body of [{ budget_cents: 250 }, { budget_cents: 250, expires_in: null }]) {
        const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send(body);
        expectRouteError(res, 403, 'expiry_exceeds_parent');
        expect(res.body.error, JSON.stringify(body)).toMatch(/^expires_in is required: /);
      }
      expect(await countRows(getDb, ak)).toBe(1);
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: 250, expires_in: '1h' });
      expect(res.status).toBe(201);
      expect(Object.keys(res.body).sort()).toEqual(['accountId', 'budgetCents', 'budgetPeriod', 'expiresAt', 'id', 'key', 'scopes']);
      expect(res.body).toMatchObject({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 250, budgetPeriod: null });
      const v = await ak.validate(res.body.key);
      expect(v).toMatchObject({ valid: true, accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 250, expiresAt: res.body.expiresAt });
      expect(Date.parse(res.body.expiresAt)).toBeLessThan(Date.parse(parent.expiresAt as string));
    });

    it('happy: a budget and an expiry within the caller\'s are applied', async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 250, expiresIn: '2h' });
      const app = routesApp(ak);
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: 250, expires_in: '30m' });
      expect(res.status).toBe(201);
      const v = await ak.validate(res.body.key);
      expect(v).toMatchObject({ valid: true, budgetCents: 250 });
      expect(Date.parse((v as { expiresAt: string }).expiresAt)).toBeLessThan(Date.parse(parent.expiresAt as string));
      const small = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: 0.5, expires_in: '1h' });
      expect(small.status).toBe(201);
      expect(await ak.validate(small.body.key)).toMatchObject({ budgetCents: 0.5 });
    });

    it('happy: an unlimited caller (no budget, no expiry) gives unlimited children by default and any budget on request', async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p' });
      const app = routesApp(ak);
      const open = await request(app).post('/sdk-keys').set(auth(parent.key)).send({});
      expect(open.status).toBe(201);
      expect(await ak.validate(open.body.key)).toMatchObject({ valid: true, scopes: null, budgetCents: null, expiresAt: null });
      const capped = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: 1_000_000, expires_in: '1mo', scopes: ['x'] });
      expect(capped.status).toBe(201);
      expect(await ak.validate(capped.body.key)).toMatchObject({ valid: true, scopes: ['x'], budgetCents: 1_000_000 });
    });

    it('security: scopes wider than the caller\'s -> 403 scope_not_allowed, including admin and null (unlimited)', async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat', 'usage.read'] });
      const app = routesApp(ak);
      for (const scopes of [['billing.write'], ['proxy.chat', 'billing.write'], ['admin'], null, ['*'], ['proxy.*']]) {
        const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ scopes });
        expectRouteError(res, 403, 'scope_not_allowed');
      }
      // camelCase field names are no way around it
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ scopes: ['proxy.chat'], Scopes: ['admin'] });
      expect(res.status).toBe(201);
      expect(await ak.validate(res.body.key)).toMatchObject({ scopes: ['proxy.chat'] });
      expect(await countRows(getDb, ak)).toBe(2);
    });

    it('security: a scopeless caller can only mint scopeless keys', async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', scopes: [] });
      const app = routesApp(ak);
      expectRouteError(await request(app).post('/sdk-keys').set(auth(parent.key)).send({ scopes: null }), 403, 'scope_not_allowed');
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({});
      expect(res.status).toBe(201);
      expect(await ak.validate(res.body.key)).toMatchObject({ scopes: [] });
    });

    it('happy: a caller with "admin" or unlimited scopes may grant any scopes', async () => {
      const ak = await getDb().agentKey();
      const admin = await ak.create({ accountId: 'acct_p', scopes: ['admin'] });
      const unlimited = await ak.create({ accountId: 'acct_p', scopes: null });
      const app = routesApp(ak);
      for (const parent of [admin, unlimited]) {
        for (const scopes of [['billing.write'], ['admin'], null]) {
          const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ scopes });
          expect(res.status, JSON.stringify(scopes)).toBe(201);
          expect(await ak.validate(res.body.key)).toMatchObject({ valid: true, accountId: 'acct_p', scopes });
        }
      }
    });

    it("security: a budget above the caller's -> 403 budget_exceeds_parent; a budgeted caller cannot mint an unbudgeted key", async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', budgetCents: 100 });
      const app = routesApp(ak);
      for (const budget_cents of [100.0001, 101, 1e9]) {
        expectRouteError(await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents }), 403, 'budget_exceeds_parent');
      }
      // null or no budget_cents is refused, never taken as "unlimited" (nor inherited silently)
      for (const body of [{ budget_cents: null }, {}]) {
        const refused = await request(app).post('/sdk-keys').set(auth(parent.key)).send(body);
        expectRouteError(refused, 403, 'budget_exceeds_parent');
        expect(refused.body.error).toMatch(/^budget_cents is required: /);
      }
      expect(await countRows(getDb, ak)).toBe(1);
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: 100 });
      expect(res.status).toBe(201);
      expect(await ak.validate(res.body.key)).toMatchObject({ budgetCents: 100 });
    });

    it('security: a daily child of a monthly caller is created (201) as its child, and can never spend past the caller\'s month in total', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const monthly = await ak.create({ accountId: 'acct_p', budgetCents: 100, budgetPeriod: 'month' });
      const lifetime = await ak.create({ accountId: 'acct_p', budgetCents: 100 });
      const app = routesApp(ak);
      const monthlyReset = (await ak.getKey(monthly.id))!.budgetResetAt;

      // A budget that resets more often than the caller's is allowed: the child is a real child
      // of the caller, so its spend counts against the caller's own budget too.
      const daily = await request(app).post('/sdk-keys').set(auth(monthly.key)).send({ budget_cents: 60, budget_period: 'day' });
      expect(daily.status).toBe(201);
      const child = daily.body as { key: string; id: number };
      expect(await ak.validate(child.key)).toMatchObject({ valid: true, accountId: 'acct_p', budgetCents: 60, budgetPeriod: 'day' });
      expect(await ak.getKey(child.id)).toMatchObject({ parentId: monthly.id, depth: 1, budgetCents: 60, budgetPeriod: 'day' });
      for (const send of [{ budget_cents: 100, budget_period: 'month' }, { budget_cents: 1, budget_period: 'day' }]) {
        const res = await request(app).post('/sdk-keys').set(auth(lifetime.key)).send(send);
        expect(res.status, JSON.stringify(send)).toBe(201);
        expect(await ak.getKey(res.body.id)).toMatchObject({ parentId: lifetime.id, depth: 1, budgetPeriod: send.budget_period });
      }

      // A budgeted caller's child names its budget (403 without); its budget_period is the one asked for,
      // and none (or null) is a lifetime budget: nothing is inherited silently.
      // (Minted before any spend: a caller with nothing left may not mint keys.)
      expectRouteError(await request(app).post('/sdk-keys').set(auth(monthly.key)).send({}), 403, 'budget_exceeds_parent');
      const same = await request(app).post('/sdk-keys').set(auth(monthly.key)).send({ budget_cents: 100, budget_period: 'month' });
      expect(same.status).toBe(201);
      expect(await ak.validate(same.body.key)).toMatchObject({ budgetCents: 100, budgetPeriod: 'month' });
      for (const send of [{ budget_cents: 50 }, { budget_cents: 50, budget_period: null }]) {
        const once = await request(app).post('/sdk-keys').set(auth(monthly.key)).send(send);
        expect(once.status, JSON.stringify(send)).toBe(201);
        expect(once.body).toMatchObject({ budgetCents: 50, budgetPeriod: null });
        expect(await ak.validate(once.body.key)).toMatchObject({ budgetCents: 50, budgetPeriod: null });
      }

      // Day 1: the child spends up to its daily cap; its own budget refuses more.
      expect(await ak.trackUsage(child.key, { costCents: 60 })).toEqual({ success: true, budgetUsedCents: 60, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(child.key, { costCents: 0.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'key', keyId: child.id },
        budgetUsedCents: 60,
        budgetRemainingCents: 0,
      });
      // The child's day ends (forced with SQL); the caller's month does not.
      const endDay = () => db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [child.id]);
      await endDay();
      // Day 2: a fresh daily budget of 60, but only 40 of the caller's month is left: the caller refuses.
      expect(await ak.trackUsage(child.key, { costCents: 40.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'ancestor', keyId: monthly.id },
        budgetUsedCents: 0,
        budgetRemainingCents: 60,
      });
      expect(await ak.reserve(child.key, { costCents: 60 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'ancestor', keyId: monthly.id },
        budgetUsedCents: 0,
        budgetRemainingCents: 60,
      });
      expect(await ak.trackUsage(child.key, { costCents: 40 })).toEqual({ success: true, budgetUsedCents: 40, budgetRemainingCents: 20 });
      // Day 3: nothing at all is left of the caller's month.
      await endDay();
      expect(await ak.trackUsage(child.key, { costCents: 0.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'ancestor', keyId: monthly.id },
        budgetUsedCents: 0,
        budgetRemainingCents: 60,
      });
      // In total the child spent exactly the caller's monthly budget, and the caller's month never reset.
      expect(await ak.getKey(monthly.id)).toMatchObject({ spentCents: 100, remainingCents: 0, budgetResetAt: monthlyReset });
      expect(await ak.usage({ keyId: child.id })).toMatchObject({ totalCents: 100, count: 2 });
      expect(await ak.trackUsage(monthly.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: monthly.id } });
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });

    it("security: an expiry past the caller's -> 403 expiry_exceeds_parent; an expiring caller cannot mint a never-expiring key", async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', expiresIn: '1h' });
      const app = routesApp(ak);
      for (const expires_in of ['2h', '61m', '1d', '1mo']) {
        const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ expires_in });
        expectRouteError(res, 403, 'expiry_exceeds_parent');
        expect(res.body.error).toMatch(/may not reach past/);
      }
      // null or no expires_in is refused, never taken as "never expires" (nor inherited silently)
      for (const body of [{ expires_in: null }, {}]) {
        const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send(body);
        expectRouteError(res, 403, 'expiry_exceeds_parent');
        expect(res.body.error).toMatch(/^expires_in is required: /);
      }
      expect(await countRows(getDb, ak)).toBe(1);
      const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ expires_in: '59m' });
      expect(res.status).toBe(201);
      const expiresAt = Date.parse(((await ak.validate(res.body.key)) as { expiresAt: string }).expiresAt);
      expect(expiresAt).toBeLessThanOrEqual(Date.parse(parent.expiresAt as string));
      expect(res.body.expiresAt).toBe(new Date(expiresAt).toISOString());
    });

    it("happy: budget_cents may be a decimal string, compared exactly with the caller's budget", async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', budgetCents: 100 });
      const app = routesApp(ak);
      const ok = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: '99.9999' });
      expect(ok.status).toBe(201);
      expect(ok.body).toMatchObject({ budgetCents: 99.9999 });
      expectRouteError(await request(app).post('/sdk-keys').set(auth(parent.key)).send({ budget_cents: '100.0001' }), 403, 'budget_exceeds_parent');
      expect(await countRows(getDb, ak)).toBe(2);
    });

    it('error: bad field types -> 400 with a code, and no key', async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d' });
      const app = routesApp(ak);
      const cases: Record<string, unknown>[] = [
        { scopes: 'proxy.chat' },
        { scopes: [5] },
        { scopes: [''] },
        { scopes: {} },
        { budget_cents: '5e1' },
        { budget_cents: '-50' },
        { budget_cents: -1 },
        { budget_cents: true },
        { budget_cents: [] },
        { expires_in: 60 },
        { expires_in: '' },
        { expires_in: 'soon' },
        { expires_in: '-5m' },
        { budget_period: 'year' },
        { name: 5 },
        { name: '' },
        { name: 'x'.repeat(1000) },
        { delegated_by: {} },
      ];
      // Within the caller's budget and expiry (which it must name), so that the bad field is what is refused.
      const base = { budget_cents: 50, expires_in: '1h' };
      for (const body of cases) {
        const res = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ ...base, ...body });
        expect(res.status, JSON.stringify(body)).toBe(400);
        expectRouteError(res, 400);
      }
      expectRouteError(await request(app).post('/sdk-keys').set(auth(parent.key)).set('Content-Type', 'application/json').send('{"scopes": ['), 400, 'invalid_json');
      expectRouteError(await request(app).post('/sdk-keys').set(auth(parent.key)).set('Content-Type', 'application/json').send('["proxy.chat"]'), 400);
      const huge = JSON.stringify({ name: 'x'.repeat(20_000) });
      expectRouteError(await request(app).post('/sdk-keys').set(auth(parent.key)).set('Content-Type', 'application/json').send(huge), 413, 'body_too_large');
      expect(await countRows(getDb, ak)).toBe(1);
      // A zero expires_in is no mistake: the child is made, expired at once, as on /signup.
      const zero = await request(app).post('/sdk-keys').set(auth(parent.key)).send({ ...base, expires_in: '0m' });
      expect(zero.status).toBe(201);
      expect(await ak.validate(zero.body.key)).toEqual({ valid: false, reason: 'expired' });
    });

    it('error: 401 without a valid key, and nothing is created', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const app = routesApp(ak);
      const revoked = await ak.create({ accountId: 'acct_p' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_p', expiresIn: '1h' });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expired.id]);
      expectRouteError(await request(app).post('/sdk-keys').send({ scopes: ['x'] }), 401, 'missing_key');
      expectRouteError(await request(app).post('/sdk-keys').set(auth('ak_nope')).send({}), 401, 'invalid_key');
      expectRouteError(await request(app).post('/sdk-keys').set(auth(revoked.key)).send({}), 401, 'key_revoked');
      expectRouteError(await request(app).post('/sdk-keys').set(auth(expired.key)).send({}), 401, 'key_expired');
      // the key is checked before the body: malformed JSON without a key is still a 401
      expectRouteError(await request(app).post('/sdk-keys').set('Content-Type', 'application/json').send('{oops'), 401, 'missing_key');
      expect(await countRows(getDb, ak)).toBe(2);
    });

    it('security: a key whose budget is spent cannot mint fresh-budget children (429)', async () => {
      const ak = await getDb().agentKey();
      const parent = await ak.create({ accountId: 'acct_p', budgetCents: 5 });
      await ak.trackUsage(parent.key, { costCents: 5 });
      expectRouteError(await request(routesApp(ak)).post('/sdk-keys').set(auth(parent.key)).send({}), 429, 'budget_exceeded');
      expect(await countRows(getDb, ak)).toBe(1);
    });
  });

  describe('DELETE /sdk-keys/:id', () => {
    it("happy: revokes a key of the caller's account; that key then validates as revoked", async () => {
      const ak = await getDb().agentKey();
      const caller = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'] });
      const sibling = await ak.create({ accountId: 'acct_p', scopes: ['usage.read'] });
      const app = routesApp(ak);
      const child = await request(app).post('/sdk-keys').set(auth(caller.key)).send({});
      expect(child.status).toBe(201);
      for (const target of [child.body as { id: number; key: string }, sibling]) {
        const res = await request(app).delete(`/sdk-keys/${target.id}`).set(auth(caller.key));
        expect(res.status).toBe(200);
        expect(res.body).toMatchObject({ revoked: true, id: target.id });
        expect(await ak.validate(target.key)).toEqual({ valid: false, reason: 'revoked' });
      }
      expect(await ak.validate(caller.key)).toMatchObject({ valid: true });
      // revoking it again finds no active key
      expectRouteError(await request(app).delete(`/sdk-keys/${sibling.id}`).set(auth(caller.key)), 404, 'not_found');
    });

    it('happy: a key may revoke itself, and is refused afterwards', async () => {
      const ak = await getDb().agentKey();
      const caller = await ak.create({ accountId: 'acct_p' });
      const app = routesApp(ak);
      expect((await request(app).delete(`/sdk-keys/${caller.id}`).set(auth(caller.key))).status).toBe(200);
      expectRouteError(await request(app).get('/sdk-keys/me').set(auth(caller.key)), 401, 'key_revoked');
    });

    it('security: the tree is a boundary: a child revokes itself and its descendants, never its parent or a sibling (403, nothing revoked)', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acct_t', budgetCents: 100 });
      const app = routesApp(ak);
      const mint = async (key: string) => {
        const res = await request(app).post('/sdk-keys').set(auth(key)).send({ budget_cents: 1 });
        expect(res.status).toBe(201);
        return res.body as { id: number; key: string };
      };
      const child = await mint(root.key);
      const sibling = await mint(root.key);
      const grandchild = await mint(child.key);
      for (const target of [root, sibling]) {
        const res = await request(app).delete(`/sdk-keys/${target.id}`).set(auth(child.key));
        expectRouteError(res, 403, 'key_outside_tree');
        expect(res.body.error).toMatch(/may revoke only itself and its own descendants/);
      }
      // a grandchild cannot reach up either
      expectRouteError(await request(app).delete(`/sdk-keys/${child.id}`).set(auth(grandchild.key)), 403, 'key_outside_tree');
      for (const k of [root, sibling, child, grandchild]) expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      // its own descendant, then itself
      expect((await request(app).delete(`/sdk-keys/${grandchild.id}`).set(auth(child.key))).status).toBe(200);
      expect(await ak.validate(grandchild.key)).toEqual({ valid: false, reason: 'revoked' });
      expect((await request(app).delete(`/sdk-keys/${child.id}`).set(auth(child.key))).status).toBe(200);
      expect(await ak.validate(root.key)).toMatchObject({ valid: true });
      expect(await ak.validate(sibling.key)).toMatchObject({ valid: true });
      // a root key keeps the package's reach over its account: another tree's key
      const otherRoot = await ak.create({ accountId: 'acct_t' });
      expect((await request(app).delete(`/sdk-keys/${sibling.id}`).set(auth(otherRoot.key))).status).toBe(200);
    });

    it("security: a key of another account -> 404, and that key stays valid", async () => {
      const ak = await getDb().agentKey();
      const caller = await ak.create({ accountId: 'acct_p', scopes: ['admin'] });
      const victim = await ak.create({ accountId: 'acct_victim' });
      const app = routesApp(ak);
      const res = await request(app).delete(`/sdk-keys/${victim.id}`).set(auth(caller.key));
      expectRouteError(res, 404, 'not_found');
      expect(await ak.validate(victim.key)).toMatchObject({ valid: true, accountId: 'acct_victim' });
      // a numeric-looking account id is no way around it either
      const numeric = await ak.create({ accountId: 7 });
      const sameDigits = await ak.create({ accountId: '7' });
      expect((await request(app).delete(`/sdk-keys/${numeric.id}`).set(auth(sameDigits.key))).status).toBe(200);
      expect((await request(app).delete(`/sdk-keys/${sameDigits.id}`).set(auth(caller.key))).status).toBe(404);
    });

    it('error: a non-numeric id -> 400, an unknown id -> 404', async () => {
      const ak = await getDb().agentKey();
      const caller = await ak.create({ accountId: 'acct_p' });
      const app = routesApp(ak);
      for (const id of ['abc', '1.5', '-1', '0', '1e3', '0x10', ' 1', '99999999999999999999', 'me', "1'--", '%ZZ', '%31']) {
        const res = await request(app).delete(`/sdk-keys/${id}`).set(auth(caller.key));
        expect(res.status, id).toBe(400);
        expectRouteError(res, 400);
      }
      expectRouteError(await request(app).delete('/sdk-keys/999999').set(auth(caller.key)), 404, 'not_found');
      expectRouteError(await request(app).delete(`/sdk-keys/${Number.MAX_SAFE_INTEGER}`).set(auth(caller.key)), 404, 'not_found');
      expect(await ak.validate(caller.key)).toMatchObject({ valid: true });
    });

    it('error: 401 without a key, and nothing is revoked', async () => {
      const ak = await getDb().agentKey();
      const target = await ak.create({ accountId: 'acct_p' });
      const app = routesApp(ak);
      expectRouteError(await request(app).delete(`/sdk-keys/${target.id}`), 401, 'missing_key');
      expectRouteError(await request(app).delete(`/sdk-keys/${target.id}`).set(auth('ak_garbage')), 401, 'invalid_key');
      expectRouteError(await request(app).delete('/sdk-keys/abc'), 401, 'missing_key');
      expect(await ak.validate(target.key)).toMatchObject({ valid: true });
    });
  });

  describe('the router and the rest of the app', () => {
    it('happy: routes mounted under a prefix work there', async () => {
      const ak = await getDb().agentKey();
      const app = express();
      app.use('/auth', createAgentKeyRoutes(ak, { signupScopes: ['proxy.chat'] }));
      const signup = await request(app).post('/auth/signup').send({ email: 'a@example.com' });
      expect(signup.status).toBe(201);
      expect((await request(app).get('/auth/sdk-keys/me').set(auth(signup.body.key))).status).toBe(200);
      expect((await request(app).post('/signup').send({ email: 'a@example.com' })).status).toBe(404);
    });

    it('happy: later app routes get their own bodies, parse errors and thrown errors untouched', async () => {
      const ak = await getDb().agentKey();
      const app = express();
      app.use(createAgentKeyRoutes(ak));
      app.post('/other/json', express.json(), (req: Request, res: Response) => {
        res.json({ got: req.body });
      });
      app.post('/other/text', express.text(), (req: Request, res: Response) => {
        res.json({ got: req.body });
      });
      app.get('/other/boom', () => {
        throw Object.assign(new Error('app failure'), { status: 418 });
      });
      app.use((err: Error & { status?: number; type?: string }, _req: Request, res: Response, _next: NextFunction) => {
        res.status(err.status ?? 500).json({ appHandler: true, type: err.type ?? null, message: err.message });
      });

      const bad = await request(app).post('/other/json').set('Content-Type', 'application/json').send('{oops');
      expect(bad.status).toBe(400);
      expect(bad.body).toMatchObject({ appHandler: true, type: 'entity.parse.failed' });

      const big = JSON.stringify({ big: 'y'.repeat(30_000) });
      const ok = await request(app).post('/other/json').set('Content-Type', 'application/json').send(big);
      expect(ok.status).toBe(200);
      expect(ok.body.got.big).toHaveLength(30_000);

      const text = await request(app).post('/other/text').set('Content-Type', 'text/plain').send('plain words');
      expect(text.body).toEqual({ got: 'plain words' });

      const boom = await request(app).get('/other/boom');
      expect(boom.status).toBe(418);
      expect(boom.body).toEqual({ appHandler: true, type: null, message: 'app failure' });
    });

    it("happy: an app-wide express.json() before the router keeps its own errors, and the routes still work", async () => {
      const ak = await getDb().agentKey();
      const app = express();
      app.use(express.json());
      app.use(createAgentKeyRoutes(ak, { signupScopes: ['proxy.chat'] }));
      app.use((err: Error & { status?: number; type?: string }, _req: Request, res: Response, _next: NextFunction) => {
        res.status(err.status ?? 500).json({ appHandler: true, type: err.type ?? null });
      });
      const signup = await request(app).post('/signup').send({ email: 'a@example.com', budget_cents: 10 });
      expect(signup.status).toBe(201);
      expect(await ak.validate(signup.body.key)).toMatchObject({ scopes: ['proxy.chat'], budgetCents: 10 });
      const bad = await request(app).post('/signup').set('Content-Type', 'application/json').send('{oops');
      expect(bad.body).toMatchObject({ appHandler: true, type: 'entity.parse.failed' });
    });

    it('happy: unrelated paths and other methods on the same paths fall through to the app', async () => {
      const ak = await getDb().agentKey();
      const app = express();
      app.use(createAgentKeyRoutes(ak));
      app.get('/signup', (_req: Request, res: Response) => {
        res.json({ page: 'signup form' });
      });
      app.put('/sdk-keys/:id', (req: Request, res: Response) => {
        res.json({ put: req.params.id });
      });
      app.get('/health', (_req: Request, res: Response) => {
        res.json({ ok: true });
      });
      app.use((_req: Request, res: Response) => {
        res.status(404).json({ appNotFound: true });
      });
      expect((await request(app).get('/health')).body).toEqual({ ok: true });
      expect((await request(app).get('/signup')).body).toEqual({ page: 'signup form' });
      expect((await request(app).put('/sdk-keys/12')).body).toEqual({ put: '12' });
      expect((await request(app).post('/sdk-keys/12')).body).toEqual({ appNotFound: true });
      expect((await request(app).get('/nowhere')).body).toEqual({ appNotFound: true });
      expect((await request(app).get('/sdk-keys')).body).toEqual({ appNotFound: true });
      expect((await request(app).delete('/sdk-keys/')).body).toEqual({ appNotFound: true });
      expect((await request(app).delete('/sdk-keys/1/extra')).body).toEqual({ appNotFound: true });
      expect(await countRows(getDb, ak)).toBe(0);
    });
  });

  describe('storage faults', () => {
    it('security: a pool that rejects -> every route answers 500 JSON without driver detail', async () => {
      const real = await getDb().agentKey();
      const { key } = await real.create({ accountId: 'acct_p' });
      const broken = new AgentKey({ pool: rejectingPool() as never, tableName: real.tableName });
      const app = routesApp(broken);
      // The signup handler fails in the store itself: 'Failed to create key'. The other routes fail
      // at the key check before their handlers run: 'auth_unavailable', as the package's middleware said.
      const responses: [request.Response, string][] = [
        [await request(app).post('/signup').send({ email: 'a@example.com' }), 'Failed to create key'],
        [await request(app).get('/sdk-keys/me').set(auth(key)), 'auth_unavailable'],
        [await request(app).post('/sdk-keys').set(auth(key)).send({}), 'auth_unavailable'],
        [await request(app).delete('/sdk-keys/1').set(auth(key)), 'auth_unavailable'],
      ];
      for (const [res, failure] of responses) {
        expectRouteError(res, 500, undefined, failure);
        expect(res.text).not.toMatch(/hunter2|ECONNREFUSED|10\.9\.8\.7/);
      }
    });

    it('error: a pool that never answers -> every route answers 503 storage_timeout, not a hang (timeoutMs)', async () => {
      const real = await getDb().agentKey();
      const { key } = await real.create({ accountId: 'acct_p' });
      const slow = new AgentKey({ pool: hangingPool() as never, tableName: real.tableName });
      const app = routesApp(slow, { timeoutMs: 200 });
      const responses: [request.Response, string][] = [
        [await request(app).post('/signup').send({ email: 'a@example.com' }).timeout(10_000), 'Failed to create key'],
        [await request(app).get('/sdk-keys/me').set(auth(key)).timeout(10_000), 'auth_unavailable'],
        [await request(app).post('/sdk-keys').set(auth(key)).send({}).timeout(10_000), 'auth_unavailable'],
        [await request(app).delete('/sdk-keys/1').set(auth(key)).timeout(10_000), 'auth_unavailable'],
      ];
      for (const [res, failure] of responses) expectRouteError(res, 503, 'storage_timeout', failure);
    });
  });

  describe('fuzz: no client mistake ever gets a 500', () => {
    const bodies = [
      '1', '"text"', 'true', 'null', '[]', '[1,2]', '{}', '{"a":{"b":{"c":[1,{"d":null}]}}}',
      '{"email":null,"budget_cents":null,"expires_in":null,"budget_period":null,"name":null,"scopes":null,"delegated_by":null}',
      '{"email":{},"budget_cents":{},"expires_in":[],"budget_period":{},"name":[],"scopes":{},"delegated_by":1}',
      '{"budget_cents":1e308}', '{"budget_cents":-0}', '{"budget_cents":0.00001}', '{"budget_cents":123456789012345678901234567890}',
      '{"expires_in":"9999999mo"}', '{"expires_in":" 1h "}', '{"scopes":["a","a","a"]}', `{"scopes":${JSON.stringify(Array.from({ length: 101 }, (_, i) => `s${i}`))}}`,
      '{"__proto__":{"admin":true},"constructor":{"prototype":{"x":1}}}', '{"name":"\\u0000"}', '{"name":"\\ud800"}', '{"email":"a@b.co\\u0000"}',
      '{"budgetCents":5,"budget_cents":"5"}', '{"scopes":[null]}', '{"scopes":[["a"]]}',
    ];

    const check = (res: request.Response, what: string) => {
      expect(res.status, what).toBeLessThan(500);
      if (res.status >= 400) expectRouteError(res, res.status);
    };

    it('security: POST /signup, POST /sdk-keys, GET /sdk-keys/me and DELETE /sdk-keys/:id with odd input', async () => {
      const ak = await getDb().agentKey();
      const caller = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d' });
      const app = routesApp(ak, { signupScopes: ['proxy.chat'], signupRateLimit: false });
      for (const raw of bodies) {
        check(await request(app).post('/signup').set('Content-Type', 'application/json').send(raw), `signup ${raw}`);
        check(await request(app).post('/sdk-keys').set(auth(caller.key)).set('Content-Type', 'application/json').send(raw), `sdk-keys ${raw}`);
      }
      for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin-9', 'application/octet-stream']) {
        check(await request(app).post('/signup').set('Content-Type', type).send('email=a@b.co'), `signup ${type}`);
        check(await request(app).post('/sdk-keys').set(auth(caller.key)).set('Content-Type', type).send('scopes=admin'), `sdk-keys ${type}`);
      }
      check(await request(app).post('/signup').set('Content-Type', 'application/json').set('Content-Encoding', 'bogus').send('{}'), 'signup bogus encoding');
      for (const header of ['Bearer', 'Bearer  ', 'Bearer a b', 'bEaReR ak_x', 'Token x', `Bearer ${'k'.repeat(8000)}`, 'Bearer \u00e9']) {
        check(await request(app).get('/sdk-keys/me').set('Authorization', header), `me ${header.slice(0, 20)}`);
      }
      for (const id of ['x', '-0', '00000000000000000001', '1'.repeat(40), '%00', '%E0%A4%A', 'NaN', 'Infinity', '1;DROP TABLE x', '%2F']) {
        check(await request(app).delete(`/sdk-keys/${id}`).set(auth(caller.key)), `delete ${id}`);
      }
      expect(await ak.validate(caller.key)).toMatchObject({ valid: true });
    });

    it('security: random JSON in every body field of POST /signup and POST /sdk-keys', async () => {
      const ak = await getDb().agentKey();
      const caller = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat', 'usage.read'], budgetCents: 100, expiresIn: '1d' });
      const app = routesApp(ak, { signupScopes: ['proxy.chat'], signupRateLimit: false });
      const field = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.string(), fc.constantFrom('1h', '7d', 'day', 'month', 'a@b.co', 'proxy.chat', 50, 0, -1));
      const body = fc.record(
        { email: field, name: field, scopes: field, budget_cents: field, budget_period: field, expires_in: field, delegated_by: field, budgetCents: field, expiresIn: field },
        { requiredKeys: [] },
      );
      await fc.assert(
        fc.asyncProperty(body, async (b) => {
          const raw = JSON.stringify(b);
          const signup = await request(app).post('/signup').set('Content-Type', 'application/json').send(raw);
          check(signup, `signup ${raw}`);
          if (signup.status === 201) {
            // Read with getKey: a $0 or already-expired signup key (both valid asks) no longer validates.
            const k = await ak.getKey(signup.body.id);
            expect(k).toMatchObject({ accountId: signup.body.accountId, parentId: null });
            expect(k!.scopes!.every((s) => s === 'proxy.chat')).toBe(true);
          }
          const child = await request(app).post('/sdk-keys').set(auth(caller.key)).set('Content-Type', 'application/json').send(raw);
          check(child, `sdk-keys ${raw}`);
          if (child.status === 201) {
            const c = (await ak.getKey(child.body.id))!;
            expect(c).toMatchObject({ accountId: 'acct_p', parentId: caller.id });
            expect(c.scopes!.every((s) => ['proxy.chat', 'usage.read'].includes(s))).toBe(true);
            expect(c.budgetCents).not.toBeNull();
            expect(c.budgetCents).toBeLessThanOrEqual(100);
            expect(c.expiresAt).not.toBeNull();
            expect(Date.parse(c.expiresAt as string)).toBeLessThanOrEqual(Date.parse(caller.expiresAt as string));
          }
        }),
        { numRuns: 40 },
      );
    });
  });
});
