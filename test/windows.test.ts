import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { committed, reserved, valid } from './helpers/results.js';
import { expectAuditOk, keyCount, tableState } from './helpers/tables.js';
import { utcDayStart, utcMonthStart } from './helpers/utc.js';

/**
 * Budget windows (a daily cap inside a monthly one, and a lifetime cap beside both) on keys,
 * trees and accounts, and the alert events their spend writes to the outbox, on PostgreSQL
 * and PGlite: every window of the key, its ancestors and its account must take a charge or a
 * hold, all or nothing; limitedBy names the window; each resets on its own UTC boundary.
 */

/** Every window row of the table, as the spend function keeps them. */
async function windowRows(db: TestDb, ak: AgentKey) {
  return db.query<{ key_id: string | null; account_id: string; period: string; budget_micros: string; spent_micros: string }>(
    `SELECT key_id::text, account_id, period, budget_micros::text, spent_micros::text FROM ${tableNames(ak.tableName).windows} ORDER BY id`,
  );
}

/** The outbox's threshold events, oldest first, as (owner, window, percent). */
async function thresholdEvents(db: TestDb, ak: AgentKey) {
  const rows = await db.query<{ key_id: string | null; account_id: string; data: { window: string; percent: number; spent_micros: string; budget_micros: string } }>(
    `SELECT key_id::text, account_id, data FROM ${tableNames(ak.tableName).outbox} WHERE type = 'budget.threshold' ORDER BY id`,
  );
  return rows.map((r) => ({ keyId: r.key_id === null ? null : Number(r.key_id), accountId: r.account_id, ...r.data }));
}

/** Ends the current period of every window (and of the keys' first windows) of the table, as if its boundary passed. */
async function endPeriods(db: TestDb, ak: AgentKey, periods: string[]): Promise<void> {
  const t = tableNames(ak.tableName);
  await db.query(`UPDATE ${t.windows} SET reset_at = now() - interval '1 second' WHERE period = ANY($1::text[])`, [periods]);
  await db.query(`UPDATE ${t.table} SET budget_reset_at = now() - interval '1 second' WHERE budget_period = ANY($1::text[])`, [periods]);
}

forEachDatabase((getDb) => {
  describe('windows on a key', () => {
    it('happy: $10 a day, $100 a month and $500 for life in one call; the day window fills the package columns, every window shows', async () => {
      const ak = await getDb().agentKey();
      const made = await ak.create({
        accountId: 'acc',
        budgets: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }, { cents: 50000 }],
      });
      expect(made).toMatchObject({ budgetCents: 1000, budgetPeriod: 'day' });
      const info = (await ak.getKey(made.id))!;
      expect(info.budgets.map((w) => [w.period, w.cents, w.spentCents, w.remainingCents])).toEqual([
        ['day', 1000, 0, 1000],
        ['month', 10000, 0, 10000],
        ['lifetime', 50000, 0, 50000],
      ]);
      const now = new Date();
      expect(info.budgets[1]).toMatchObject({ periodStartAt: utcMonthStart(now), resetAt: utcMonthStart(now, 1) });
      expect(info.budgets[0]!.resetAt).toBe(utcDayStart(now, 1));
      expect(info.budgets[2]).toMatchObject({ periodStartAt: null, resetAt: null });

      expect(await ak.trackUsage(made.key, { costCents: 900 })).toMatchObject({ success: true, budgetUsedCents: 900, budgetRemainingCents: 100 });
      const refused = await ak.trackUsage(made.key, { costCents: 200 });
      expect(refused).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: made.id, window: 'day' } });
      expect(valid(await ak.validate(made.key))).toMatchObject({ budgetCents: 1000, budgetRemainingCents: 100 });
      // usage() reports each window's spend this period beside the ledger's totals.
      expect((await ak.usage({ keyId: made.id })).windows).toBeUndefined();
      const usage = await ak.usage({ keyId: made.id, windows: true });
      expect(usage.totalCents).toBe(900);
      expect(usage.windows!.map((w) => [w.period, w.spentCents, w.remainingCents])).toEqual([['day', 900, 100], ['month', 900, 9100], ['lifetime', 900, 49100]]);
      expect((await ak.usage({ accountId: 'acc', windows: true })).windows).toEqual([]);
      await rejectsWith(() => ak.usage({ windows: true }), 'invalid_argument');
      await rejectsWith(() => ak.usage({ keyId: made.id, windows: 'yes' as never }), 'invalid_argument');
      expect((await windowRows(getDb(), ak)).map((w) => w.spent_micros)).toEqual(['9000000', '9000000']);
      await expectAuditOk(ak);
    });

    it('happy: a week window alone (the package columns cannot hold one) leaves budgetCents null and still caps; validate() shows what it leaves', async () => {
      const ak = await getDb().agentKey();
      const made = await ak.create({ accountId: 'acc', budgets: [{ cents: 300, period: 'week' }] });
      expect(made).toMatchObject({ budgetCents: null, budgetPeriod: null });
      expect(await ak.trackUsage(made.key, { costCents: 250 })).toMatchObject({ success: true, budgetRemainingCents: 50 });
      expect(valid(await ak.validate(made.key))).toMatchObject({ budgetCents: null, budgetRemainingCents: 50 });
      expect(await ak.trackUsage(made.key, { costCents: 60 })).toMatchObject({ success: false, limitedBy: { kind: 'key', window: 'week' } });
      expect(await ak.trackUsage(made.key, { costCents: 50 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.validate(made.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect((await ak.getKey(made.id))!.remainingCents).toBe(0);
    });

    it('happy: each window starts again on its own boundary; the one that frees last is named while several refuse', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 100, period: 'day' }, { cents: 250, period: 'month' }] });
      expect(await ak.trackUsage(k.key, { costCents: 100 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { window: 'day' } });
      await endPeriods(db, ak, ['day']);
      expect(await ak.trackUsage(k.key, { costCents: 100 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      await endPeriods(db, ak, ['day']);
      expect(await ak.trackUsage(k.key, { costCents: 50 })).toMatchObject({ success: true });
      // 250 of the month spent: the month refuses even on a fresh day, and is named over the day once both would refuse.
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { window: 'month' } });
      await endPeriods(db, ak, ['day']);
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { window: 'month' } });
      await endPeriods(db, ak, ['month']);
      expect(await ak.trackUsage(k.key, { costCents: 100 })).toMatchObject({ success: true });
      const info = (await ak.getKey(k.id))!;
      expect(info.budgets.map((w) => [w.period, w.spentCents])).toEqual([['day', 100], ['month', 100]]);
      await expectAuditOk(ak);
    });

    it('happy: a hold counts against every window; a commit past one is overage, named by that window', async () => {
      const ak = await getDb().agentKey();
      const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 1000, period: 'day' }, { cents: 150, period: 'week' }] });
      const h = reserved(await ak.reserve(k.key, { costCents: 100 }));
      expect(await ak.reserve(k.key, { costCents: 60 })).toMatchObject({ success: false, limitedBy: { kind: 'key', window: 'week' } });
      const c = committed(await ak.commit(h.reservationId, { costCents: 200 }));
      expect(c).toMatchObject({ chargedCents: 150, overageCents: 50, overBudget: true, limitedBy: { kind: 'key', keyId: k.id, window: 'week' } });
      const info = (await ak.getKey(k.id))!;
      expect(info.budgets.map((w) => [w.period, w.spentCents])).toEqual([['day', 150], ['week', 150]]);
      expect(info.overageCents).toBe(50);
    });

    it('concurrency: 120 charges on a key with a day and a tighter month window stop at the month exactly; every refusal names it', async () => {
      const ak = await getDb().agentKey();
      const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 1000, period: 'day' }, { cents: 300, period: 'month' }] });
      const results = await Promise.all(Array.from({ length: 120 }, () => ak.trackUsage(k.key, { costCents: 7 })));
      expect(results.filter((r) => r.success)).toHaveLength(Math.floor(300 / 7));
      for (const r of results.filter((x) => !x.success)) expect(r).toMatchObject({ reason: 'budget_exceeded', limitedBy: { window: 'month' } });
      expect((await ak.getKey(k.id))!.budgets.map((w) => w.spentCents)).toEqual([294, 294]);
      await expectAuditOk(ak);
    });
  });

  describe('windows up the tree and on accounts', () => {
    it('concurrency: children share their parent\'s day window: charges from five children stop at it, named as the ancestor\'s day', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgets: [{ cents: 10000, period: 'month' }, { cents: 500, period: 'day' }] });
      const kids = await Promise.all([0, 1, 2, 3, 4].map(() => ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 400 })));
      const results = await Promise.all(Array.from({ length: 100 }, (_, i) => ak.trackUsage(kids[i % 5]!.key, { costCents: 10 })));
      expect(results.filter((r) => r.success)).toHaveLength(50);
      for (const r of results.filter((x) => !x.success)) {
        expect(r).toMatchObject({ limitedBy: { kind: 'ancestor', keyId: root.id, window: 'day' } });
      }
      const info = (await ak.getKey(root.id))!;
      expect(info.budgets.map((w) => [w.period, w.spentCents])).toEqual([['month', 500], ['day', 500]]);
      // A cached validation of a child knows its ancestor's day window is spent.
      expect(await ak.validate(kids[0]!.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      await expectAuditOk(ak);
    });

    it('happy: an account with a week ceiling and a day window: its keys stop at the day, named as the account\'s', async () => {
      const ak = await getDb().agentKey();
      const a = await ak.setAccountBudget('acc_w', { budgets: [{ cents: 1000, period: 'week' }, { cents: 300, period: 'day' }] });
      expect(a).toMatchObject({ budgetCents: 1000, budgetPeriod: 'week' });
      expect(a.budgets.map((w) => [w.period, w.cents])).toEqual([['week', 1000], ['day', 300]]);
      const k1 = await ak.create({ accountId: 'acc_w' });
      const k2 = await ak.create({ accountId: 'acc_w', budgetCents: 5000 });
      const results = await Promise.all(Array.from({ length: 40 }, (_, i) => ak.trackUsage((i % 2 ? k1 : k2).key, { costCents: 10 })));
      expect(results.filter((r) => r.success)).toHaveLength(30);
      for (const r of results.filter((x) => !x.success)) expect(r).toMatchObject({ limitedBy: { kind: 'account', accountId: 'acc_w', window: 'day' } });
      expect((await ak.getAccountBudget('acc_w'))!.budgets.map((w) => w.spentCents)).toEqual([300, 300]);
      // Removing the ceiling removes its windows.
      expect(await ak.clearAccountBudget('acc_w')).toBe(true);
      expect(await ak.trackUsage(k1.key, { costCents: 10 })).toMatchObject({ success: true });
      expect(await windowRows(getDb(), ak)).toEqual([]);
    });

    it('happy: update() replaces a key\'s windows; a new window starts from this period\'s spend in the ledger (its subtree\'s)', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id });
      expect(await ak.trackUsage(child.key, { costCents: 300 })).toMatchObject({ success: true });
      const info = await ak.update(root.id, { budgets: [{ cents: 100000 }, { cents: 350, period: 'day' }] });
      expect(info).toMatchObject({ budgetCents: 100000, budgetPeriod: null });
      expect(info.budgets.map((w) => [w.period, w.spentCents, w.remainingCents])).toEqual([['lifetime', 300, 99700], ['day', 300, 50]]);
      expect(await ak.trackUsage(child.key, { costCents: 60 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', window: 'day' } });
      // Back to one budget: the windows go; [] takes every window away.
      const plain = await ak.update(root.id, { budgets: [{ cents: 1000 }] });
      expect(plain.budgets.map((w) => w.period)).toEqual(['lifetime']);
      expect(await windowRows(getDb(), ak)).toEqual([]);
      expect(await ak.trackUsage(child.key, { costCents: 60 })).toMatchObject({ success: true });
      await ak.update(root.id, { budgets: [{ cents: 5000, period: 'month' }, { cents: 50, period: 'week' }] });
      const none = await ak.update(root.id, { budgets: [] });
      expect(none).toMatchObject({ budgetCents: null, budgetPeriod: null, remainingCents: null, budgets: [] });
      expect(await windowRows(getDb(), ak)).toEqual([]);
      expect(await ak.trackUsage(child.key, { costCents: 60 })).toMatchObject({ success: true });
    });

    it('property: random windows on a parent, a child and the account, random concurrent charges: no window ever passes its cap, counters match the ledger', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            parent: fc.integer({ min: 50, max: 400 }),
            childDay: fc.integer({ min: 20, max: 300 }),
            account: fc.integer({ min: 50, max: 500 }),
            costs: fc.array(fc.integer({ min: 1, max: 60 }), { minLength: 5, maxLength: 40 }),
          }),
          async ({ parent, childDay, account, costs }) => {
            const ak = await getDb().agentKey();
            const acct = `acc_${Math.random().toString(36).slice(2)}`;
            await ak.setAccountBudget(acct, { budgets: [{ cents: 100000, period: 'month' }, { cents: account, period: 'week' }] });
            const root = await ak.create({ accountId: acct, budgets: [{ cents: 100000 }, { cents: parent, period: 'month' }] });
            const child = await ak.create({ accountId: acct, parentId: root.id, budgets: [{ cents: 100000 }, { cents: childDay, period: 'day' }] });
            const results = await Promise.all(costs.map((c, i) => ak.trackUsage((i % 3 ? child : root).key, { costCents: c })));
            const spent = results.reduce((sum, r, i) => sum + (r.success ? (costs[i] as number) : 0), 0);
            const rows = await windowRows(getDb(), ak);
            for (const w of rows) expect(BigInt(w.spent_micros)).toBeLessThanOrEqual(BigInt(w.budget_micros));
            const byOwner = (period: string, key: number | null) =>
              Number(rows.find((w) => w.period === period && (key === null ? w.key_id === null : Number(w.key_id) === key))!.spent_micros) / 10_000;
            expect(byOwner('week', null)).toBe(spent);
            expect(byOwner('month', root.id)).toBe(spent);
            const childSpent = results.reduce((sum, r, i) => sum + (r.success && i % 3 ? (costs[i] as number) : 0), 0);
            expect(byOwner('day', child.id)).toBe(childSpent);
            // A refusal was right: the cost did not fit some window at its turn (checked loosely: the tightest cap is not passed).
            expect(spent).toBeLessThanOrEqual(Math.min(parent, account));
            await expectAuditOk(ak);
          },
        ),
        { numRuns: 8 },
      );
    });
  });

  describe('alerts', () => {
    it('concurrency: 60 charges crossing 50, 80 and 100 percent of a day window together write each threshold exactly once, with the figures', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 1000, period: 'day' }, { cents: 5000, period: 'week' }], alerts: [50, 80, 100] });
      expect((await ak.getKey(k.id))!.alerts).toEqual([50, 80, 100]);
      const results = await Promise.all(Array.from({ length: 60 }, () => ak.trackUsage(k.key, { costCents: 20 })));
      expect(results.filter((r) => r.success)).toHaveLength(50);
      const events = await thresholdEvents(db, ak);
      expect(events.filter((e) => e.window === 'day').map((e) => e.percent)).toEqual([50, 80, 100]);
      for (const e of events) {
        expect(e).toMatchObject({ keyId: k.id, accountId: 'acc' });
        expect(BigInt(e.spent_micros) * 100n).toBeGreaterThanOrEqual(BigInt(e.percent) * BigInt(e.budget_micros));
      }
      // The week window (5000) reached 20%: no event for it.
      expect(events.filter((e) => e.window === 'week')).toEqual([]);
      // Crossing again in the same period (its end names it) writes nothing more.
      await ak.adjust(k.id, { costCents: -600, reason: 'refund' });
      expect(await ak.trackUsage(k.key, { costCents: 600 })).toMatchObject({ success: true });
      expect((await thresholdEvents(db, ak)).length).toBe(3);
      const names = await db.query<{ dedupe: string }>(`SELECT dedupe FROM ${tableNames(ak.tableName).outbox} ORDER BY id`);
      const end = (await ak.getKey(k.id))!.budgetResetAt;
      expect(names.map((n) => JSON.parse(n.dedupe))).toEqual(
        [50, 80, 100].map((p) => ['threshold', k.id, 'acc', 'day', Date.parse(end!) * 1000, p]),
      );
    });

    it('happy: the table\'s percents apply where a key or account sets none; [] turns a key\'s off; an account\'s windows alert too', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      expect(await ak.getAlerts()).toBeNull();
      expect(await ak.setAlerts([90, 50, 90])).toEqual([50, 90]);
      expect(await ak.getAlerts()).toEqual([50, 90]);
      const quiet = await ak.create({ accountId: 'acc_a', budgetCents: 100, alerts: [] });
      const loud = await ak.create({ accountId: 'acc_a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.setAccountBudget('acc_a', { budgetCents: 1000, alerts: [10] });
      await ak.trackUsage(quiet.key, { costCents: 95 });
      await ak.trackUsage(loud.key, { costCents: 95 });
      const events = await thresholdEvents(db, ak);
      expect(events.map((e) => [e.keyId, e.window, e.percent])).toEqual([
        [loud.id, 'month', 50],
        [loud.id, 'month', 90],
        [null, 'lifetime', 10],
      ]);
      expect(await ak.setAlerts(null)).toBeNull();
      expect(await ak.getAlerts()).toBeNull();
    });
  });

  describe('bad input', () => {
    it.each([
      ['budgets beside budgetCents', { budgetCents: 10, budgets: [{ cents: 10 }] }, 'invalid_argument', /not both/],
      ['five windows', { budgets: [1, 2, 3, 4, 5].map((c) => ({ cents: c })) }, 'invalid_budget', /at most 4 windows/],
      ['two day windows', { budgets: [{ cents: 1, period: 'day' }, { cents: 2, period: 'day' }] }, 'invalid_budget', /two day windows/],
      ['a year', { budgets: [{ cents: 1, period: 'year' }] }, 'invalid_period', /budgets\[0\]\.period/],
      ['no cents', { budgets: [{ period: 'day' }] }, 'invalid_budget', /budgets\[0\]\.cents is required/],
      ['negative cents', { budgets: [{ cents: -1 }] }, 'invalid_budget', /budgets\[0\]\.cents must be/],
      ['an unknown field', { budgets: [{ cents: 1, every: 'day' }] }, 'invalid_budget', /unknown field "every"/],
      ['not a list', { budgets: { cents: 1 } }, 'invalid_budget', /must be a list/],
      ['alerts of 0', { budgetCents: 1, alerts: [80, 0] }, 'invalid_argument', /whole percents from 1 to 100.*got 0\./],
      ['alerts of 101', { budgetCents: 1, alerts: [101] }, 'invalid_argument', /whole percents/],
      ['alerts as text', { budgetCents: 1, alerts: '80' }, 'invalid_argument', /whole percents/],
    ])('%s: a clear error, nothing made', async (_name, options, code, message) => {
      const db = getDb();
      const ak = await db.agentKey();
      const before = await tableState(db, ak);
      const err = await rejectsWith(() => ak.create({ accountId: 'acc', ...(options as object) }), code);
      expect(err.message).toMatch(message);
      expect(await tableState(db, ak)).toBe(before);
      expect(await keyCount(db, ak)).toBe(0);
      expect(await windowRows(db, ak)).toEqual([]);
    });

    it('update(), setAccountBudget() and setAlerts() refuse bad windows and percents and change nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 'acc', budgets: [{ cents: 100, period: 'day' }, { cents: 500, period: 'month' }] });
      const before = [await tableState(db, ak), await windowRows(db, ak)];
      await rejectsWith(() => ak.update(k.id, { budgets: [{ cents: 1, period: 'day' }, { cents: 1, period: 'day' }] }), 'invalid_budget');
      await rejectsWith(() => ak.update(k.id, { budgets: [{ cents: 1 }], budgetPeriod: 'day' }), 'invalid_argument');
      await rejectsWith(() => ak.update(k.id, { alerts: [50.5] }), 'invalid_argument');
      await rejectsWith(() => ak.setAccountBudget('acc', { budgets: [] }), 'invalid_budget');
      await rejectsWith(() => ak.setAccountBudget('acc', { budgets: [{ cents: 1 }, { cents: 2 }] }), 'invalid_budget');
      await rejectsWith(() => ak.setAccountBudget('acc', { budgets: [{ cents: 1 }], budgetCents: 1 } as never), 'invalid_argument');
      await rejectsWith(() => ak.setAlerts([0]), 'invalid_argument');
      expect([await tableState(db, ak), await windowRows(db, ak)]).toEqual(before);
      expect(await ak.getAlerts()).toBeNull();
    });
  });
});

forEachDatabase((getDb) => {
  describe('the whole of it in one call', () => {
    it("happy: $10 a day, $100 a month, warn at 80% and 60 requests a minute in one create(): each holds", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const agent = await ak.create({
        accountId: 'acct_123',
        budgets: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }],
        alerts: [80],
        rateLimit: { requests: 60, per: '1m' },
      });
      const checks = [];
      for (let i = 0; i < 61; i++) checks.push(await ak.validate(agent.key));
      expect(checks.slice(0, 60).every((r) => r.valid)).toBe(true);
      expect(checks[60]).toMatchObject({ valid: false, reason: 'rate_limited' });
      expect(await ak.trackUsage(agent.key, { costCents: 850 })).toMatchObject({ success: true, budgetRemainingCents: 150 });
      expect(await ak.trackUsage(agent.key, { costCents: 151 })).toMatchObject({ success: false, limitedBy: { kind: 'key', window: 'day' } });
      expect((await thresholdEvents(db, ak)).map((e) => [e.window, e.percent])).toEqual([['day', 80]]);
    });
  });
});
