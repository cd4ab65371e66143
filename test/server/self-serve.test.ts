import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { ADMIN, countKeys, expectError, expectSelfServeError, onDatabase, snapshot } from '../helpers/service.js';

/**
 * The self-serve routes mounted in the service (the @katrinalaszlo/agentkey package's
 * /signup and /sdk-keys), on PostgreSQL and PGlite, in the package's error shape.
 */

forEachDatabase((getDb) => {
  const { setup } = onDatabase(getDb);

  describe('self-serve routes', () => {
    it('security: without the selfServe option none of them exists (404) and nothing is created', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a' });
      expectError(await svc.send('POST', '/signup', { json: { email: 'a@example.com' } }), 404, 'not_found');
      expectError(await svc.send('GET', '/sdk-keys/me', { bearer: k.key }), 404, 'not_found');
      expectError(await svc.send('POST', '/sdk-keys', { bearer: k.key, json: {} }), 404, 'not_found');
      expectError(await svc.send('DELETE', `/sdk-keys/${k.id}`, { bearer: k.key }), 404, 'not_found');
      expect(await countKeys(db, ak)).toBe(1);
      expect((await ak.getKey(k.id))?.status).toBe('active');
    });

    it('happy: signup, me, a child key and revoking it, through the one service', async () => {
      const { ak, svc } = await setup({ selfServe: { signupScopes: ['proxy.chat'], signupRateLimit: false } });
      const signup = await svc.send('POST', '/signup', { json: { email: 'a@example.com', budget_cents: 50 } });
      expect(signup.status).toBe(201);
      expect(signup.body).toMatchObject({ key: expect.stringMatching(/^ak_/), id: expect.any(Number), accountId: expect.stringMatching(/^acct_/), scopes: ['proxy.chat'] });
      expect(await ak.getKey(signup.body.id)).toMatchObject({ accountId: signup.body.accountId, scopes: ['proxy.chat'], budgetCents: 50 });
      // As in the package: a signup key lasts 24 hours unless the body says otherwise.
      const lasts = Date.parse(signup.body.expiresAt) - Date.now();
      expect(lasts).toBeGreaterThan(23 * 3_600_000);
      expect(lasts).toBeLessThanOrEqual(24 * 3_600_000);
      // As in the package, signup needs an email by default.
      expectSelfServeError(await svc.send('POST', '/signup'), 400, 'Valid email is required', 'email_required');
      expect((await svc.send('POST', '/signup', { json: { email: 'b@example.com' } })).status).toBe(201);

      const me = await svc.send('GET', '/sdk-keys/me', { bearer: signup.body.key });
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ valid: true, keyId: signup.body.id, budgetCents: 50 });

      // The caller expires, so its child must too, within the caller's expiry.
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: signup.body.key, json: { name: 'child', budget_cents: 10 } }), 403, /\S/, 'expiry_exceeds_parent');
      const child = await svc.send('POST', '/sdk-keys', { bearer: signup.body.key, json: { name: 'child', budget_cents: 10, expires_in: '1h' } });
      expect(child.status, child.text).toBe(201);
      expect(await ak.getKey(child.body.id)).toMatchObject({ parentId: signup.body.id, accountId: signup.body.accountId, budgetCents: 10, name: 'child' });

      // PATCH changes a key under the caller, never the caller itself.
      const patched = await svc.send('PATCH', `/sdk-keys/${child.body.id}`, { bearer: signup.body.key, json: { budget_cents: 20, name: 'worker' } });
      expect(patched.status, patched.text).toBe(200);
      expect(patched.body).toMatchObject({ id: child.body.id, budgetCents: 20, name: 'worker' });
      expectSelfServeError(await svc.send('PATCH', `/sdk-keys/${signup.body.id}`, { bearer: signup.body.key, json: { budget_cents: 5000 } }), 403, /may change only the keys under it/, 'key_outside_tree');
      expect(await ak.getKey(signup.body.id)).toMatchObject({ budgetCents: 50 });

      const del = await svc.send('DELETE', `/sdk-keys/${child.body.id}`, { bearer: signup.body.key });
      expect(del.status).toBe(200);
      expect(del.body).toEqual({ revoked: true, id: child.body.id });
      expect((await ak.getKey(child.body.id))?.status).toBe('revoked');
      // The admin API sees what the self-serve routes did.
      expect((await svc.admin('GET', `/v1/keys?accountId=${signup.body.accountId}`)).body.keys.map((k: { id: number }) => k.id)).toEqual([signup.body.id]);
    });

    it("security: DELETE /sdk-keys/:id with another account's key id -> 404 and that key stays active; bad ids -> 400; the admin key is no agent key", async () => {
      const { ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const caller = await ak.create({ accountId: 'acct_p', scopes: ['admin'] });
      const victim = await ak.create({ accountId: 'acct_victim' });
      const victimChild = await ak.create({ accountId: 'acct_victim', parentId: victim.id });
      const before = await snapshot(ak);
      // The package's shape: codes the package had no string for show their message as `error`.
      const notFound = 'No active key with this id belongs to your account.';
      for (const id of [victim.id, victimChild.id]) {
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { bearer: caller.key }), 404, notFound, 'not_found');
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { headers: { 'x-api-key': caller.key } }), 404, notFound, 'not_found');
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { bearer: ADMIN }), 401, 'invalid', 'invalid_key');
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`), 401, 'Missing API key', 'missing_key');
      }
      for (const id of ['abc', '0', '-1', '1.5', '1e3']) expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { bearer: caller.key }), 400, /\S/);
      expectSelfServeError(await svc.send('DELETE', '/sdk-keys/424242', { bearer: caller.key }), 404, notFound, 'not_found');
      expectSelfServeError(await svc.send('GET', '/sdk-keys/me', { bearer: ADMIN }), 401, 'invalid', 'invalid_key');
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: ADMIN, json: {} }), 401, 'invalid', 'invalid_key');
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.validate(victim.key)).toMatchObject({ valid: true, accountId: 'acct_victim' });
    });

    it('error: malformed JSON -> 400 invalid_json, a huge body -> 413, a non-JSON body -> 415; no key is created', async () => {
      const { db, ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const caller = await ak.create({ accountId: 'acct_p' });
      // Every answer of a self-serve route is in the package's shape, whichever step refuses the body.
      const notJson = 'The request body is not valid JSON.';
      expectSelfServeError(await svc.send('POST', '/signup', { raw: '{"email":' }), 400, notJson, 'invalid_json');
      expectSelfServeError(await svc.send('POST', '/signup', { raw: '[]' }), 400, /\S/);
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: caller.key, raw: '{"scopes":[' }), 400, notJson, 'invalid_json');
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: caller.key, json: { budget_cents: '5 cents' } }), 400, /\S/, 'invalid_budget');
      const hugeSignup = await svc.send('POST', '/signup', { json: { email: 'a@example.com', name: 'x'.repeat(70_000) } });
      const formSignup = await svc.send('POST', '/signup', { raw: 'email=a@b.co', type: 'application/x-www-form-urlencoded' });
      const hugeChild = await svc.send('POST', '/sdk-keys', { bearer: caller.key, json: { pad: 'x'.repeat(70_000) } });
      expect(await countKeys(db, ak)).toBe(1);
      // The body limit and the JSON check refuse before the route runs: their answers too are the package's shape.
      expectSelfServeError(hugeSignup, 413, /\S/, 'body_too_large');
      expectSelfServeError(formSignup, 415, /\S/, 'unsupported_media_type');
      expectSelfServeError(hugeChild, 413, /\S/, 'body_too_large');
    });

    it('error: a wrong method on a self-serve path -> 405 method_not_allowed with Allow, and an unknown path under them -> 404, both in the package\'s shape', async () => {
      const { ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const caller = await ak.create({ accountId: 'acct_p' });
      const cases: [string, string, string][] = [
        ['GET', '/signup', 'POST'],
        ['PUT', '/sdk-keys', 'POST'],
        ['POST', '/sdk-keys/me', 'DELETE, GET, HEAD, PATCH'],
        ['GET', `/sdk-keys/${caller.id}`, 'DELETE, PATCH'],
      ];
      for (const [method, path, allow] of cases) {
        const res = await svc.send(method, path, { bearer: caller.key });
        expectSelfServeError(res, 405, /\S/, 'method_not_allowed');
        expect(res.headers.allow?.split(', ').sort().join(', '), `${method} ${path}`).toBe(allow);
      }
      expectSelfServeError(await svc.send('GET', `/sdk-keys/${caller.id}/children`, { bearer: caller.key }), 404, /\S/, 'not_found');
    });
  });

});
