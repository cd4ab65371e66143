import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { type CallOptions, ADMIN, countKeys, expectError, expectSelfServeError, onDatabase, service, snapshot } from '../helpers/service.js';

/**
 * The admin API's keys, on PostgreSQL and PGlite: who may call it (the admin key only),
 * and POST /v1/keys, GET /v1/keys, GET /v1/keys/:id and POST /v1/keys/:id/revoke, with the
 * effect of each request (or its absence) checked in the database.
 */

forEachDatabase((getDb) => {
  const { setup, createKey } = onDatabase(getDb);

  describe('admin authentication', () => {
    it('security: every admin route refuses no bearer, a wrong one, an agent key, the hash of the admin key; nothing changes', async () => {
      const { ak, svc } = await setup();
      const agent = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acct_a', parentId: agent.id });
      await ak.setAccountBudget('acct_a', { budgetCents: 50 });
      await ak.trackUsage(agent.key, { costCents: 3 });
      const before = await snapshot(ak);
      const budgetBefore = await ak.getAccountBudget('acct_a');

      const hash = createHash('sha256').update(ADMIN).digest('hex');
      const refused: [Record<string, string>, string][] = [
        [{}, 'missing_admin_key'],
        [{ 'x-api-key': ADMIN }, 'missing_admin_key'],
        [{ authorization: `Bearer ${agent.key}` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${child.key}` }, 'invalid_admin_key'],
        [{ authorization: 'Bearer akadmin_wrong_0123456789abcdefghij' }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${ADMIN}x` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${ADMIN.slice(0, -1)}` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${ADMIN} ${ADMIN}` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${hash}` }, 'invalid_admin_key'],
        [{ authorization: ADMIN }, 'invalid_admin_key'],
        [{ authorization: `Basic ${Buffer.from(`admin:${ADMIN}`).toString('base64')}` }, 'invalid_admin_key'],
        [{ authorization: 'Bearer' }, 'invalid_admin_key'],
      ];
      const routes: [string, string, unknown?][] = [
        ['POST', '/v1/keys', { accountId: 'acct_a', budgetCents: 1_000_000 }],
        ['POST', '/v1/keys', { accountId: 'acct_a', parentId: agent.id }],
        ['GET', '/v1/keys'],
        ['GET', '/v1/keys?accountId=acct_a&includeRevoked=true'],
        ['GET', `/v1/keys/${agent.id}`],
        ['GET', '/v1/keys/abc'],
        ['POST', `/v1/keys/${agent.id}/revoke`],
        ['POST', `/v1/keys/${child.id}/revoke`],
        ['POST', `/v1/keys/${agent.id}/rotate`, { gracePeriod: '1h' }],
        ['GET', `/v1/keys/${agent.id}/events`],
        ['GET', '/v1/events?accountId=acct_a'],
        ['PUT', '/v1/accounts/acct_a/budget', { budgetCents: 1_000_000 }],
        ['GET', '/v1/accounts/acct_a/budget'],
        ['DELETE', '/v1/accounts/acct_a/budget'],
        ['GET', '/v1/usage'],
        ['GET', '/v1/usage?accountId=acct_a&bucket=day'],
      ];
      for (const [method, path, json] of routes) {
        for (const [headers, code] of refused) {
          const res = await svc.send(method, path, { headers, ...(json === undefined ? {} : { json }) });
          expect(res.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(401);
          expectError(res, 401, code);
          // Nothing about keys, budgets or usage leaks into a refusal.
          expect(res.text).not.toMatch(/acct_a|spentCents|totalCents/);
        }
      }
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.getAccountBudget('acct_a')).toEqual(budgetBefore);
      expect(await ak.validate(agent.key)).toMatchObject({ valid: true });
    });

    it('happy: the admin key is accepted raw or configured as its SHA-256, with any case of "Bearer"', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.create({ accountId: 'acct_a' });
      const hashed = service(ak, { adminKey: { sha256: createHash('sha256').update(ADMIN).digest('hex') } });
      for (const authorization of [`Bearer ${ADMIN}`, `bearer ${ADMIN}`, `BEARER   ${ADMIN}  `]) {
        const res = await hashed.send('GET', '/v1/keys', { headers: { authorization } });
        expect(res.status, authorization).toBe(200);
        expect(res.body.keys).toHaveLength(1);
      }
    });
  });

  describe('POST /v1/keys', () => {
    it('happy: 201 with the raw key once and the key as GET /v1/keys/:id shows it; the key works', async () => {
      const { db, ak, svc } = await setup();
      const before = Date.now();
      const res = await svc.admin('POST', '/v1/keys', {
        accountId: 'acct_1',
        name: 'agent',
        scopes: ['proxy.chat', 'usage.read'],
        budgetCents: 500,
        budgetPeriod: 'month',
        expiresIn: '7d',
        delegatedBy: 'user_9',
        userId: 'u_1',
      });
      expect(res.status).toBe(201);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      const created = res.body;
      expect(created).toMatchObject({
        key: expect.stringMatching(/^ak_/),
        id: expect.any(Number),
        accountId: 'acct_1',
        name: 'agent',
        scopes: ['proxy.chat', 'usage.read'],
        status: 'active',
        parentId: null,
        depth: 0,
        budgetCents: 500,
        spentCents: 0,
        heldCents: 0,
        remainingCents: 500,
        budgetPeriod: 'month',
        budgetResetAt: expect.any(String),
        revokedAt: null,
        delegatedBy: 'user_9',
        externalSubject: null,
      });
      expect(created.key.startsWith(created.prefix)).toBe(true);
      const expires = Date.parse(created.expiresAt);
      expect(expires).toBeGreaterThanOrEqual(before + 7 * 86_400_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 7 * 86_400_000);

      // Read back: the same key, never its secret.
      const read = await svc.admin('GET', `/v1/keys/${created.id}`);
      expect(read.status).toBe(200);
      const { key: raw, ...info } = created;
      expect(read.body).toEqual(info);
      expect(read.text).not.toContain(raw);
      expect((await svc.admin('GET', '/v1/keys')).text).not.toContain(raw);
      const [row] = await db.query<{ user_id: string; key_hash: string }>(`SELECT user_id, key_hash FROM ${ak.tableName} WHERE id = $1`, [created.id]);
      expect(row?.user_id).toBe('u_1');
      expect(res.text).not.toContain(row?.key_hash as string);

      expect(await ak.validate(raw)).toMatchObject({ valid: true, keyId: created.id, accountId: 'acct_1', scopes: ['proxy.chat', 'usage.read'], budgetCents: 500 });
      const verify = await svc.post('/v1/verify', { key: raw, scope: 'proxy.chat' });
      expect(verify.body).toMatchObject({ valid: true, keyId: created.id });
      expect(await countKeys(db, ak)).toBe(1);
    });

    it('happy: minimal bodies: a string or numeric account id, no budget, no expiry, all scopes', async () => {
      const { ak, svc } = await setup();
      const open = await createKey(svc, { accountId: 'acct_min' });
      expect(open).toMatchObject({ scopes: null, budgetCents: null, remainingCents: null, expiresAt: null, budgetPeriod: null, name: null });
      const numeric = await createKey(svc, { accountId: 7, budgetCents: null, expiresIn: null, scopes: [] });
      expect(String(numeric.accountId)).toBe('7');
      expect(numeric.scopes).toEqual([]);
      const listed = await svc.admin('GET', '/v1/keys?accountId=7');
      expect(listed.body.keys.map((k: { id: number }) => k.id)).toEqual([numeric.id]);
      const at = await createKey(svc, { accountId: 'acct_min', expiresAt: '2099-01-01T00:00:00Z' });
      expect(at.expiresAt).toBe('2099-01-01T00:00:00.000Z');
      expect((await ak.listKeys({})).length).toBe(3);
    });

    it('happy: parentId (as a number or a string) makes a child that inherits scopes and expiry and is listed under its parent', async () => {
      const { ak, svc } = await setup();
      const parent = await createKey(svc, { accountId: 'acct_p', scopes: ['proxy.chat', 'usage.read'], budgetCents: 100, expiresIn: '1d' });
      const a = await createKey(svc, { accountId: 'acct_p', parentId: parent.id });
      expect(a).toMatchObject({ parentId: parent.id, depth: 1, scopes: ['proxy.chat', 'usage.read'], expiresAt: parent.expiresAt, budgetCents: null });
      const b = await createKey(svc, { accountId: 'acct_p', parentId: String(parent.id), scopes: ['usage.read'], budgetCents: 40 });
      expect(b).toMatchObject({ parentId: parent.id, depth: 1, scopes: ['usage.read'], budgetCents: 40 });
      const grandchild = await createKey(svc, { accountId: 'acct_p', parentId: b.id });
      expect(grandchild).toMatchObject({ parentId: b.id, depth: 2 });
      const children = await svc.admin('GET', `/v1/keys?parentId=${parent.id}`);
      expect(children.body.keys.map((k: { id: number }) => k.id)).toEqual([a.id, b.id]);
      // A child's spend counts against its parent.
      expect((await svc.post('/v1/charge', { key: grandchild.key, costCents: 30 })).status).toBe(200);
      expect(await ak.getKey(parent.id)).toMatchObject({ spentCents: 30, remainingCents: 70 });
      expect(await ak.getKey(b.id)).toMatchObject({ spentCents: 30, remainingCents: 10 });
    });

    it('security: a child never escapes its parent: another account, wider scopes, larger budget, later expiry, a revoked or missing parent; nothing is created', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d' });
      const revoked = await ak.create({ accountId: 'acct_p' });
      await ak.revoke(revoked.id);
      const before = await snapshot(ak);
      const cases: [Record<string, unknown>, number, string][] = [
        [{ accountId: 'acct_other', parentId: parent.id }, 400, 'invalid_argument'],
        [{ accountId: 'acct_p', parentId: parent.id, scopes: ['billing.write'] }, 403, 'scope_not_allowed'],
        [{ accountId: 'acct_p', parentId: parent.id, scopes: null }, 403, 'scope_not_allowed'],
        [{ accountId: 'acct_p', parentId: parent.id, scopes: ['admin'] }, 403, 'scope_not_allowed'],
        [{ accountId: 'acct_p', parentId: parent.id, budgetCents: 100.0001 }, 403, 'budget_exceeds_parent'],
        [{ accountId: 'acct_p', parentId: parent.id, expiresIn: '2d' }, 403, 'expiry_exceeds_parent'],
        [{ accountId: 'acct_p', parentId: parent.id, expiresIn: null }, 403, 'expiry_exceeds_parent'],
        [{ accountId: 'acct_p', parentId: revoked.id }, 403, 'parent_inactive'],
        [{ accountId: 'acct_p', parentId: 999_999 }, 404, 'parent_not_found'],
        [{ accountId: 'acct_p', parentId: String(Number.MAX_SAFE_INTEGER) }, 404, 'parent_not_found'],
        [{ accountId: 'acct_p', parentId: '12345678901234567' }, 400, 'invalid_request'],
      ];
      for (const [body, status, code] of cases) {
        const res = await svc.admin('POST', '/v1/keys', body);
        expect(res.status, JSON.stringify(body)).toBe(status);
        expectError(res, status, code);
      }
      expect(await snapshot(ak)).toEqual(before);
    });

    it('error: wrong types, missing fields and unknown fields (budget_cents) -> 400 naming the field; nothing is created (a zero expiresIn is no error: its key is expired at once)', async () => {
      const { db, ak, svc } = await setup();
      const cases: [unknown, string, RegExp?][] = [
        [{}, 'invalid_request', /accountId/],
        [{ name: 'no account' }, 'invalid_request', /accountId/],
        [{ accountId: '' }, 'invalid_request', /accountId/],
        [{ accountId: null }, 'invalid_request', /accountId/],
        [{ accountId: true }, 'invalid_request', /accountId/],
        [{ accountId: 1.5 }, 'invalid_request', /accountId/],
        [{ accountId: ['a'] }, 'invalid_request', /accountId/],
        [{ accountId: 'a'.repeat(257) }, 'invalid_request', /accountId/],
        [{ accountId: 'a', budget_cents: 100 }, 'invalid_request', /budget_cents/],
        [{ accountId: 'a', account_id: 'b' }, 'invalid_request', /account_id/],
        [{ accountId: 'a', Scopes: ['admin'] }, 'invalid_request', /Scopes/],
        [{ accountId: 'a', budgetCents: '1e2' }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: '-1' }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: -1 }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: 1e12 }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: true }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', scopes: 'proxy.chat' }, 'invalid_request', /scopes/],
        [{ accountId: 'a', scopes: [1] }, 'invalid_request', /scopes/],
        [{ accountId: 'a', scopes: [''] }, 'invalid_request', /scopes/],
        [{ accountId: 'a', scopes: ['has space'] }, 'invalid_scope'],
        [{ accountId: 'a', budgetPeriod: 'week' }, 'invalid_request', /budgetPeriod/],
        [{ accountId: 'a', expiresIn: 3600 }, 'invalid_request', /expiresIn/],
        [{ accountId: 'a', expiresIn: '7 days' }, 'invalid_duration', /^Invalid duration: 7 days/],
        [{ accountId: 'a', expiresIn: '-1d' }, 'invalid_duration', /^Invalid duration: -1d/],
        [{ accountId: 'a', expiresAt: '2020-01-01T00:00:00Z' }, 'invalid_argument'],
        [{ accountId: 'a', expiresAt: 'tomorrow' }, 'invalid_argument'],
        [{ accountId: 'a', expiresIn: '1h', expiresAt: '2099-01-01T00:00:00Z' }, 'invalid_argument'],
        [{ accountId: 'a', parentId: 0 }, 'invalid_request', /parentId/],
        [{ accountId: 'a', parentId: 'abc' }, 'invalid_request', /parentId/],
        [{ accountId: 'a', parentId: '0' }, 'invalid_request', /parentId/],
        [{ accountId: 'a', parentId: -1 }, 'invalid_request', /parentId/],
        [{ accountId: 'a', name: 'x'.repeat(300) }, 'invalid_request', /name/],
        [{ accountId: 'a', name: '' }, 'invalid_argument'],
        [{ accountId: 'a', name: 5 }, 'invalid_request', /name/],
        [{ accountId: 'a', delegatedBy: {} }, 'invalid_request', /delegatedBy/],
        [{ accountId: 'a', userId: 'nul\u0000' }, 'invalid_argument'],
        [{ accountId: 'a\u0000b' }, 'invalid_argument'],
        [[{ accountId: 'a' }], 'invalid_request'],
        ['acct_1', 'invalid_request'],
        [42, 'invalid_request'],
        [null, 'invalid_request'],
      ];
      for (const [json, code, names] of cases) {
        const res = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw: JSON.stringify(json) });
        expect(res.status, JSON.stringify(json)).toBe(400);
        expectError(res, 400, code);
        if (names) expect(res.body.error.message).toMatch(names);
      }
      expect(await countKeys(db, ak)).toBe(0);
      // A zero duration is no error (as in the package): the key is made expired at once.
      const zero = await svc.admin('POST', '/v1/keys', { accountId: 'a', expiresIn: '0d' });
      expect(zero.status, zero.text).toBe(201);
      expect(Date.parse(zero.body.expiresAt)).toBeLessThanOrEqual(Date.now());
      expect(await ak.validate(zero.body.key)).toEqual({ valid: false, reason: 'expired' });
    });

    it('security: control and bidi characters in names, ids and labels -> 400 invalid_argument naming the field, never the database\'s words; nothing changes', async () => {
      const { ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const k = await ak.create({ accountId: 'acct_t', budgetCents: 100 });
      const before = await snapshot(ak);
      const esc = 'red\u001b[31m', rlo = 'gpj\u202eexe', nul = 'nul\u0000x', bel = 'bel\u0007';
      const cases: [string, string, CallOptions, RegExp][] = [
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', name: esc } }, /^name must not contain control characters.*U\+001B/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', name: rlo } }, /^name must not contain control characters.*U\+202E/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', name: nul } }, /^name must not contain control characters.*U\+0000/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: nul } }, /^accountId must not contain control characters.*U\+0000/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: rlo } }, /^accountId must not contain control characters/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', delegatedBy: bel } }, /^delegatedBy must not contain control characters/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', userId: nul } }, /^userId must not contain control characters/],
        ['PUT', `/v1/accounts/${encodeURIComponent(esc)}/budget`, { bearer: ADMIN, json: { budgetCents: 5 } }, /^accountId must not contain control characters/],
        ['GET', `/v1/keys?accountId=${encodeURIComponent(nul)}`, { bearer: ADMIN }, /^accountId must not contain control characters/],
        ['POST', '/v1/charge', { json: { key: k.key, costCents: 1, idempotencyKey: esc } }, /^idempotencyKey must not contain control characters/],
        ['POST', '/v1/charge', { json: { key: k.key, costCents: 1, idempotencyKey: nul } }, /^idempotencyKey must not contain control characters/],
      ];
      for (const [method, path, o, message] of cases) {
        const res = await svc.send(method, path, o);
        const label = `${method} ${path} ${JSON.stringify(o.json)}`;
        expect(res.status, label).toBe(400);
        expectError(res, 400, 'invalid_argument');
        expect(res.body.error.message, label).toMatch(message);
        expect(res.body.error.message, label).not.toMatch(/invalid byte sequence|0x00|does not fit/);
      }
      // The self-serve routes refuse them too, in the package's shape.
      const signup = await svc.send('POST', '/signup', { json: { email: 'a@example.com', name: esc } });
      expectSelfServeError(signup, 400, /must not contain control characters/, 'invalid_argument');
      const child = await svc.send('POST', '/sdk-keys', { bearer: k.key, json: { name: rlo, budget_cents: 1 } });
      expectSelfServeError(child, 400, /must not contain control characters/, 'invalid_argument');
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.listAccounts()).toEqual([expect.objectContaining({ accountId: 'acct_t', ceiling: null })]);
    });

    it('error: malformed JSON, an empty body and no body -> 400; nothing is created', async () => {
      const { db, ak, svc } = await setup();
      for (const raw of ['{"accountId": ', '{accountId: "a"}', "{'accountId':'a'}", '{"accountId":"a",}', '', ' ', 'undefined', '{"accountId":"a"}{}']) {
        expectError(await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw }), 400, 'invalid_json');
      }
      expectError(await svc.send('POST', '/v1/keys', { bearer: ADMIN }), 400, 'invalid_request');
      expect(await countKeys(db, ak)).toBe(0);
    });

    it('error: a body over the limit -> 413 body_too_large, even with valid fields; bodyLimitBytes moves the limit', async () => {
      const { db, ak, svc } = await setup();
      const huge = { accountId: 'acct_1', name: 'n', delegatedBy: 'd', pad: 'x'.repeat(70_000) };
      expectError(await svc.admin('POST', '/v1/keys', huge), 413, 'body_too_large');
      // Within 64 KiB but with an unknown field: a 400, not a 413.
      expectError(await svc.admin('POST', '/v1/keys', { accountId: 'a', pad: 'x'.repeat(60_000) }), 400, 'invalid_request');
      // Spaces are bytes too.
      const padded = `{"accountId":"acct_1"${' '.repeat(70_000)}}`;
      expectError(await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw: padded }), 413, 'body_too_large');

      const small = service(ak, { bodyLimitBytes: 2048 });
      const over = { accountId: 'acct_1', name: 'x'.repeat(250), delegatedBy: 'y'.repeat(250), scopes: Array.from({ length: 100 }, (_, i) => `scope.item.${i}`) };
      expect(JSON.stringify(over).length).toBeGreaterThan(2048);
      expectError(await small.admin('POST', '/v1/keys', over), 413, 'body_too_large');
      expect(await countKeys(db, ak)).toBe(0);
      expect((await small.admin('POST', '/v1/keys', { accountId: 'acct_1', name: 'x'.repeat(250) })).status).toBe(201);
      expect(await countKeys(db, ak)).toBe(1);
    });

    it('error: a body that is not declared as JSON -> 415 unsupported_media_type; nothing is created', async () => {
      const { db, ak, svc } = await setup();
      const raw = JSON.stringify({ accountId: 'acct_1' });
      for (const type of [null, 'text/plain', 'text/json', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', 'application/json5', 'application/jsonx', 'json']) {
        const res = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type });
        expectError(res, 415, 'unsupported_media_type');
      }
      expect(await countKeys(db, ak)).toBe(0);
      for (const type of ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON;charset=UTF-8', 'application/vnd.api+json']) {
        expect((await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type })).status, type).toBe(201);
      }
      expect(await countKeys(db, ak)).toBe(4);
    });

    it('error: every content type the service turns away gets the same 415 unsupported_media_type, even "application/json ; charset=utf-8" (the validators\' rule: no space before ";")', async () => {
      const { db, ak, svc } = await setup();
      const raw = JSON.stringify({ accountId: 'acct_1' });
      // A malformed parameter on a JSON type: turned away, but with the code of every other 415.
      const malformed = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type: 'application/json;charset' });
      expect(await countKeys(db, ak)).toBe(0);
      const spaced = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type: 'application/json ; charset=utf-8' });
      expect({
        malformed: { status: malformed.status, code: malformed.body?.error?.code },
        spaced: { status: spaced.status, code: spaced.body?.error?.code },
        created: await countKeys(db, ak),
      }).toEqual({ malformed: { status: 415, code: 'unsupported_media_type' }, spaced: { status: 415, code: 'unsupported_media_type' }, created: 0 });
    });

    it('error: an expiry past the year 9999 is the client\'s value: 201 or 400, never a 5xx', async () => {
      const { db, ak, svc } = await setup();
      for (const expiresAt of ['10000-01-01T00:00:00Z', '+099999-01-01T00:00:00Z', '+275760-09-13T00:00:00Z']) {
        const before = await countKeys(db, ak);
        const res = await svc.admin('POST', '/v1/keys', { accountId: 'acct_1', expiresAt });
        expect({ expiresAt, status: res.status, body: res.status >= 500 ? res.body : 'not a 5xx' }).toEqual({ expiresAt, status: res.status, body: 'not a 5xx' });
        expect([201, 400]).toContain(res.status);
        if (res.status === 400) {
          expectError(res, 400);
          expect(await countKeys(db, ak)).toBe(before);
        } else {
          expect(await ak.validate(res.body.key)).toMatchObject({ valid: true });
        }
      }
    });
  });

  describe('GET /v1/keys', () => {
    it('happy: every account\'s keys in id order, filtered by account, parent, revoked and limit, never with a secret', async () => {
      const { db, ak, svc } = await setup();
      const a1 = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const a2 = await ak.create({ accountId: 'acct_a', parentId: a1.id });
      const b1 = await ak.create({ accountId: 'acct_b' });
      const gone = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(gone.id);
      await ak.trackUsage(a2.key, { costCents: 4 });
      const ids = async (query: string) => {
        const res = await svc.admin('GET', `/v1/keys${query}`);
        expect(res.status, query).toBe(200);
        for (const k of [a1, a2, b1, gone]) expect(res.text).not.toContain(k.key);
        for (const info of res.body.keys) expect(Object.keys(info).sort()).toEqual(Object.keys((await ak.getKey(a1.id)) as object).sort());
        return res.body.keys.map((k: { id: number }) => k.id);
      };
      expect(await ids('')).toEqual([a1.id, a2.id, b1.id]);
      expect(await ids('?accountId=acct_a')).toEqual([a1.id, a2.id]);
      expect(await ids('?accountId=acct_a&includeRevoked=true')).toEqual([a1.id, a2.id, gone.id]);
      expect(await ids('?includeRevoked=false')).toEqual([a1.id, a2.id, b1.id]);
      expect(await ids(`?parentId=${a1.id}`)).toEqual([a2.id]);
      expect(await ids(`?parentId=${b1.id}`)).toEqual([]);
      expect(await ids('?accountId=acct_none')).toEqual([]);
      expect(await ids('?limit=1')).toEqual([a1.id]);
      expect(await ids('?limit=00002')).toEqual([a1.id, a2.id]);
      const [row] = await db.query<{ key_hash: string }>(`SELECT key_hash FROM ${ak.tableName} WHERE id = $1`, [a1.id]);
      const all = await svc.admin('GET', '/v1/keys');
      expect(all.text).not.toContain(row?.key_hash as string);
      expect(all.body.keys[0]).toMatchObject({ id: a1.id, spentCents: 4, remainingCents: 6 });
      expect(all.body.keys[1]).toMatchObject({ id: a2.id, parentId: a1.id, depth: 1, spentCents: 4 });
    });

    it('error: bad query values and unknown parameters -> 400', async () => {
      const { ak, svc } = await setup();
      await ak.create({ accountId: 'acct_a' });
      const cases: [string, string][] = [
        ['limit=0', 'invalid_argument'],
        ['limit=10001', 'invalid_argument'],
        ['limit=99999', 'invalid_argument'],
        ['limit=abc', 'invalid_request'],
        ['limit=-1', 'invalid_request'],
        ['limit=1.5', 'invalid_request'],
        ['limit=', 'invalid_request'],
        ['limit=123456', 'invalid_request'],
        ['includeRevoked=yes', 'invalid_request'],
        ['includeRevoked=1', 'invalid_request'],
        ['includeRevoked=TRUE', 'invalid_request'],
        ['parentId=0', 'invalid_request'],
        ['parentId=abc', 'invalid_request'],
        ['parentId=-1', 'invalid_request'],
        ['parentId=01', 'invalid_request'],
        ['accountId=', 'invalid_request'],
        [`accountId=${'a'.repeat(257)}`, 'invalid_request'],
        ['accountId=a&accountId=b', 'invalid_request'],
        ['account_id=acct_a', 'invalid_request'],
        ['budget_cents=5', 'invalid_request'],
        ['accountId=%00', 'invalid_argument'],
      ];
      for (const [query, code] of cases) {
        const res = await svc.admin('GET', `/v1/keys?${query}`);
        expect(res.status, query).toBe(400);
        expectError(res, 400, code);
      }
    });
  });

  describe('GET /v1/keys/:id', () => {
    it('happy: 200 with the key as getKey() reads it, spend included', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10, name: 'k' });
      await ak.trackUsage(k.key, { costCents: 2.5 });
      await ak.reserve(k.key, { costCents: 1 });
      const res = await svc.admin('GET', `/v1/keys/${k.id}`);
      expect(res.status).toBe(200);
      expect(res.body).toEqual(await ak.getKey(k.id));
      expect(res.body).toMatchObject({ id: k.id, name: 'k', spentCents: 2.5, heldCents: 1, remainingCents: 6.5 });
      expect(res.text).not.toContain(k.key);
    });

    it("error: ids that are not key ids ('abc', '0', ...) -> 400; an unknown id -> 404 key_not_found", async () => {
      const { ak, svc } = await setup();
      await ak.create({ accountId: 'acct_a' });
      for (const id of ['abc', '0', '-1', '1.5', '01', '1e3', '0x10', '%20', '12345678901234567', '1%00', "1'--", 'null']) {
        const res = await svc.admin('GET', `/v1/keys/${id}`);
        expect(res.status, id).toBe(400);
        expectError(res, 400);
      }
      // 16 digits pass the pattern but are past the largest safe id.
      expectError(await svc.admin('GET', '/v1/keys/9999999999999999'), 400);
      expectError(await svc.admin('GET', '/v1/keys/999999'), 404, 'key_not_found');
      expectError(await svc.admin('GET', `/v1/keys/${Number.MAX_SAFE_INTEGER}`), 404, 'key_not_found');
    });
  });

  describe('POST /v1/keys/:id/revoke', () => {
    it('happy: revokes the key and its whole subtree, and only that; a second revoke says revoked: false', async () => {
      const { ak, svc } = await setup();
      const root = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acct_a', parentId: root.id });
      const grandchild = await ak.create({ accountId: 'acct_a', parentId: child.id });
      const sibling = await ak.create({ accountId: 'acct_a' });
      const other = await ak.create({ accountId: 'acct_b' });
      // Seen (and cached) as valid before the revoke.
      expect((await svc.post('/v1/verify', { key: grandchild.key })).body.valid).toBe(true);

      const res = await svc.admin('POST', `/v1/keys/${root.id}/revoke`);
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ id: root.id, revoked: true, key: { id: root.id, status: 'revoked', revokedAt: expect.any(String) } });
      for (const k of [root, child, grandchild]) {
        expect((await ak.getKey(k.id))?.status).toBe('revoked');
        expect((await svc.post('/v1/verify', { key: k.key })).body).toEqual({ valid: false, reason: 'revoked' });
        expectError(await svc.post('/v1/charge', { key: k.key, costCents: 1 }), 401, 'key_revoked');
        expectError(await svc.post('/v1/reservations', { key: k.key, costCents: 1 }), 401, 'key_revoked');
      }
      for (const k of [sibling, other]) expect((await ak.getKey(k.id))?.status).toBe('active');
      expect(await ak.usage()).toMatchObject({ count: 0 });

      const again = await svc.admin('POST', `/v1/keys/${child.id}/revoke`);
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ id: child.id, revoked: false, key: { status: 'revoked' } });
    });

    it('happy: revoking a child leaves its parent and siblings active', async () => {
      const { ak, svc } = await setup();
      const root = await ak.create({ accountId: 'acct_a' });
      const a = await ak.create({ accountId: 'acct_a', parentId: root.id });
      const b = await ak.create({ accountId: 'acct_a', parentId: root.id });
      expect((await svc.admin('POST', `/v1/keys/${a.id}/revoke`)).body.revoked).toBe(true);
      expect((await ak.getKey(a.id))?.status).toBe('revoked');
      expect((await ak.getKey(root.id))?.status).toBe('active');
      expect((await ak.getKey(b.id))?.status).toBe('active');
    });

    it('error: bad ids -> 400, an unknown id -> 404 key_not_found; nothing is revoked', async () => {
      const { ak, svc } = await setup();
      await ak.create({ accountId: 'acct_a' });
      const before = await snapshot(ak);
      for (const id of ['abc', '0', '-1', '1.5', '01', '9999999999999999']) expectError(await svc.admin('POST', `/v1/keys/${id}/revoke`), 400);
      expectError(await svc.admin('POST', '/v1/keys/424242/revoke'), 404, 'key_not_found');
      // A body is not needed, and a non-JSON one is still refused before anything happens.
      expectError(await svc.send('POST', `/v1/keys/${before.keys[0]?.id}/revoke`, { bearer: ADMIN, raw: 'now', type: 'text/plain' }), 415, 'unsupported_media_type');
      expect(await snapshot(ak)).toEqual(before);
    });
  });

  describe('PATCH /v1/keys/:id', () => {
    it('happy: changes what the body names and answers the key as changed; the change holds for charges at once', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 100, scopes: ['proxy.chat'], name: 'before' });
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 60 })).status).toBe(200);
      const res = await svc.admin('PATCH', `/v1/keys/${k.id}`, { budgetCents: 50, name: 'after', scopes: ['proxy.chat', 'usage.read'], expiresIn: '2d' });
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ id: k.id, budgetCents: 50, spentCents: 60, name: 'after', scopes: ['proxy.chat', 'usage.read'], status: 'active' });
      expect(Date.parse(res.body.expiresAt as string)).toBeGreaterThan(Date.now() + 86_400_000);
      expect(res.body).toEqual(await ak.getKey(k.id));
      // Below what was spent: nothing left, and the refusal says so.
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 1 }), 429, 'budget_exceeded');
    });

    it("happy: a key's metadata is set by POST /v1/keys, replaced by PATCH (null removes it); a non-object is 400 and changes nothing", async () => {
      const { ak, svc } = await setup();
      const created = await svc.admin('POST', '/v1/keys', { accountId: 'acct_m', metadata: { team: 'search' } });
      expect(created.status, created.text).toBe(201);
      expect(created.body.metadata).toEqual({ team: 'search' });
      const id = created.body.id as number;
      expect((await svc.admin('PATCH', `/v1/keys/${id}`, { metadata: { team: 'ads', n: 1 } })).body.metadata).toEqual({ team: 'ads', n: 1 });
      const before = await snapshot(ak);
      for (const metadata of [[1], 'x', 5]) expectError(await svc.admin('PATCH', `/v1/keys/${id}`, { metadata }), 400);
      expectError(await svc.admin('PATCH', `/v1/keys/${id}`, { metadata: { big: 'x'.repeat(9_000) } }), 400, 'invalid_argument');
      expect(await snapshot(ak)).toEqual(before);
      expect((await svc.admin('PATCH', `/v1/keys/${id}`, { metadata: null })).body.metadata).toBeNull();
    });

    it('happy: cascade narrows the descendants in the same step; without it the narrowing is 409 narrows_children and changes nothing', async () => {
      const { ak, svc } = await setup();
      const root = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acct_a', parentId: root.id, budgetCents: 80 });
      const grandchild = await ak.create({ accountId: 'acct_a', parentId: child.id, budgetCents: 70 });
      const before = await snapshot(ak);
      const refused = await svc.admin('PATCH', `/v1/keys/${root.id}`, { budgetCents: 40 });
      expectError(refused, 409, 'narrows_children');
      expect((refused.body.error as { message: string }).message).toContain(`Key ${child.id}`);
      expect(await snapshot(ak)).toEqual(before);
      expect((await svc.admin('PATCH', `/v1/keys/${root.id}`, { budgetCents: 40, cascade: true })).body).toMatchObject({ budgetCents: 40 });
      expect((await ak.getKey(child.id))?.budgetCents).toBe(40);
      expect((await ak.getKey(grandchild.id))?.budgetCents).toBe(40);
    });

    it('error: bad bodies -> 400, a child widened -> 403, unknown -> 404, revoked -> 409; nothing changes', async () => {
      const { ak, svc } = await setup();
      const root = await ak.create({ accountId: 'acct_a', budgetCents: 100, expiresIn: '1d', scopes: ['proxy.chat'] });
      const child = await ak.create({ accountId: 'acct_a', parentId: root.id, budgetCents: 10 });
      const gone = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(gone.id);
      const before = await snapshot(ak);
      for (const body of [{}, { budget: 1 }, { budgetCents: -1 }, { budgetCents: 'lots' }, { budgetPeriod: 'week' }, { scopes: 'read' }, { expiresIn: '7x' },
        { expiresAt: '2001-01-01T00:00:00Z' }, { expiresIn: '1d', expiresAt: '2099-01-01T00:00:00Z' }, { cascade: 'yes', name: 'x' }, { name: 'a\u0000b' }]) {
        expectError(await svc.admin('PATCH', `/v1/keys/${root.id}`, body), 400);
      }
      expectError(await svc.admin('PATCH', `/v1/keys/${child.id}`, { budgetCents: 101 }), 403, 'budget_exceeds_parent');
      expectError(await svc.admin('PATCH', `/v1/keys/${child.id}`, { expiresAt: null }), 403, 'expiry_exceeds_parent');
      expectError(await svc.admin('PATCH', `/v1/keys/${child.id}`, { scopes: ['billing'] }), 403, 'scope_not_allowed');
      expectError(await svc.admin('PATCH', '/v1/keys/424242', { name: 'x' }), 404, 'key_not_found');
      for (const id of ['abc', '0']) expectError(await svc.admin('PATCH', `/v1/keys/${id}`, { name: 'x' }), 400);
      expectError(await svc.admin('PATCH', `/v1/keys/${gone.id}`, { name: 'x' }), 409, 'key_inactive');
      expectError(await svc.send('PATCH', `/v1/keys/${root.id}`, { json: { name: 'x' } }), 401, 'missing_admin_key');
      expect(await snapshot(ak)).toEqual(before);
    });
  });
});
