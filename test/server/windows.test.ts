import { describe, expect, it } from 'vitest';
import { tableNames } from '../../src/store/identifiers.js';
import type { AgentKey } from '../../src/index.js';
import { type TestDb, forEachDatabase } from '../helpers/databases.js';
import { ADMIN, countKeys, expectError, onDatabase, snapshot } from '../helpers/service.js';

/**
 * Budget windows and alert percents over HTTP, on PostgreSQL and PGlite: a key with several
 * windows and its own alerts made in one request, charges refused by the window that frees
 * last (limitedBy.window in the 429), windows changed with PATCH, an account's windows with
 * PUT /v1/accounts/:id/budget, the table's percents with GET/PUT /v1/alerts, and bad input.
 */

/** The outbox's threshold events, oldest first, as (owner, window, percent). */
async function thresholds(db: TestDb, ak: AgentKey) {
  const rows = await db.query<{ key_id: string | null; data: { window: string; percent: number } }>(
    `SELECT key_id::text, data FROM ${tableNames(ak.tableName).outbox} WHERE type = 'budget.threshold' ORDER BY id`,
  );
  return rows.map((r) => [r.key_id === null ? null : Number(r.key_id), r.data.window, r.data.percent]);
}

const windows = (body: { budgets: { period: string; cents: number; spentCents: number | string; remainingCents: number }[] }) =>
  body.budgets.map((w) => [w.period, w.cents, w.spentCents, w.remainingCents]);

forEachDatabase((getDb) => {
  const { setup, createKey } = onDatabase(getDb);

  describe('budget windows over HTTP', () => {
    it('happy: "$10 a day, $100 a month, warn at 80%" in one request; charges stop at the day window, 429 names it; PATCH changes the windows', async () => {
      const { db, ak, svc } = await setup();
      const made = await createKey(svc, {
        accountId: 'acct_w',
        budgets: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }],
        alerts: [80],
      });
      expect(made).toMatchObject({ budgetCents: 1000, budgetPeriod: 'day', alerts: [80] });
      expect(windows(made as never)).toEqual([['day', 1000, 0, 1000], ['month', 10000, 0, 10000]]);
      const [day, month] = (made as unknown as { budgets: { resetAt: string | null; periodStartAt: string | null }[] }).budgets;
      expect(Date.parse(day!.resetAt as string)).toBeGreaterThan(Date.now());
      expect(new Date(month!.periodStartAt as string).getUTCDate()).toBe(1);
      expect(Date.parse(month!.resetAt as string)).toBeGreaterThanOrEqual(Date.parse(day!.resetAt as string));

      expect((await svc.post('/v1/charge', { key: made.key, costCents: 600 })).status).toBe(200);
      expect(await thresholds(db, ak)).toEqual([]);
      const second = await svc.post('/v1/charge', { key: made.key, costCents: 300 });
      expect(second.status).toBe(200);
      expect(second.body).toMatchObject({ budgetUsedCents: 900, budgetRemainingCents: 100 });
      // 900 of 1000 crossed 80% of the day window (not of the month's): one event.
      expect(await thresholds(db, ak)).toEqual([[made.id, 'day', 80]]);

      const refused = await svc.post('/v1/charge', { key: made.key, costCents: 200 });
      expectError(refused, 429, 'budget_exceeded');
      expect(refused.body.error.limitedBy).toEqual({ kind: 'key', keyId: made.id, window: 'day' });
      const hold = await svc.post('/v1/reservations', { key: made.key, costCents: 200 });
      expectError(hold, 429, 'budget_exceeded');
      expect(hold.body.error.limitedBy).toEqual({ kind: 'key', keyId: made.id, window: 'day' });
      expect(windows((await svc.admin('GET', `/v1/keys/${made.id}`)).body)).toEqual([['day', 1000, 900, 100], ['month', 10000, 900, 9100]]);

      // A roomier day under a tighter month: the month (kept, with its 900) refuses now.
      const patched = await svc.admin('PATCH', `/v1/keys/${made.id}`, { budgets: [{ cents: 5000, period: 'day' }, { cents: 1000, period: 'month' }] });
      expect(patched.status, patched.text).toBe(200);
      expect(windows(patched.body)).toEqual([['day', 5000, 900, 4100], ['month', 1000, 900, 100]]);
      expect(patched.body).toMatchObject({ budgetCents: 5000, budgetPeriod: 'day', remainingCents: 100, alerts: [80] });
      const byMonth = await svc.post('/v1/charge', { key: made.key, costCents: 150 });
      expectError(byMonth, 429, 'budget_exceeded');
      expect(byMonth.body.error.limitedBy).toEqual({ kind: 'key', keyId: made.id, window: 'month' });

      // Both full: of the windows that refuse, the one that frees last (the month) is named.
      await svc.admin('PATCH', `/v1/keys/${made.id}`, { budgets: [{ cents: 900, period: 'day' }, { cents: 900, period: 'month' }] });
      const both = await svc.post('/v1/charge', { key: made.key, costCents: 1 });
      expect(both.body.error.limitedBy).toEqual({ kind: 'key', keyId: made.id, window: 'month' });

      // Its own alerts: changed, then back to the table's (null), then none ([]).
      expect((await svc.admin('PATCH', `/v1/keys/${made.id}`, { alerts: [90, 50] })).body.alerts).toEqual([50, 90]);
      expect((await svc.admin('PATCH', `/v1/keys/${made.id}`, { alerts: null })).body.alerts).toBeNull();
      expect((await svc.admin('PATCH', `/v1/keys/${made.id}`, { alerts: [] })).body.alerts).toEqual([]);
      // A week window alone: the package columns cannot hold it, so budgetCents is null and it still caps.
      const weekly = await svc.admin('PATCH', `/v1/keys/${made.id}`, { budgets: [{ cents: 2000, period: 'week' }] });
      expect(weekly.body).toMatchObject({ budgetCents: null, budgetPeriod: null, remainingCents: 1100 });
      expect(windows(weekly.body)).toEqual([['week', 2000, 900, 1100]]);
      expect((await svc.admin('GET', '/v1/keys?accountId=acct_w')).body.keys[0].budgets).toEqual(weekly.body.budgets);
    });

    it('happy: an account gets windows and alerts with PUT /v1/accounts/:id/budget; its week window refuses with kind account', async () => {
      const { ak, svc } = await setup();
      const k = await createKey(svc, { accountId: 'acct_a', budgetCents: 100_000 });
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 900 })).status).toBe(200);

      const put = await svc.admin('PUT', '/v1/accounts/acct_a/budget', { budgets: [{ cents: 2000, period: 'week' }, { cents: 50_000 }], alerts: [50] });
      expect(put.status, put.text).toBe(200);
      // The first window is the ceiling (an account's takes a week); this week's spend comes from the ledger.
      expect(put.body).toMatchObject({ accountId: 'acct_a', budgetCents: 2000, budgetPeriod: 'week', spentCents: 900, alerts: [50] });
      expect(windows(put.body)).toEqual([['week', 2000, 900, 1100], ['lifetime', 50_000, 900, 49_100]]);
      expect(put.body.budgets[1]).toMatchObject({ periodStartAt: null, resetAt: null });
      expect(new Date(put.body.budgets[0].periodStartAt).getUTCDay()).toBe(1);
      expect(await ak.getAccountBudget('acct_a')).toEqual(put.body);
      expect((await svc.admin('GET', '/v1/accounts/acct_a/budget')).body).toEqual(put.body);
      expect((await svc.admin('GET', '/v1/accounts')).body.accounts[0].ceiling.budgets).toEqual(put.body.budgets);

      const refused = await svc.post('/v1/charge', { key: k.key, costCents: 1200 });
      expectError(refused, 429, 'budget_exceeded');
      expect(refused.body.error.limitedBy).toEqual({ kind: 'account', accountId: 'acct_a', window: 'week' });
      expect((await ak.getKey(k.id))?.spentCents).toBe(900);

      // A single ceiling replaces the windows; alerts not given stay.
      const single = await svc.admin('PUT', '/v1/accounts/acct_a/budget', { budgetCents: 5000, budgetPeriod: 'month' });
      expect(single.body).toMatchObject({ budgetCents: 5000, budgetPeriod: 'month', alerts: [50] });
      expect(windows(single.body)).toEqual([['month', 5000, 900, 4100]]);
    });

    it('happy: GET/PUT /v1/alerts read and set the table\'s percents, sorted, once each; null or [] for none', async () => {
      const { ak, svc } = await setup();
      expect(await svc.admin('GET', '/v1/alerts')).toMatchObject({ status: 200, body: { percents: null } });
      const put = await svc.admin('PUT', '/v1/alerts', { percents: [100, 50, 80, 50] });
      expect(put).toMatchObject({ status: 200, body: { percents: [50, 80, 100] } });
      expect((await svc.admin('GET', '/v1/alerts')).body).toEqual({ percents: [50, 80, 100] });
      expect(await ak.getAlerts()).toEqual([50, 80, 100]);
      expect((await svc.admin('PUT', '/v1/alerts', { percents: [] })).body).toEqual({ percents: null });
      expect(await ak.getAlerts()).toBeNull();
      await ak.setAlerts([25]);
      expect((await svc.admin('PUT', '/v1/alerts', { percents: null })).body).toEqual({ percents: null });
      expect((await svc.admin('GET', '/v1/alerts')).body).toEqual({ percents: null });
    });

    it('security: the alert routes need the admin key', async () => {
      const { ak, svc } = await setup();
      const agent = await ak.create({ accountId: 'acct_s' });
      expectError(await svc.send('GET', '/v1/alerts'), 401, 'missing_admin_key');
      expectError(await svc.send('PUT', '/v1/alerts', { json: { percents: [50] } }), 401, 'missing_admin_key');
      expectError(await svc.send('PUT', '/v1/alerts', { json: { percents: [50] }, bearer: agent.key }), 401, 'invalid_admin_key');
      expect(await ak.getAlerts()).toBeNull();
    });

    it('error: bad windows and percents on every route -> 400 with a code and a message; no key, window, ceiling or percent changes', async () => {
      const { db, ak, svc } = await setup();
      const k = await createKey(svc, { accountId: 'acct_e', budgets: [{ cents: 1000, period: 'day' }, { cents: 5000, period: 'week' }], alerts: [80] });
      await ak.setAccountBudget('acct_e', { budgets: [{ cents: 9000, period: 'month' }, { cents: 3000, period: 'day' }], alerts: [90] });
      await ak.setAlerts([50]);
      const before = { keys: await countKeys(db, ak), state: await snapshot(ak), ceiling: await ak.getAccountBudget('acct_e') };

      const badWindows: [unknown, string][] = [
        [[{ cents: 1, period: 'day' }, { cents: 2, period: 'day' }], 'invalid_budget'],
        [[{ cents: 1, period: 'day' }, { cents: 2, period: 'week' }, { cents: 3, period: 'month' }, { cents: 4 }, { cents: 5, period: 'lifetime' }], 'invalid_budget'],
        [[{ cents: 1, period: 'year' }], 'invalid_request'],
        [[{ cents: -1, period: 'day' }], 'invalid_request'],
        [[{ period: 'day' }], 'invalid_request'],
        [[{ cents: 'ten', period: 'day' }], 'invalid_request'],
        [[{ cents: 1, period: 'day', label: 'x' }], 'invalid_request'],
        [[1000], 'invalid_request'],
        [{ cents: 1000, period: 'day' }, 'invalid_request'],
        ['day:1000', 'invalid_request'],
        [null, 'invalid_request'],
      ];
      const badAlerts: [unknown, string][] = [
        [[0], 'invalid_argument'],
        [[101], 'invalid_argument'],
        [[-5], 'invalid_argument'],
        [Array.from({ length: 11 }, (_, i) => i + 1), 'invalid_argument'],
        [[50.5], 'invalid_request'],
        [['80'], 'invalid_request'],
        [80, 'invalid_request'],
      ];
      const check = async (method: string, path: string, json: unknown, code: string) => {
        const res = await svc.send(method, path, { bearer: ADMIN, json });
        expect(res.status, `${method} ${path} ${JSON.stringify(json)}: ${res.text}`).toBe(400);
        expectError(res, 400, code);
        expect(res.body.error.message.length).toBeGreaterThan(10);
      };
      // [] is no budget on a key (its windows all go), but no ceiling for an account.
      await check('PUT', '/v1/accounts/acct_e/budget', { budgets: [] }, 'invalid_budget');
      await check('PUT', '/v1/accounts/acct_new/budget', { budgets: [] }, 'invalid_budget');
      for (const [budgets, code] of badWindows) {
        await check('POST', '/v1/keys', { accountId: 'acct_e', budgets }, code);
        await check('PATCH', `/v1/keys/${k.id}`, { budgets }, code);
        await check('PUT', '/v1/accounts/acct_e/budget', { budgets }, code);
        await check('PUT', '/v1/accounts/acct_new/budget', { budgets }, code);
      }
      for (const [alerts, code] of badAlerts) {
        await check('POST', '/v1/keys', { accountId: 'acct_e', budgetCents: 5, alerts }, code);
        await check('PATCH', `/v1/keys/${k.id}`, { alerts }, code);
        await check('PUT', '/v1/accounts/acct_e/budget', { budgetCents: 5, alerts }, code);
        await check('PUT', '/v1/alerts', { percents: alerts }, code);
      }
      // budgets is instead of budgetCents/budgetPeriod, never beside them.
      await check('POST', '/v1/keys', { accountId: 'acct_e', budgetCents: 5, budgets: [{ cents: 1, period: 'day' }] }, 'invalid_argument');
      await check('PATCH', `/v1/keys/${k.id}`, { budgetPeriod: 'month', budgets: [{ cents: 1, period: 'day' }] }, 'invalid_argument');
      await check('PUT', '/v1/accounts/acct_e/budget', { budgetCents: 5, budgets: [{ cents: 1, period: 'day' }] }, 'invalid_argument');
      await check('PUT', '/v1/accounts/acct_e/budget', { alerts: [50] }, 'invalid_budget');
      await check('PUT', '/v1/alerts', {}, 'invalid_request');
      await check('PUT', '/v1/alerts', { percents: [50], scope: 'global' }, 'invalid_request');
      await check('PUT', '/v1/alerts', [50], 'invalid_request');
      expectError(await svc.send('PUT', '/v1/alerts', { bearer: ADMIN, raw: '{"percents": [50' }), 400, 'invalid_json');
      expectError(await svc.send('PUT', '/v1/alerts', { bearer: ADMIN, raw: 'percents=50', type: 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type');

      expect(await countKeys(db, ak)).toBe(before.keys);
      expect(await snapshot(ak)).toEqual(before.state);
      expect(await ak.getAccountBudget('acct_e')).toEqual(before.ceiling);
      expect(await ak.getAccountBudget('acct_new')).toBeNull();
      expect(await ak.getAlerts()).toEqual([50]);
      expect((await ak.getKey(k.id))?.alerts).toEqual([80]);
    });
  });
});
