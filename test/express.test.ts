import { createRequire } from 'node:module';
import express, { type NextFunction, type Request, type Response } from 'express';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import * as root from '../src/index.js';
import { AgentKey, AgentKeyError, agentKeyMiddleware, createAgentKeyRoutes } from '../src/index.js';
import * as expressEntry from '../src/http/express.js';
import { forEachDatabase } from './helpers/databases.js';
import { hangingPool, rejectingPool, throwingPool } from './helpers/faults.js';
import { expectPackageError } from './helpers/http.js';

/**
 * agentKeyMiddleware(ak, { scope }) on real Express 5 apps, on PostgreSQL and PGlite.
 * Refusals come in the @katrinalaszlo/agentkey package's shape: `{ error: '<string>',
 * code, message }`. The self-serve routes are in express-routes.test.ts.
 */

/**
 * An app with one protected route; `reached` counts the requests the protected handler
 * saw, so every refusal can also show the handler never ran.
 */
function guardedApp(ak: AgentKey, options: Parameters<typeof agentKeyMiddleware>[1] = { scope: 'usage.read' }) {
  const app = express();
  const state = { reached: 0 };
  app.get('/api/usage', agentKeyMiddleware(ak, options), (req: Request, res: Response) => {
    state.reached += 1;
    res.json({ agentKey: (req as Request & { agentKey?: unknown }).agentKey, locals: res.locals.agentKey });
  });
  return { app, state };
}

const bearer = (key: string) => `Bearer ${key}`;

/** Changes one character of the key's random part. */
function mistype(key: string): string {
  const i = 10;
  const swapped = key[i] === 'a' ? 'b' : 'a';
  return key.slice(0, i) + swapped + key.slice(i + 1);
}

describe('agentKeyMiddleware: the subpath export', () => {
  it('happy: src/http/express.ts exports the same functions as the package root', () => {
    expect(expressEntry.agentKeyMiddleware).toBe(agentKeyMiddleware);
    expect(expressEntry.agentKeyMiddleware).toBe(root.agentKeyMiddleware);
    expect(expressEntry.createAgentKeyRoutes).toBe(createAgentKeyRoutes);
    expect(typeof agentKeyMiddleware).toBe('function');
  });

  it("happy: the built package's 'agentkey/express' subpath (dist/, built by npm install) exports the same functions, in ESM and CommonJS", async () => {
    // Specifiers in variables: the package imports itself by name (resolved by Node's
    // self-reference through package.json "exports"), which tsc does not type.
    const [sub, rootName] = ['agentkey/express', 'agentkey'];
    const esmSub = (await import(sub)) as typeof expressEntry;
    const esmRoot = (await import(rootName)) as typeof expressEntry;
    expect(esmSub.agentKeyMiddleware).toBe(esmRoot.agentKeyMiddleware);
    expect(esmSub.createAgentKeyRoutes).toBe(esmRoot.createAgentKeyRoutes);
    const require = createRequire(import.meta.url);
    const cjsSub = require('agentkey/express') as typeof expressEntry;
    expect(typeof cjsSub.agentKeyMiddleware).toBe('function');
    expect(typeof cjsSub.createAgentKeyRoutes).toBe('function');
  });
});

forEachDatabase((getDb) => {
  describe('agentKeyMiddleware: happy paths', () => {
    it('happy: a valid key with the scope passes, and req.agentKey / res.locals.agentKey hold its metadata', async () => {
      const ak = await getDb().agentKey();
      const created = await ak.create({ accountId: 'acct_1', scopes: ['usage.read', 'proxy.chat'], budgetCents: 5000, budgetPeriod: 'month', expiresIn: '7d', delegatedBy: 'user_456', name: 'sales-agent' });
      const { app, state } = guardedApp(ak);
      const res = await request(app).get('/api/usage').set('Authorization', bearer(created.key));
      expect(res.status).toBe(200);
      expect(state.reached).toBe(1);
      expect(res.body.agentKey).toMatchObject({
        valid: true,
        id: created.id,
        keyId: created.id,
        userId: null,
        accountId: 'acct_1',
        name: 'sales-agent',
        scopes: ['usage.read', 'proxy.chat'],
        budgetCents: 5000,
        budgetUsedCents: 0,
        budgetRemainingCents: 5000,
        budgetPeriod: 'month',
        expiresAt: created.expiresAt,
        delegatedBy: 'user_456',
      });
      expect(res.body.locals).toEqual(res.body.agentKey);
      expect(JSON.stringify(res.body)).not.toContain(created.key);
    });

    it('happy: the key is accepted as "Authorization: Bearer", with any case of "bearer", and as "X-API-Key"', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const { app, state } = guardedApp(ak);
      expect((await request(app).get('/api/usage').set('Authorization', `Bearer ${key}`)).status).toBe(200);
      expect((await request(app).get('/api/usage').set('Authorization', `bearer ${key}`)).status).toBe(200);
      expect((await request(app).get('/api/usage').set('X-API-Key', key)).status).toBe(200);
      expect(state.reached).toBe(3);
    });

    it('happy: without a scope option any valid key passes, even a scopeless one', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: [] });
      const { app } = guardedApp(ak, {});
      const res = await request(app).get('/api/usage').set('Authorization', bearer(key));
      expect(res.status).toBe(200);
      expect(res.body.agentKey.scopes).toEqual([]);
    });

    it('happy: an unlimited (null-scopes) key and an "admin" key pass any scope check', async () => {
      const ak = await getDb().agentKey();
      const unlimited = await ak.create({ accountId: 'acct_1', scopes: null });
      const admin = await ak.create({ accountId: 'acct_1', scopes: ['admin'] });
      const { app } = guardedApp(ak, { scope: 'billing.write' });
      expect((await request(app).get('/api/usage').set('Authorization', bearer(unlimited.key))).status).toBe(200);
      expect((await request(app).get('/api/usage').set('Authorization', bearer(admin.key))).status).toBe(200);
    });

    it('happy: a partly spent budget and an unlimited budget both pass', async () => {
      const ak = await getDb().agentKey();
      const partly = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], budgetCents: 100 });
      expect(await ak.trackUsage(partly.key, { costCents: 99.9999 })).toMatchObject({ success: true });
      const unlimited = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], budgetCents: null });
      expect(await ak.trackUsage(unlimited.key, { costCents: 1_000_000 })).toMatchObject({ success: true });
      const { app } = guardedApp(ak);
      const res = await request(app).get('/api/usage').set('Authorization', bearer(partly.key));
      expect(res.status).toBe(200);
      expect(res.body.agentKey.budgetRemainingCents).toBe(0.0001);
      expect((await request(app).get('/api/usage').set('Authorization', bearer(unlimited.key))).status).toBe(200);
    });

    it('happy: the CommonJS build of agentkey/express works with an AgentKey from the ESM build', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const cjs = createRequire(import.meta.url)('agentkey/express') as typeof expressEntry;
      const app = express();
      app.get('/api/usage', cjs.agentKeyMiddleware(ak, { scope: 'usage.read' }), (_req: Request, res: Response) => {
        res.json({ ok: true });
      });
      app.use(cjs.createAgentKeyRoutes(ak, { signupScopes: ['usage.read'] }));
      expect((await request(app).get('/api/usage').set('Authorization', bearer(key))).status).toBe(200);
      expectPackageError(await request(app).get('/api/usage'), 401, 'Missing API key', 'missing_key');
      // As in the package, signup needs an email by default (requireEmailForSignup).
      expectPackageError(await request(app).post('/signup').send({}), 400, 'Valid email is required', 'email_required');
      const signup = await request(app).post('/signup').send({ email: 'agent@example.com' });
      expect(signup.status).toBe(201);
      expect(await ak.validate(signup.body.key)).toMatchObject({ valid: true, scopes: ['usage.read'] });
    });

    it('happy: errors thrown by the protected handler still reach the app, untouched', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1' });
      const app = express();
      app.get('/boom', agentKeyMiddleware(ak), () => {
        throw Object.assign(new Error('app failure'), { status: 418 });
      });
      app.use((err: Error & { status?: number }, _req: Request, res: Response, _next: NextFunction) => {
        res.status(err.status ?? 500).json({ app: err.message });
      });
      const res = await request(app).get('/boom').set('Authorization', bearer(key));
      expect(res.status).toBe(418);
      expect(res.body).toEqual({ app: 'app failure' });
    });
  });

  describe('agentKeyMiddleware: refusals', () => {
    it('error: no key -> 401 missing_key, and the handler never runs', async () => {
      const ak = await getDb().agentKey();
      const { app, state } = guardedApp(ak);
      expectPackageError(await request(app).get('/api/usage'), 401, 'Missing API key', 'missing_key');
      expectPackageError(await request(app).get('/api/usage').set('Authorization', 'Bearer '), 401, 'Missing API key', 'missing_key');
      expectPackageError(await request(app).get('/api/usage').set('X-API-Key', ''), 401, 'Missing API key', 'missing_key');
      expect(state.reached).toBe(0);
    });

    it('error: a garbage key -> 401', async () => {
      const ak = await getDb().agentKey();
      const { app, state } = guardedApp(ak);
      for (const garbage of ['hello', 'ak_', 'ak_short', `ak_${'z'.repeat(49)}`, 'x'.repeat(4000), 'ak_../../etc/passwd', "ak_' OR 1=1 --"]) {
        const res = await request(app).get('/api/usage').set('X-API-Key', garbage);
        expect(res.status, garbage.slice(0, 20)).toBe(401);
        expectPackageError(res, 401, 'invalid', 'invalid_key');
      }
      expectPackageError(await request(app).get('/api/usage').set('Authorization', 'Bearer not-a-key'), 401, 'invalid', 'invalid_key');
      expect(state.reached).toBe(0);
    });

    it('error: a mistyped or truncated key -> 401 invalid_key', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const { app, state } = guardedApp(ak);
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(mistype(key))), 401, 'invalid', 'invalid_key');
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(key.slice(0, -1))), 401, 'invalid', 'invalid_key');
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(key + 'x')), 401, 'invalid', 'invalid_key');
      expect(state.reached).toBe(0);
    });

    it('error: an expired key -> 401 key_expired', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], expiresIn: '1h' });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 minute' WHERE id = $1`, [id]);
      const { app, state } = guardedApp(ak);
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(key)), 401, 'expired', 'key_expired');
      expect(state.reached).toBe(0);
    });

    it('error: a revoked key -> 401 key_revoked', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      expect(await ak.revoke(id)).toBe(true);
      const { app, state } = guardedApp(ak);
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(key)), 401, 'revoked', 'key_revoked');
      expect(state.reached).toBe(0);
    });

    it('error: a key without the scope -> 403 insufficient_scope naming the required scope', async () => {
      const ak = await getDb().agentKey();
      const other = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'] });
      const none = await ak.create({ accountId: 'acct_1', scopes: [] });
      const { app, state } = guardedApp(ak, { scope: 'usage.read' });
      for (const [key, scopes] of [[other.key, ['proxy.chat']], [none.key, []]] as const) {
        const res = await request(app).get('/api/usage').set('Authorization', bearer(key));
        expectPackageError(res, 403, 'insufficient_scope', 'insufficient_scope');
        expect(res.body.required).toBe('usage.read');
        expect(res.body.available).toEqual(scopes);
        expect(res.body.message).toContain('usage.read');
      }
      expect(state.reached).toBe(0);
    });

    it('error: a spent budget -> 429 budget_exceeded', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], budgetCents: 10 });
      const { app, state } = guardedApp(ak);
      expect((await request(app).get('/api/usage').set('Authorization', bearer(key))).status).toBe(200);
      expect(await ak.trackUsage(key, { costCents: 10 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(key)), 429, 'budget_exceeded', 'budget_exceeded');
      expect(state.reached).toBe(1);
    });

    it('error: a $0 key has nothing to spend -> 429 budget_exceeded at the key check (as in the package), and its charges are refused', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], budgetCents: 0 });
      const { app, state } = guardedApp(ak);
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(key)), 429, 'budget_exceeded', 'budget_exceeded');
      expect(state.reached).toBe(0);
      expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });

    it('security: a spent key is refused for its budget before the scope check (as in the package), and an invalid key never reveals either', async () => {
      const ak = await getDb().agentKey();
      const spentWrongScope = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 1 });
      const { app, state } = guardedApp(ak);
      // Before it is spent, the same key is refused for its scope.
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(spentWrongScope.key)), 403, 'insufficient_scope', 'insufficient_scope');
      await ak.trackUsage(spentWrongScope.key, { costCents: 1 });
      const spent = await request(app).get('/api/usage').set('Authorization', bearer(spentWrongScope.key));
      expectPackageError(spent, 429, 'budget_exceeded', 'budget_exceeded');
      expect(spent.body.required).toBeUndefined();
      expect(spent.body.available).toBeUndefined();
      const res = await request(app).get('/api/usage').set('Authorization', bearer(mistype(spentWrongScope.key)));
      expectPackageError(res, 401, 'invalid', 'invalid_key');
      expect(res.body.required).toBeUndefined();
      expect(res.body.available).toBeUndefined();
      expect(state.reached).toBe(0);
    });

    it('security: an Authorization header of another scheme is not taken as a key', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const { app, state } = guardedApp(ak);
      const basic = `Basic ${Buffer.from(`user:${key}`).toString('base64')}`;
      expectPackageError(await request(app).get('/api/usage').set('Authorization', basic), 401, 'Missing API key', 'missing_key');
      expectPackageError(await request(app).get('/api/usage').set('Authorization', key), 401, 'Missing API key', 'missing_key');
      expect((await request(app).get(`/api/usage?api_key=${key}`)).status).toBe(401);
      expect(state.reached).toBe(0);
    });
  });

  describe('agentKeyMiddleware: storage faults fail closed', () => {
    it('security: a pool that rejects -> 500 JSON, no driver detail leaked, handler never runs', async () => {
      const real = await getDb().agentKey();
      const { key } = await real.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      for (const pool of [rejectingPool(), throwingPool()]) {
        const broken = new AgentKey({ pool: pool as never, tableName: real.tableName });
        const { app, state } = guardedApp(broken);
        const res = await request(app).get('/api/usage').set('Authorization', bearer(key));
        expect(res.status).toBe(500);
        expectPackageError(res, 500, 'auth_unavailable');
        expect(res.text).not.toMatch(/hunter2|ECONNREFUSED|10\.9\.8\.7|TypeError|reading/);
        expect(state.reached).toBe(0);
      }
    });

    it('error: a pool that never answers -> 503 storage_timeout after timeoutMs, not a hang', async () => {
      const real = await getDb().agentKey();
      const { key } = await real.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const broken = new AgentKey({ pool: hangingPool() as never, tableName: real.tableName });
      const { app, state } = guardedApp(broken, { scope: 'usage.read', timeoutMs: 200 });
      const res = await request(app).get('/api/usage').set('Authorization', bearer(key)).timeout(10_000);
      expectPackageError(res, 503, 'auth_unavailable', 'storage_timeout');
      expect(state.reached).toBe(0);
    });

    it('security: a malformed key is refused with 401 before any query, even when the pool is down', async () => {
      const real = await getDb().agentKey();
      const { key } = await real.create({ accountId: 'acct_1', scopes: ['usage.read'] });
      const broken = new AgentKey({ pool: rejectingPool() as never, tableName: real.tableName });
      const { app } = guardedApp(broken);
      expectPackageError(await request(app).get('/api/usage').set('Authorization', bearer(mistype(key))), 401, 'invalid', 'invalid_key');
      expectPackageError(await request(app).get('/api/usage'), 401, 'Missing API key', 'missing_key');
    });
  });
});

describe('agentKeyMiddleware: options are checked when the middleware is built', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });

  it('error: bad options throw an AgentKeyError at construction', () => {
    const bad: unknown[] = [
      { scope: 5 },
      { scope: '' },
      { scope: ['usage.read'] },
      { timeoutMs: -1 },
      { timeoutMs: 0 },
      { timeoutMs: 1.5 },
      { timeoutMs: '200' },
      { timeoutMs: Number.NaN },
      'usage.read',
      [],
    ];
    for (const options of bad) {
      expect(() => agentKeyMiddleware(ak, options as never), JSON.stringify(options)).toThrow(AgentKeyError);
    }
  });

  it('security: a misspelt option (e.g. "scopes") throws instead of silently dropping the scope check', () => {
    expect(() => agentKeyMiddleware(ak, { scopes: 'admin' } as never)).toThrow(AgentKeyError);
    expect(() => agentKeyMiddleware(ak, { requiredScope: 'admin' } as never)).toThrow(AgentKeyError);
  });

  it('error: something that is not an AgentKey throws at construction', () => {
    for (const notAk of [undefined, null, {}, { validate: 1 }]) {
      expect(() => agentKeyMiddleware(notAk as never, { scope: 'x' })).toThrow(AgentKeyError);
      expect(() => createAgentKeyRoutes(notAk as never)).toThrow(AgentKeyError);
    }
  });

  it('happy: good options build a middleware', () => {
    expect(typeof agentKeyMiddleware(ak)).toBe('function');
    expect(typeof agentKeyMiddleware(ak, { scope: 'usage.read', timeoutMs: 200 })).toBe('function');
    expect(typeof agentKeyMiddleware(ak, undefined)).toBe('function');
  });
});
