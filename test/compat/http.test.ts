import express, { type Request, type Response } from 'express';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { AgentKey, agentKeyMiddleware, createAgentKeyRoutes, type RouteOptions } from '../../src/index.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';
import { rejectingPool } from '../helpers/faults.js';
import { expectPackageError } from '../helpers/http.js';
import { packageKey, packageTableSql } from '../helpers/package.js';

/**
 * The package's HTTP surfaces answer as the package did: its clients read `body.error` as
 * a string and branch on the status.
 */

async function packageAk(db: TestDb): Promise<AgentKey> {
  const table = db.freshTable();
  await db.query(packageTableSql(table));
  const ak = new AgentKey({ pool: db.pool, tableName: table, keyPrefix: 'test_', validScopes: ['read', 'write', 'admin', 'usage.read', 'proxy.chat'] });
  await ak.migrate();
  return ak;
}

function protectedApp(ak: AgentKey) {
  const app = express();
  app.get('/api/usage', agentKeyMiddleware(ak, { scope: 'usage.read' }), (req: Request, res: Response) => {
    res.json({ ok: true, agentKey: (req as Request & { agentKey?: unknown }).agentKey });
  });
  app.get('/api/free', agentKeyMiddleware(ak), (_req: Request, res: Response) => {
    res.json({ ok: true });
  });
  return app;
}

function routesApp(ak: AgentKey, options?: RouteOptions) {
  const app = express();
  app.use(express.json());
  app.use(createAgentKeyRoutes(ak, options));
  return app;
}

const auth = (key: string) => ({ Authorization: `Bearer ${key}` });

forEachDatabase((getDb) => {
  describe('agentKeyMiddleware', () => {
    it("error: 401 'Missing API key', 401 with the reason for invalid, expired and revoked keys", async () => {
      const db = getDb();
      const ak = await packageAk(db);
      const app = protectedApp(ak);
      expectPackageError(await request(app).get('/api/free'), 401, 'Missing API key', 'missing_key');
      expectPackageError(await request(app).get('/api/free').set(auth('test_fakekeythatdoesnotexist')), 401, 'invalid', 'invalid_key');
      expectPackageError(await request(app).get('/api/free').set(auth(packageKey(48, 'test_').raw)), 401, 'invalid');
      const expired = await ak.create({ accountId: 'a', expiresIn: '0h' });
      expectPackageError(await request(app).get('/api/free').set(auth(expired.key)), 401, 'expired', 'key_expired');
      const revoked = await ak.create({ accountId: 'a' });
      await ak.revoke(revoked.id);
      expectPackageError(await request(app).get('/api/free').set(auth(revoked.key)), 401, 'revoked', 'key_revoked');
    });

    it("error: 429 'budget_exceeded' for a key with nothing left, its own or its parent's; 403 'insufficient_scope' with required and available", async () => {
      const db = getDb();
      const ak = await packageAk(db);
      const app = protectedApp(ak);
      const k = await ak.create({ accountId: 'a', scopes: ['proxy.chat'], budgetCents: 10 });
      const forbidden = await request(app).get('/api/usage').set(auth(k.key));
      expectPackageError(forbidden, 403, 'insufficient_scope', 'insufficient_scope');
      expect(forbidden.body).toMatchObject({ required: 'usage.read', available: ['proxy.chat'] });

      await ak.trackUsage(k.key, { costCents: 10 });
      expectPackageError(await request(app).get('/api/free').set(auth(k.key)), 429, 'budget_exceeded', 'budget_exceeded');
      // The budget is checked before the scope, as in the package.
      expectPackageError(await request(app).get('/api/usage').set(auth(k.key)), 429, 'budget_exceeded');

      // The known gap: a child with room whose parent is spent.
      const parent = await ak.create({ accountId: 'b', scopes: ['usage.read'], budgetCents: 100 });
      const spender = await ak.create({ accountId: 'b', parentId: parent.id, budgetCents: 100 });
      const child = await ak.create({ accountId: 'b', parentId: parent.id, budgetCents: 60 });
      expect((await request(app).get('/api/usage').set(auth(child.key))).status).toBe(200);
      await ak.trackUsage(spender.key, { costCents: 100 });
      expectPackageError(await request(app).get('/api/usage').set(auth(child.key)), 429, 'budget_exceeded');
    });

    it("security: a store that fails -> 500 'auth_unavailable', with no driver detail", async () => {
      const broken = new AgentKey({ pool: rejectingPool() as never, tableName: 'sdk_api_keys' });
      const res = await request(protectedApp(broken)).get('/api/free').set(auth(packageKey(48).raw));
      expectPackageError(res, 500, 'auth_unavailable');
    });

    it('happy: a valid key reaches the handler with the package fields on req.agentKey', async () => {
      const ak = await packageAk(getDb());
      const k = await ak.create({ accountId: 'acct_1', userId: 'u_1', scopes: ['usage.read'], budgetCents: 50 });
      const res = await request(protectedApp(ak)).get('/api/usage').set(auth(k.key));
      expect(res.status).toBe(200);
      expect(res.body.agentKey).toMatchObject({ valid: true, id: k.id, accountId: 'acct_1', userId: 'u_1', name: 'default', budgetRemainingCents: 50 });
    });
  });

  describe('createAgentKeyRoutes', () => {
    it("error: /signup needs an email by default (400 'Valid email is required'), and refuses scopes outside signupScopes, naming them and the allowed ones", async () => {
      const ak = await packageAk(getDb());
      const app = routesApp(ak, { signupScopes: ['proxy.chat', 'usage.read'] });
      expectPackageError(await request(app).post('/signup').send({}), 400, 'Valid email is required', 'email_required');
      expectPackageError(await request(app).post('/signup').send({ email: 'not-an-email' }), 400, 'Valid email is required', 'invalid_email');
      const res = await request(app).post('/signup').send({ email: 'a@example.com', scopes: ['proxy.chat', 'admin', 'billing.write'] });
      expectPackageError(res, 400, 'Scopes not allowed on signup: admin, billing.write', 'scope_not_allowed');
      expect(res.body.allowed).toEqual(['proxy.chat', 'usage.read']);
      expect(await ak.listKeys({})).toEqual([]);
    });

    it("happy: /signup grants the asked subset of signupScopes (or all of them), and a key that lasts '24h' unless expires_in says otherwise", async () => {
      const ak = await packageAk(getDb());
      const app = routesApp(ak, { signupScopes: ['proxy.chat', 'usage.read'] });
      const before = Date.now();
      const subset = await request(app).post('/signup').send({ email: 'a@example.com', scopes: ['usage.read'] });
      expect(subset.status).toBe(201);
      expect(subset.body).toMatchObject({ key: expect.stringMatching(/^test_/), id: expect.any(Number), scopes: ['usage.read'], budgetCents: null });
      const expires = new Date(subset.body.expiresAt).getTime();
      expect(expires).toBeGreaterThanOrEqual(before + 24 * 3_600_000 - 1_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 24 * 3_600_000 + 1_000);
      const all = await request(app).post('/signup').send({ email: 'b@example.com', expires_in: '1h' });
      expect(all.body.scopes).toEqual(['proxy.chat', 'usage.read']);
      expect(new Date(all.body.expiresAt).getTime()).toBeLessThanOrEqual(Date.now() + 3_600_000 + 1_000);
      // Without signupScopes the key is scopeless, whatever the body asks.
      const bare = routesApp(ak, { requireEmailForSignup: false });
      expect((await request(bare).post('/signup').send({ scopes: ['admin'] })).body.scopes).toEqual([]);
    });

    it('security: POST /sdk-keys refuses with 403 a budget above the caller\'s or none when the caller has one, and an expiry after the caller\'s or none when it has one', async () => {
      const ak = await packageAk(getDb());
      const app = routesApp(ak);
      const caller = await ak.create({ accountId: 'acct_c', scopes: ['read'], budgetCents: 100, expiresIn: '2d' });
      const post = (body: object) => request(app).post('/sdk-keys').set(auth(caller.key)).send(body);
      expectPackageError(await post({ expires_in: '1d' }), 403, /budget_cents is required/, 'budget_exceeds_parent');
      expectPackageError(await post({ budget_cents: 101, expires_in: '1d' }), 403, /may not exceed/, 'budget_exceeds_parent');
      expectPackageError(await post({ budget_cents: 50 }), 403, /expires_in is required/, 'expiry_exceeds_parent');
      expectPackageError(await post({ budget_cents: 50, expires_in: '3d' }), 403, /may not reach past/, 'expiry_exceeds_parent');
      expectPackageError(await post({ budget_cents: 50, expires_in: '1d', scopes: ['write'] }), 403, /scopes it holds/, 'scope_not_allowed');
      expect(await ak.listKeys({ accountId: 'acct_c' })).toHaveLength(1);
      const ok = await post({ budget_cents: 50, expires_in: '1d' });
      expect(ok.status).toBe(201);
      expect(ok.body).toMatchObject({ scopes: ['read'], budgetCents: 50, budgetPeriod: null, accountId: 'acct_c' });
      // A caller without a budget or an expiry may make children without them.
      const open = await ak.create({ accountId: 'acct_o', scopes: ['read'] });
      expect((await request(app).post('/sdk-keys').set(auth(open.key)).send({})).status).toBe(201);
    });

    it('happy: GET /sdk-keys/me and DELETE /sdk-keys/:id answer as the package did; another account\'s key reads as 404', async () => {
      const ak = await packageAk(getDb());
      const app = routesApp(ak);
      const owner = await ak.create({ accountId: 'acct_self', scopes: ['read'] });
      const own = await ak.create({ accountId: 'acct_self', scopes: ['read'] });
      const victim = await ak.create({ accountId: 'acct_B', scopes: ['write'] });
      const me = await request(app).get('/sdk-keys/me').set(auth(owner.key));
      expect(me.body).toMatchObject({ valid: true, id: owner.id, accountId: 'acct_self', name: 'default' });
      expectPackageError(await request(app).delete(`/sdk-keys/${victim.id}`).set(auth(owner.key)), 404, /belongs to your account/, 'not_found');
      expect(await ak.validate(victim.key)).toMatchObject({ valid: true });
      const res = await request(app).delete(`/sdk-keys/${own.id}`).set(auth(owner.key));
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ revoked: true });
      expectPackageError(await request(app).get('/sdk-keys/me'), 401, 'Missing API key');
      // Mounted without the app's own JSON parser, the routes parse (and refuse) bodies themselves.
      const bare = express();
      bare.use(createAgentKeyRoutes(ak));
      const bad = await request(bare).post('/sdk-keys').set(auth(owner.key)).set('content-type', 'application/json').send('{bad');
      expectPackageError(bad, 400, 'The request body is not valid JSON.', 'invalid_json');
    });
  });
});
