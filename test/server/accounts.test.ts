import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { priced } from '../helpers/metered.js';
import { ADMIN, expectError, expectShape, onDatabase } from '../helpers/service.js';

/**
 * The admin API's accounts and reports, on PostgreSQL and PGlite: account ceilings,
 * GET /v1/accounts, GET /v1/ledger and GET /v1/usage (spend by LLM model with byModel=true,
 * and the model and token counts on the ledger rows of calls charged with them).
 */

forEachDatabase((getDb) => {
  const { setup } = onDatabase(getDb);

  describe('/v1/accounts/:id/budget', () => {
    it('happy: PUT sets the ceiling, every key of the account counts against it, GET shows spend and holds, DELETE removes it', async () => {
      const { ak, svc } = await setup();
      const k1 = await ak.create({ accountId: 'acct_x' });
      const k2 = await ak.create({ accountId: 'acct_x' });
      const outsider = await ak.create({ accountId: 'acct_y' });

      const put = await svc.admin('PUT', '/v1/accounts/acct_x/budget', { budgetCents: 10, budgetPeriod: 'month' });
      expect(put.status).toBe(200);
      expect(put.body).toMatchObject({ accountId: 'acct_x', budgetCents: 10, budgetPeriod: 'month', spentCents: 0, heldCents: 0, remainingCents: 10, budgetResetAt: expect.any(String) });
      expect(await ak.getAccountBudget('acct_x')).toEqual(put.body);

      expect((await svc.post('/v1/charge', { key: k1.key, costCents: 6 })).status).toBe(200);
      const refused = await svc.post('/v1/charge', { key: k2.key, costCents: 5 });
      expectError(refused, 429, 'budget_exceeded');
      expect(refused.body.error.limitedBy).toEqual({ kind: 'account', accountId: 'acct_x', window: 'month' });
      expect(await ak.getKey(k2.id)).toMatchObject({ spentCents: 0 });
      expect((await svc.post('/v1/charge', { key: outsider.key, costCents: 50 })).status).toBe(200);
      expect((await svc.post('/v1/reservations', { key: k2.key, costCents: 3 })).status).toBe(201);

      const get = await svc.admin('GET', '/v1/accounts/acct_x/budget');
      expect(get.status).toBe(200);
      expect(get.body).toMatchObject({ accountId: 'acct_x', budgetCents: 10, spentCents: 6, heldCents: 3, remainingCents: 1 });

      // A new ceiling replaces the old one, keeping the spend.
      const raised = await svc.admin('PUT', '/v1/accounts/acct_x/budget', { budgetCents: 20, budgetPeriod: null });
      expect(raised.body).toMatchObject({ budgetCents: 20, budgetPeriod: null, spentCents: 6, remainingCents: 11 });

      const del = await svc.admin('DELETE', '/v1/accounts/acct_x/budget');
      expect(del.status).toBe(200);
      expect(del.body).toEqual({ accountId: 'acct_x', removed: true });
      expect(await ak.getAccountBudget('acct_x')).toBeNull();
      expectError(await svc.admin('GET', '/v1/accounts/acct_x/budget'), 404, 'not_found');
      expectError(await svc.admin('DELETE', '/v1/accounts/acct_x/budget'), 404, 'not_found');
      expect((await svc.post('/v1/charge', { key: k2.key, costCents: 50 })).status).toBe(200);
    });

    it('happy: a numeric account id and an id with odd characters are account ids like any other', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 7 });
      expect((await svc.admin('PUT', '/v1/accounts/7/budget', { budgetCents: 1 })).status).toBe(200);
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 2 }), 429, 'budget_exceeded');
      const odd = await svc.admin('PUT', `/v1/accounts/${encodeURIComponent('org/team a')}/budget`, { budgetCents: 5 });
      expect(odd.status).toBe(200);
      expect(odd.body.accountId).toBe('org/team a');
      expect(await ak.getAccountBudget('org/team a')).toMatchObject({ budgetCents: 5 });
      expectError(await svc.admin('GET', '/v1/accounts/0/budget'), 404, 'not_found');
    });

    it('error: bad bodies and ids -> 400, a huge body -> 413; the ceiling is neither created nor changed', async () => {
      const { ak, svc } = await setup();
      await ak.setAccountBudget('acct_set', { budgetCents: 10, budgetPeriod: 'day' });
      const setBefore = await ak.getAccountBudget('acct_set');
      const bodies: [unknown, string][] = [
        // Neither budgetCents nor budgets: the library says one is required.
        [{}, 'invalid_budget'],
        [{ budgetCents: null }, 'invalid_request'],
        [{ budgetCents: -1 }, 'invalid_request'],
        [{ budgetCents: 'ten' }, 'invalid_request'],
        [{ budgetCents: 1e12 }, 'invalid_request'],
        [{ budget_cents: 10 }, 'invalid_request'],
        [{ budgetCents: 10, budgetPeriod: 'year' }, 'invalid_request'],
        [{ budgetCents: 10, budgetPeriod: 'lifetime' }, 'invalid_request'],
        [{ budgetCents: 10, accountId: 'acct_other' }, 'invalid_request'],
        [[10], 'invalid_request'],
        [10, 'invalid_request'],
      ];
      for (const account of ['acct_new', 'acct_set']) {
        for (const [json, code] of bodies) {
          const res = await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN, raw: JSON.stringify(json) });
          expect(res.status, JSON.stringify(json)).toBe(400);
          expectError(res, 400, code);
        }
        expectError(await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN, raw: '{"budgetCents": 5' }), 400, 'invalid_json');
        // No body reads as {}: neither budgetCents nor budgets, which the library names.
        expectError(await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN }), 400, 'invalid_budget');
        expectError(await svc.admin('PUT', `/v1/accounts/${account}/budget`, { budgetCents: 5, pad: 'x'.repeat(70_000) }), 413, 'body_too_large');
        expectError(await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN, raw: 'budgetCents=5', type: 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type');
      }
      const long = 'a'.repeat(257);
      expectError(await svc.admin('PUT', `/v1/accounts/${long}/budget`, { budgetCents: 5 }), 400, 'invalid_request');
      expectError(await svc.admin('GET', `/v1/accounts/${long}/budget`), 400, 'invalid_request');
      expectError(await svc.admin('DELETE', `/v1/accounts/${long}/budget`), 400, 'invalid_request');
      expect(await ak.getAccountBudget('acct_new')).toBeNull();
      expect(await ak.getAccountBudget(long.slice(0, 256))).toBeNull();
      expect(await ak.getAccountBudget('acct_set')).toEqual(setBefore);
    });
  });

  describe('GET /v1/accounts and GET /v1/ledger', () => {
    it('happy: accounts with keys or a ceiling, their key counts, lifetime spend and ceiling', async () => {
      const { ak, svc } = await setup();
      expect((await svc.admin('GET', '/v1/accounts')).body).toEqual({ accounts: [] });
      const a1 = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const a2 = await ak.create({ accountId: 'acct_a' });
      await ak.create({ accountId: 'acct_b' });
      await ak.revoke(a2.id);
      await ak.setAccountBudget('acct_c', { budgetCents: 300, budgetPeriod: 'month' });
      await ak.setAccountBudget('acct_a', { budgetCents: 1000 });
      expect((await svc.post('/v1/charge', { key: a1.key, costCents: 12.5 })).status).toBe(200);
      expect((await svc.post('/v1/reservations', { key: a1.key, costCents: 5 })).status).toBe(201);
      const res = await svc.admin('GET', '/v1/accounts');
      expect(res.status).toBe(200);
      expect(res.body.accounts.map((a: { accountId: string }) => a.accountId)).toEqual(['acct_a', 'acct_b', 'acct_c']);
      const [a, b, c] = res.body.accounts;
      expect(a).toMatchObject({ keys: 2, liveKeys: 1, spentCents: 12.5, ceiling: { accountId: 'acct_a', budgetCents: 1000, spentCents: 12.5, heldCents: 5, remainingCents: 982.5, budgetPeriod: null } });
      expect(b).toEqual({ accountId: 'acct_b', keys: 1, liveKeys: 1, spentCents: 0, overageCents: 0, ceiling: null, rateLimit: null, concurrency: null });
      expect(c).toMatchObject({ keys: 0, liveKeys: 0, spentCents: 0, ceiling: { budgetCents: 300, budgetPeriod: 'month' } });
      expect((await svc.admin('GET', '/v1/accounts?limit=1')).body.accounts).toHaveLength(1);
    });

    it('happy: ledger rows newest first with kind, amount and metadata, per key or account, paged with before', async () => {
      const { ak, svc } = await setup();
      const k1 = await ak.create({ accountId: 'acct_l' });
      const k2 = await ak.create({ accountId: 'acct_m' });
      expect((await svc.post('/v1/charge', { key: k1.key, costCents: 1.5, metadata: { model: 'm1', inputTokens: 10 } })).status).toBe(200);
      const hold = await svc.post('/v1/reservations', { key: k1.key, costCents: 4 });
      expect((await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: k1.key, costCents: 3 })).status).toBe(200);
      expect((await svc.post('/v1/charge', { key: k2.key, costCents: 2 })).status).toBe(200);
      const rows = (await svc.admin('GET', `/v1/ledger?keyId=${k1.id}`)).body.entries;
      expect(rows.map((r: { kind: string; amountCents: number }) => [r.kind, r.amountCents])).toEqual([['commit', 3], ['hold', 4], ['charge', 1.5]]);
      expect(rows[2]).toMatchObject({ keyId: k1.id, accountId: 'acct_l', metadata: { model: 'm1', inputTokens: 10 }, reservationId: null });
      expect(rows[1].reservationId).toBe(hold.body.reservationId);
      expect(rows[0].id).toBeGreaterThan(rows[1].id);
      const page = (await svc.admin('GET', `/v1/ledger?keyId=${k1.id}&limit=1&before=${rows[0].id}`)).body.entries;
      expect(page.map((r: { id: number }) => r.id)).toEqual([rows[1].id]);
      expect((await svc.admin('GET', '/v1/ledger?accountId=acct_m')).body.entries.map((r: { keyId: number }) => r.keyId)).toEqual([k2.id]);
      expect((await svc.admin('GET', '/v1/ledger')).body.entries).toHaveLength(4);
    });

    it('error: bad query values are 400 and unknown fields are refused', async () => {
      const { svc } = await setup();
      for (const path of ['/v1/accounts?limit=0', '/v1/accounts?limit=x', '/v1/accounts?accountId=a', '/v1/ledger?keyId=abc', '/v1/ledger?limit=1001', '/v1/ledger?before=0', '/v1/ledger?kind=charge']) {
        const res = await svc.admin('GET', path);
        expect(res.status, path).toBe(400);
        expectError(res, 400);
      }
    });
  });

  describe('GET /v1/usage', () => {
    it('happy: charges and commits made over HTTP show up in totals, per key, per account, in hourly and daily buckets, within since/until', async () => {
      const { ak, svc } = await setup();
      const start = new Date(Date.now() - 1_000).toISOString();
      const k1 = await ak.create({ accountId: 'acct_u', budgetCents: 100 });
      const k2 = await ak.create({ accountId: 'acct_u' });
      const k3 = await ak.create({ accountId: 'acct_v' });
      for (const [key, costCents] of [[k1.key, 1.25], [k1.key, 2], [k2.key, 0.5], [k3.key, 4]] as const) {
        expect((await svc.post('/v1/charge', { key, costCents })).status).toBe(200);
      }
      const hold = await svc.post('/v1/reservations', { key: k1.key, costCents: 3 });
      expect((await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: k1.key, costCents: 1 })).status).toBe(200);
      // A refused charge and a released hold are no spend.
      expect((await svc.post('/v1/charge', { key: k1.key, costCents: 1_000 })).status).toBe(429);
      const other = await svc.post('/v1/reservations', { key: k2.key, costCents: 2 });
      expect((await svc.post(`/v1/reservations/${other.body.reservationId}/release`, { key: k2.key })).status).toBe(200);

      const usage = async (query: string) => {
        const res = await svc.admin('GET', `/v1/usage${query}`);
        expect(res.status, query).toBe(200);
        return res.body as { totalCents: number; count: number; buckets: { start: string; costCents: number; count: number }[] };
      };
      expect(await usage('')).toEqual({ totalCents: 8.75, count: 5, overageCents: 0, buckets: [] });
      expect(await usage(`?keyId=${k1.id}`)).toEqual({ totalCents: 4.25, count: 3, overageCents: 0, buckets: [] });
      expect(await usage('?accountId=acct_u')).toEqual({ totalCents: 4.75, count: 4, overageCents: 0, buckets: [] });
      expect(await usage('?accountId=acct_v')).toEqual({ totalCents: 4, count: 1, overageCents: 0, buckets: [] });
      expect(await usage(`?keyId=${k3.id}&accountId=acct_u`)).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      expect(await usage('?accountId=acct_none')).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      expect(await usage(`?since=${encodeURIComponent(start)}`)).toMatchObject({ totalCents: 8.75, count: 5 });
      expect(await usage(`?until=${encodeURIComponent(start)}`)).toMatchObject({ totalCents: 0, count: 0 });
      expect(await usage(`?since=${encodeURIComponent(new Date(Date.now() + 3_600_000).toISOString())}`)).toMatchObject({ totalCents: 0, count: 0 });

      for (const bucket of ['hour', 'day'] as const) {
        const report = await usage(`?accountId=acct_u&bucket=${bucket}`);
        expect(report).toMatchObject({ totalCents: 4.75, count: 4 });
        expect(report.buckets.length).toBeGreaterThanOrEqual(1);
        expect(report.buckets.reduce((s, b) => s + b.costCents, 0)).toBeCloseTo(4.75, 10);
        expect(report.buckets.reduce((s, b) => s + b.count, 0)).toBe(4);
        for (const b of report.buckets) expect(b.start).toMatch(bucket === 'hour' ? /T\d\d:00:00\.000Z$/ : /T00:00:00\.000Z$/);
        expect(report).toEqual(await ak.usage({ accountId: 'acct_u', bucket }));
      }
    });

    it('error: bad query values and unknown parameters -> 400', async () => {
      const { svc } = await setup();
      const cases: [string, string][] = [
        ['bucket=week', 'invalid_request'],
        ['bucket=', 'invalid_request'],
        ['bucket=HOUR', 'invalid_request'],
        ['keyId=abc', 'invalid_request'],
        ['keyId=0', 'invalid_request'],
        ['keyId=-3', 'invalid_request'],
        ['keyId=9999999999999999', 'invalid_argument'],
        ['since=yesterday', 'invalid_argument'],
        ['since=', 'invalid_request'],
        ['until=not-a-date', 'invalid_argument'],
        ['until=2026-01-01T25:00:00Z', 'invalid_argument'],
        ['since=1e400', 'invalid_argument'],
        [`since=${'2'.repeat(65)}`, 'invalid_request'],
        ['accountId=', 'invalid_request'],
        ['accountId=%00', 'invalid_argument'],
        ['key_id=1', 'invalid_request'],
        ['keyId=1&keyId=2', 'invalid_request'],
      ];
      for (const [query, code] of cases) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        expect(res.status, query).toBe(400);
        expectError(res, 400, code);
      }
    });

    it('error: since/until that are not ISO 8601 instants (\'-1\', \'12\', \'2026-02-30\') -> 400, not a silently different window', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a' });
      await ak.trackUsage(k.key, { costCents: 1 });
      const got: Record<string, unknown> = {};
      for (const query of ['since=-1', 'since=12', 'until=2026-02-30', 'since=March%207']) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        got[query] = res.status === 400 ? 400 : res.body;
      }
      expect(got).toEqual({ 'since=-1': 400, 'since=12': 400, 'until=2026-02-30': 400, 'since=March%207': 400 });
    });

    it('error: since/until past the year 9999 are the client\'s values: 200 or 400, never a 5xx', async () => {
      const { svc } = await setup();
      const got: Record<string, number> = {};
      for (const query of ['since=10000-01-01', 'since=99999-01-01', 'until=%2B275760-09-13T00:00:00Z', 'since=0000-01-01']) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        got[query] = res.status;
        if (res.status >= 400) expectShape(res);
      }
      for (const [query, status] of Object.entries(got)) expect([query, [200, 400].includes(status) ? 'ok' : status]).toEqual([query, 'ok']);
    });
  });

  describe('spend by model: GET /v1/usage?byModel=true and the ledger', () => {
    async function metered() {
      const ctx = await setup();
      const { ak, svc } = ctx;
      const a = await ak.create({ accountId: 'acct_llm', budgetCents: 1000 });
      const b = await ak.create({ accountId: 'acct_llm' });
      const c = await ak.create({ accountId: 'acct_other' });
      const calls: [string, Record<string, unknown>][] = [
        [a.key, { model: 'gpt-4o-mini', usage: { inputTokens: 1000, outputTokens: 10 } }],
        [b.key, { model: 'gpt-4o-mini', usage: { inputTokens: 500, outputTokens: 20, cachedInputTokens: 100 } }],
        [a.key, { provider: 'anthropic', model: 'claude-haiku-4-5', usage: { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 } }],
        [c.key, { model: 'gpt-4o', usage: { inputTokens: 50, outputTokens: 50, reasoningTokens: 0 } }],
        // A call in plain cents is spend, and in no model.
        [a.key, { costCents: 3 }],
      ];
      for (const [key, body] of calls) {
        const res = await svc.post('/v1/charge', { key, ...body });
        expect(res.status, res.text).toBe(200);
      }
      return { ...ctx, a, b, c };
    }
    const mini = () => Number((priced('gpt-4o-mini', { inputTokens: 1000, outputTokens: 10 }) + priced('gpt-4o-mini', { inputTokens: 500, outputTokens: 20, cachedInputTokens: 100 })).toFixed(4));
    const haiku = () => priced('claude-haiku-4-5', { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 }, 'anthropic');
    const model = (name: string, provider: string, costCents: number, count: number, tokens: Partial<Record<string, number>>) => ({
      model: name, provider, costCents, overageCents: 0, count,
      inputTokens: 0, outputTokens: 0, cachedInputTokens: 0, cacheWriteTokens: 0, reasoningTokens: 0, ...tokens,
    });

    it('happy: byModel=true adds models, dearest first, per account or key, with token sums; calls in cents are not in it; without it there is no models field', async () => {
      const { ak, svc, a } = await metered();
      const usage = async (query: string) => {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        expect(res.status, `${query}: ${res.text}`).toBe(200);
        return res.body;
      };
      const account = await usage('accountId=acct_llm&byModel=true');
      expect(account.count).toBe(4);
      expect(account.models).toEqual([
        model('claude-haiku-4-5', 'anthropic', haiku(), 1, { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 }),
        model('gpt-4o-mini', 'openai', mini(), 2, { inputTokens: 1500, outputTokens: 30, cachedInputTokens: 100 }),
      ]);
      expect(account).toEqual(await ak.usage({ accountId: 'acct_llm', byModel: true }));
      expect((await usage(`keyId=${a.id}&byModel=true`)).models.map((m: { model: string; count: number }) => [m.model, m.count])).toEqual([['claude-haiku-4-5', 1], ['gpt-4o-mini', 1]]);
      expect((await usage('byModel=true')).models.map((m: { model: string }) => m.model)).toEqual(expect.arrayContaining(['gpt-4o', 'gpt-4o-mini', 'claude-haiku-4-5']));
      // With buckets too; and none in a window with no spend.
      expect(await usage('accountId=acct_llm&byModel=true&bucket=day')).toMatchObject({ count: 4, models: account.models, buckets: [expect.objectContaining({ count: 4 })] });
      const later = encodeURIComponent(new Date(Date.now() + 3_600_000).toISOString());
      expect(await usage(`accountId=acct_llm&byModel=true&since=${later}`)).toMatchObject({ count: 0, models: [] });
      expect(await usage('accountId=acct_llm&byModel=false')).not.toHaveProperty('models');
      expect(await usage('accountId=acct_llm')).not.toHaveProperty('models');
    });

    it('happy: GET /v1/ledger shows the model and token counts on the rows of calls charged with them, and neither on rows in cents', async () => {
      const { svc, a } = await metered();
      const rows = (await svc.admin('GET', `/v1/ledger?keyId=${a.id}`)).body.entries;
      expect(rows.map((r: { kind: string; model?: string }) => [r.kind, r.model ?? null])).toEqual([
        ['charge', null],
        ['charge', 'claude-haiku-4-5'],
        ['charge', 'gpt-4o-mini'],
      ]);
      expect(rows[0]).not.toHaveProperty('usage');
      expect(rows[1]).toMatchObject({
        amountCents: haiku(),
        usage: { provider: 'anthropic', inputTokens: 3000, outputTokens: 700, cachedInputTokens: 0, cacheWriteTokens: 1000, reasoningTokens: 0 },
      });
      expect((await svc.admin('GET', '/v1/ledger?accountId=acct_other')).body.entries).toEqual([
        expect.objectContaining({ model: 'gpt-4o', usage: expect.objectContaining({ provider: 'openai', inputTokens: 50, outputTokens: 50 }) }),
      ]);
    });

    it('error: byModel that is not true or false, or given twice -> 400 invalid_request naming it', async () => {
      const { svc } = await setup();
      for (const query of ['byModel=yes', 'byModel=1', 'byModel=', 'byModel=TRUE', 'byModel=true&byModel=false', 'by_model=true']) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        expectError(res, 400, 'invalid_request');
        expect(res.body.error.message, query).toMatch(/byModel|by_model/);
      }
    });
  });
});
