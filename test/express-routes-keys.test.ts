import express, { type NextFunction, type Request, type Response } from 'express';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { createAgentKeyRoutes } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { auth, countRows, expectRouteError, routesApp } from './helpers/express-routes.js';

/**
 * createAgentKeyRoutes(ak, opts) on real Express 5 apps, on PostgreSQL and PGlite: POST
 * /sdk-keys (a child of the caller, never wider than it), DELETE /sdk-keys/:id (only
 * inside the caller's own tree), and the router mounted beside the rest of an app (its
 * parsers and error handlers untouched). Refusals come in the package's shape
 * (helpers/express-routes.ts).
 */

forEachDatabase((getDb) => {
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
        limitedBy: { kind: 'key', keyId: child.id, window: 'day' },
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
        limitedBy: { kind: 'ancestor', keyId: monthly.id, window: 'month' },
        budgetUsedCents: 0,
        budgetRemainingCents: 60,
      });
      expect(await ak.reserve(child.key, { costCents: 60 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'ancestor', keyId: monthly.id, window: 'month' },
        budgetUsedCents: 0,
        budgetRemainingCents: 60,
      });
      expect(await ak.trackUsage(child.key, { costCents: 40 })).toEqual({ success: true, budgetUsedCents: 40, budgetRemainingCents: 20 });
      // Day 3: nothing at all is left of the caller's month.
      await endDay();
      expect(await ak.trackUsage(child.key, { costCents: 0.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'ancestor', keyId: monthly.id, window: 'month' },
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

  describe('PATCH /sdk-keys/:id', () => {
    it("happy: a key changes a key under it (the package's snake_case body, camelCase too) and gets the key as changed; cascade narrows below it", async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acct_u', budgetCents: 100, scopes: ['proxy.chat', 'usage.read'] });
      const app = routesApp(ak);
      const child = (await request(app).post('/sdk-keys').set(auth(root.key)).send({ budget_cents: 80 })).body as { id: number; key: string };
      const grandchild = (await request(app).post('/sdk-keys').set(auth(child.key)).send({ budget_cents: 70 })).body as { id: number; key: string };
      const res = await request(app).patch(`/sdk-keys/${child.id}`).set(auth(root.key)).send({ budget_cents: 90, name: 'worker', scopes: ['usage.read'], cascade: true });
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject({ id: child.id, budgetCents: 90, name: 'worker', scopes: ['usage.read'] });
      expect(await ak.getKey(grandchild.id)).toMatchObject({ scopes: ['usage.read'], budgetCents: 70 });
      expect((await request(app).patch(`/sdk-keys/${child.id}`).set(auth(root.key)).send({ budgetCents: 60, cascade: true })).status).toBe(200);
      expect(await ak.getKey(grandchild.id)).toMatchObject({ budgetCents: 60 });
      expect(await ak.validate(child.key)).toMatchObject({ valid: true, budgetCents: 60, scopes: ['usage.read'] });
    });

    it('security: a key never changes itself, its parent, a sibling or another account\'s key, nor widens a key past its parent; nothing changes', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acct_u', budgetCents: 100 });
      const app = routesApp(ak);
      const mint = async (key: string) => (await request(app).post('/sdk-keys').set(auth(key)).send({ budget_cents: 10 })).body as { id: number; key: string };
      const child = await mint(root.key);
      const sibling = await mint(root.key);
      const grandchild = await mint(child.key);
      const stranger = await ak.create({ accountId: 'acct_other', budgetCents: 5 });
      // Their limits and names (using a key stamps its last use, which is no change).
      const state = () => Promise.all([root, child, sibling, grandchild, stranger].map(async (k) => {
        const { lastUsedAt: _, ...rest } = (await ak.getKey(k.id)) ?? {};
        return rest;
      }));
      const before = await state();
      for (const [caller, target] of [[root, root], [child, child], [child, root], [child, sibling], [grandchild, child]] as const) {
        const res = await request(app).patch(`/sdk-keys/${target.id}`).set(auth(caller.key)).send({ budget_cents: 1000 });
        expectRouteError(res, 403, 'key_outside_tree');
      }
      expectRouteError(await request(app).patch(`/sdk-keys/${stranger.id}`).set(auth(root.key)).send({ name: 'x' }), 404, 'not_found');
      expectRouteError(await request(app).patch(`/sdk-keys/${grandchild.id}`).set(auth(root.key)).send({ budget_cents: 1000 }), 403, 'budget_exceeds_parent');
      expectRouteError(await request(app).patch(`/sdk-keys/${child.id}`).set(auth(root.key)).send({ budget_cents: 5 }), 409, 'narrows_children');
      for (const body of [{}, { budget_cents: 'lots' }, { bogus: 1 }, { budget_period: 'year' }, { cascade: 'yes', name: 'x' }]) {
        expectRouteError(await request(app).patch(`/sdk-keys/${child.id}`).set(auth(root.key)).send(body), 400);
      }
      expectRouteError(await request(app).patch(`/sdk-keys/${child.id}`).send({ name: 'x' }), 401);
      expect(await state()).toEqual(before);
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

});
