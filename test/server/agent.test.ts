import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { BAD_COSTS, USAGE, priced } from '../helpers/metered.js';
import { ADMIN, UNKNOWN_KEY, expectError, expireKey, metric, onDatabase, snapshot } from '../helpers/service.js';

/**
 * The agent API, on PostgreSQL and PGlite: POST /v1/verify and POST /v1/charge (with
 * costCents, or an LLM call's model and usage), with the spend (or its absence) checked in
 * the database.
 */

forEachDatabase((getDb) => {
  const { setup } = onDatabase(getDb);

  describe('POST /v1/verify', () => {
    it('happy: always 200: valid with the key\'s metadata, or valid false with a reason (insufficient_scope names the scope)', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', scopes: ['proxy.chat'], budgetCents: 10, name: 'bot', delegatedBy: 'user_1' });
      const revoked = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_a', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      await ak.trackUsage(k.key, { costCents: 2 });

      const ok = await svc.post('/v1/verify', { key: k.key });
      expect(ok.status).toBe(200);
      expect(ok.body).toMatchObject({ valid: true, keyId: k.id, accountId: 'acct_a', name: 'bot', scopes: ['proxy.chat'], budgetCents: 10, budgetUsedCents: 2, budgetRemainingCents: 8, delegatedBy: 'user_1' });
      expect(ok.text).not.toContain(k.key);
      expect((await svc.post('/v1/verify', { key: k.key, scope: 'proxy.chat' })).body).toMatchObject({ valid: true, keyId: k.id });
      const cases: [unknown, unknown][] = [
        [{ key: k.key, scope: 'billing.write' }, { valid: false, reason: 'insufficient_scope', requiredScope: 'billing.write' }],
        [{ key: k.key, scope: 'admin' }, { valid: false, reason: 'insufficient_scope', requiredScope: 'admin' }],
        [{ key: revoked.key }, { valid: false, reason: 'revoked' }],
        [{ key: revoked.key, scope: 'proxy.chat' }, { valid: false, reason: 'revoked' }],
        [{ key: expired.key }, { valid: false, reason: 'expired' }],
        [{ key: 'ak_garbage' }, { valid: false, reason: 'invalid' }],
        [{ key: 'hello' }, { valid: false, reason: 'invalid' }],
        [{ key: UNKNOWN_KEY }, { valid: false, reason: 'invalid' }],
        // The admin key is no agent key.
        [{ key: ADMIN }, { valid: false, reason: 'invalid' }],
      ];
      for (const [body, expected] of cases) {
        const res = await svc.post('/v1/verify', body);
        expect(res.status, JSON.stringify(body)).toBe(200);
        expect(res.body).toEqual(expected);
      }
    });

    it('security: verifying spends nothing and changes no key', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const before = await snapshot(ak);
      for (let i = 0; i < 5; i++) expect((await svc.post('/v1/verify', { key: k.key, scope: 'x' })).status).toBe(200);
      expect(await snapshot(ak)).toEqual(before);
    });

    it('error: missing, wrong-typed or unknown fields, malformed JSON, a huge body -> 400/413', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a' });
      const bodies: [unknown, string][] = [
        [{}, 'invalid_request'],
        [{ key: '' }, 'invalid_request'],
        [{ key: 5 }, 'invalid_request'],
        [{ key: null }, 'invalid_request'],
        [{ key: [k.key] }, 'invalid_request'],
        [{ key: 'k'.repeat(513) }, 'invalid_request'],
        [{ key: k.key, scope: '' }, 'invalid_request'],
        [{ key: k.key, scope: ['proxy.chat'] }, 'invalid_request'],
        [{ key: k.key, scopes: 'proxy.chat' }, 'invalid_request'],
        [{ apiKey: k.key }, 'invalid_request'],
        [[k.key], 'invalid_request'],
        [k.key, 'invalid_request'],
      ];
      for (const [json, code] of bodies) expectError(await svc.send('POST', '/v1/verify', { raw: JSON.stringify(json) }), 400, code);
      expectError(await svc.send('POST', '/v1/verify', { raw: `{"key":"${k.key}"` }), 400, 'invalid_json');
      expectError(await svc.send('POST', '/v1/verify', {}), 400, 'invalid_request');
      expectError(await svc.post('/v1/verify', { key: k.key, pad: 'x'.repeat(70_000) }), 413, 'body_too_large');
      expectError(await svc.send('POST', '/v1/verify', { raw: `key=${k.key}`, type: 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type');
      // The key in a header is not how /v1/verify is asked.
      expectError(await svc.send('POST', '/v1/verify', { raw: '{}', bearer: k.key }), 400, 'invalid_request');
    });
  });

  describe('POST /v1/charge', () => {
    it('happy: 200 with the new figures; the spend is in the key, the ledger and GET /v1/keys/:id', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const res = await svc.post('/v1/charge', { key: k.key, costCents: 2.5, metadata: { model: 'gpt-x', inputTokens: 1200 } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ success: true, budgetUsedCents: 2.5, budgetRemainingCents: 7.5 });
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 2.5, remainingCents: 7.5 });
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: 2.5, count: 1 });
      expect((await svc.admin('GET', `/v1/keys/${k.id}`)).body).toMatchObject({ spentCents: 2.5 });
      // Cents down to 0.0001, rounded up (never under-charged); 0 succeeds but records nothing (as in the package).
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 0.00005 })).body).toEqual({ success: true, budgetUsedCents: 2.5001, budgetRemainingCents: 7.4999 });
      const free = await svc.post('/v1/charge', { key: k.key, costCents: 0 });
      expect(free.status).toBe(200);
      expect(free.body).toEqual({ success: true });
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: 2.5001, count: 2 });
      // Up to exactly what is left.
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 7.4999 })).body).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 0 });
      // An unbudgeted key has no remaining figure.
      const open = await ak.create({ accountId: 'acct_a' });
      expect((await svc.post('/v1/charge', { key: open.key, costCents: 1e6 })).body).toEqual({ success: true, budgetUsedCents: 1e6, budgetRemainingCents: null });
    });

    it('happy: an idempotency key charges once; the same key with another cost -> 409 idempotency_conflict', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const first = await svc.post('/v1/charge', { key: k.key, costCents: 3, idempotencyKey: 'req-1' });
      expect(first.body).toEqual({ success: true, budgetUsedCents: 3, budgetRemainingCents: 7 });
      const retry = await svc.post('/v1/charge', { key: k.key, costCents: 3, idempotencyKey: 'req-1' });
      expect(retry.status).toBe(200);
      expect(retry.body).toMatchObject({ success: true, replayed: true });
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 4, idempotencyKey: 'req-1' }), 409, 'idempotency_conflict');
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 3 });
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: 3, count: 1 });
      // Idempotency keys are per key: another key may use the same one.
      const other = await ak.create({ accountId: 'acct_a' });
      expect((await svc.post('/v1/charge', { key: other.key, costCents: 4, idempotencyKey: 'req-1' })).body).toMatchObject({ success: true });
      expect((await svc.post('/v1/charge', { key: other.key, costCents: 4, idempotencyKey: 'req-1' })).body).toMatchObject({ replayed: true });
    });

    it('error: past the budget -> 429 budget_exceeded saying which budget (key or ancestor); nothing is charged', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_a', budgetCents: 5 });
      const child = await ak.create({ accountId: 'acct_a', parentId: parent.id, budgetCents: 4 });
      await ak.trackUsage(parent.key, { costCents: 2 });
      const before = await snapshot(ak);
      const own = await svc.post('/v1/charge', { key: child.key, costCents: 4.0001 });
      expectError(own, 429, 'budget_exceeded');
      expect(own.body.error).toMatchObject({ limitedBy: { kind: 'key', keyId: child.id }, budgetUsedCents: 0, budgetRemainingCents: 4 });
      const ancestor = await svc.post('/v1/charge', { key: child.key, costCents: 3.5 });
      expectError(ancestor, 429, 'budget_exceeded');
      expect(ancestor.body.error.limitedBy).toEqual({ kind: 'ancestor', keyId: parent.id, window: 'lifetime' });
      expectError(await svc.post('/v1/charge', { key: parent.key, costCents: 3.0001, idempotencyKey: 'i' }), 429, 'budget_exceeded');
      expect(await snapshot(ak)).toEqual(before);
      // The refused idempotency key was not used up.
      expect((await svc.post('/v1/charge', { key: parent.key, costCents: 1, idempotencyKey: 'i' })).body).toMatchObject({ success: true, budgetUsedCents: 3 });
    });

    it('security: the admin key, a garbage, unknown, revoked or expired key -> 401 with its code; nothing is charged', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const revoked = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_a', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      const before = await snapshot(ak);
      const cases: [string, string][] = [
        [ADMIN, 'invalid_key'],
        ['ak_garbage', 'invalid_key'],
        [UNKNOWN_KEY, 'invalid_key'],
        [`${k.key}x`, 'invalid_key'],
        [k.key.toUpperCase(), 'invalid_key'],
        ['hello', 'invalid_key'],
        [revoked.key, 'key_revoked'],
        [expired.key, 'key_expired'],
      ];
      for (const [key, code] of cases) {
        expectError(await svc.post('/v1/charge', { key, costCents: 1 }), 401, code);
        // The bearer is not what /v1/charge reads: the body's key is.
        expectError(await svc.post('/v1/charge', { key, costCents: 1 }, k.key), 401, code);
      }
      // Nor does an admin bearer make the admin key an agent key.
      expectError(await svc.post('/v1/charge', { key: ADMIN, costCents: 1 }, ADMIN), 401, 'invalid_key');
      expect(await snapshot(ak)).toEqual(before);
    });

    it('happy: amounts may be decimal strings, read exactly: a key, a charge, a hold and its commit', async () => {
      const { ak, svc } = await setup();
      const created = await svc.post('/v1/keys', { accountId: 'acct_s', budgetCents: '10.5' }, ADMIN);
      expect(created.status).toBe(201);
      const { key, id } = created.body as { key: string; id: number };
      const charged = await svc.post('/v1/charge', { key, costCents: '0.30000000000000004' });
      expect(charged.status).toBe(200);
      expect(charged.body).toMatchObject({ success: true, budgetUsedCents: 0.3001 });
      // a number with float noise is charged as the decimal it came from
      expect((await svc.post('/v1/charge', { key, costCents: 0.1 + 0.2 })).body).toMatchObject({ budgetUsedCents: 0.6001 });
      const held = await svc.post('/v1/reservations', { key, costCents: '2' });
      expect(held.status).toBe(201);
      const rid = (held.body as { reservationId: string }).reservationId;
      const committed = await svc.post(`/v1/reservations/${rid}/commit`, { key, costCents: '1.25' });
      expect(committed.body).toMatchObject({ success: true, costCents: 1.25, releasedCents: 0.75 });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 10.5, spentCents: 1.8501 });
    });

    it('error: missing, wrong-typed and unknown fields, malformed JSON, huge bodies -> 400/413/415; nothing is charged', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const before = await snapshot(ak);
      const bodies: [unknown, string, RegExp?][] = [
        [{}, 'invalid_request'],
        [{ key: k.key }, 'invalid_request', /costCents/],
        [{ costCents: 1 }, 'invalid_request', /key/],
        [{ key: k.key, costCents: '1e0' }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: '-1' }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: '1000000000000' }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: -1 }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: -0.0001 }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: 1e12 }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: null }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: [1] }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: { cents: 1 } }, 'invalid_request', /costCents/],
        [{ key: k.key, cost_cents: 1 }, 'invalid_request'],
        [{ key: k.key, costCents: 1, budget_cents: 1 }, 'invalid_request', /budget_cents/],
        [{ key: k.key, costCents: 1, accountId: 'acct_b' }, 'invalid_request', /accountId/],
        [{ key: k.key, costCents: 1, metadata: 'gpt' }, 'invalid_request', /metadata/],
        [{ key: k.key, costCents: 1, metadata: [1] }, 'invalid_request', /metadata/],
        [{ key: k.key, costCents: 1, metadata: { note: 'nul\u0000' } }, 'invalid_argument'],
        [{ key: k.key, costCents: 1, metadata: { big: 'x'.repeat(9_000) } }, 'invalid_argument'],
        [{ key: k.key, costCents: 1, idempotencyKey: '' }, 'invalid_request', /idempotencyKey/],
        [{ key: k.key, costCents: 1, idempotencyKey: 5 }, 'invalid_request', /idempotencyKey/],
        [{ key: k.key, costCents: 1, idempotencyKey: 'i'.repeat(257) }, 'invalid_request', /idempotencyKey/],
        [{ key: k.key, costCents: 1, idempotencyKey: 'nul\u0000' }, 'invalid_argument'],
        [{ key: 5, costCents: 1 }, 'invalid_request', /key/],
        [{ key: '', costCents: 1 }, 'invalid_request', /key/],
        [[{ key: k.key, costCents: 1 }], 'invalid_request'],
        [1, 'invalid_request'],
        [null, 'invalid_request'],
      ];
      for (const [json, code, names] of bodies) {
        const res = await svc.send('POST', '/v1/charge', { raw: JSON.stringify(json) });
        expect(res.status, JSON.stringify(json).slice(0, 100)).toBe(400);
        expectError(res, 400, code);
        if (names) expect(res.body.error.message).toMatch(names);
      }
      for (const raw of [`{"key":"${k.key}","costCents":1`, `{"key":"${k.key}","costCents":NaN}`, `{"key":"${k.key}","costCents":Infinity}`, `{"key":"${k.key}","costCents":0x10}`, '']) {
        expectError(await svc.send('POST', '/v1/charge', { raw }), 400, 'invalid_json');
      }
      expectError(await svc.send('POST', '/v1/charge', {}), 400, 'invalid_request');
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 1, metadata: { pad: 'x'.repeat(70_000) } }), 413, 'body_too_large');
      expectError(await svc.send('POST', '/v1/charge', { raw: JSON.stringify({ key: k.key, costCents: 1 }), type: 'text/plain' }), 415, 'unsupported_media_type');
      expect(await snapshot(ak)).toEqual(before);
    });
  });

  describe('POST /v1/charge with a model and usage', () => {
    it("happy: 200 with the catalog's cost charged; the ledger row keeps the model and the token counts; a retry replays, other counts conflict", async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 100 });
      const cost = priced('gpt-4o-mini', USAGE);
      expect(cost).toBeGreaterThan(0);
      const res = await svc.post('/v1/charge', { key: k.key, model: 'gpt-4o-mini', usage: USAGE, idempotencyKey: 'call-1', metadata: { run: 7 } });
      expect(res.status, res.text).toBe(200);
      expect(res.body).toEqual({ success: true, budgetUsedCents: cost, budgetRemainingCents: Number((100 - cost).toFixed(4)), costCents: cost });
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: cost });
      const [row] = await ak.ledger({ keyId: k.id });
      expect(row).toMatchObject({
        kind: 'charge',
        amountCents: cost,
        metadata: { run: 7 },
        model: 'gpt-4o-mini',
        usage: { provider: 'openai', inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200, cacheWriteTokens: 0, reasoningTokens: 100 },
      });
      const retry = await svc.post('/v1/charge', { key: k.key, model: 'gpt-4o-mini', usage: USAGE, idempotencyKey: 'call-1', metadata: { run: 7 } });
      expect(retry.body).toMatchObject({ success: true, replayed: true });
      expectError(await svc.post('/v1/charge', { key: k.key, model: 'gpt-4o-mini', usage: { ...USAGE, outputTokens: 301 }, idempotencyKey: 'call-1' }), 409, 'idempotency_conflict');
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: cost, count: 1 });

      // A provider named beside a model the catalog keeps under it; the counts left out are 0.
      const haiku = priced('claude-haiku-4-5', { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 }, 'anthropic');
      const second = await svc.post('/v1/charge', { key: k.key, provider: 'anthropic', model: 'claude-haiku-4-5', usage: { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 } });
      expect(second.body).toMatchObject({ success: true, budgetUsedCents: Number((cost + haiku).toFixed(4)) });
      expect((await ak.ledger({ keyId: k.id }))[0]).toMatchObject({
        model: 'claude-haiku-4-5',
        usage: { provider: 'anthropic', inputTokens: 3000, outputTokens: 700, cachedInputTokens: 0, cacheWriteTokens: 1000, reasoningTokens: 0 },
      });
      // The charge is counted in /metrics as any other, with the cents it was priced at.
      expect(metric(await svc.metrics(), 'agentkey_charges_total', { kind: 'charge', outcome: 'charged' })).toBe(2);
      expect(metric(await svc.metrics(), 'agentkey_charged_cents_total')).toBeCloseTo(cost + haiku, 6);
      expect(metric(await svc.metrics(), 'agentkey_charges_total', { kind: 'charge', outcome: 'replayed' })).toBe(1);
    });

    it('error: past the budget -> 429 budget_exceeded; a key that is not valid -> 401; nothing is charged', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 0.01 });
      const revoked = await ak.create({ accountId: 'acct_m' });
      await ak.revoke(revoked.id);
      const before = await snapshot(ak);
      const refused = await svc.post('/v1/charge', { key: k.key, model: 'gpt-4o', usage: { inputTokens: 100_000, outputTokens: 10_000 } });
      expectError(refused, 429, 'budget_exceeded');
      expect(refused.body.error).toMatchObject({ limitedBy: { kind: 'key', keyId: k.id }, budgetRemainingCents: 0.01 });
      expectError(await svc.post('/v1/charge', { key: revoked.key, model: 'gpt-4o', usage: USAGE }), 401, 'key_revoked');
      expectError(await svc.post('/v1/charge', { key: 'ak_garbage', model: 'gpt-4o', usage: USAGE }), 401, 'invalid_key');
      expect(await snapshot(ak)).toEqual(before);
    });

    it.each(BAD_COSTS)('error: %s -> 400 with its code and a message that names the mistake; nothing is charged', async (_what, fields, code, names) => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 100 });
      const before = await snapshot(ak);
      const res = await svc.post('/v1/charge', { key: k.key, ...fields });
      expectError(res, 400, code);
      expect(res.body.error.message).toMatch(names);
      expect(await snapshot(ak)).toEqual(before);
    });
  });
});
