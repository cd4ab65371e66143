import { describe, expect, it } from 'vitest';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase } from './helpers/databases.js';
import { codeOf } from './helpers/errors.js';
import { spentOf } from './helpers/results.js';
import { expectAuditOk, expectRefused } from './helpers/tables.js';
import { utcDayStart, utcMonthStart } from './helpers/utc.js';

/**
 * Budgets up a delegation tree and account ceilings, on PostgreSQL and PGlite: a charge or a hold
 * counts against the key, every ancestor and the account at once, all or nothing; ceilings with
 * their own periods; the spend functions' edge cases; and audit() of trees and accounts.
 */

forEachDatabase((getDb) => {
  describe('spend counts up the tree', () => {
    it('concurrency: five children (1000 each) of a 1000-cent parent stop at exactly 1000 in total; limitedBy names the parent', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 1000 });
      const kids = await Promise.all([0, 1, 2, 3, 4].map(() => ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 1000 })));
      const results = await Promise.all(Array.from({ length: 160 }, (_, i) => ak.trackUsage(kids[i % 5]!.key, { costCents: 10 })));
      expect(results.filter((r) => r.success)).toHaveLength(100);
      for (const r of results.filter((x) => !x.success)) {
        expect(r).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'ancestor', keyId: root.id } });
      }
      expect(await spentOf(ak, root.id)).toBe(1000);
      const kidSpend = await Promise.all(kids.map((k) => spentOf(ak, k.id)));
      expect(kidSpend.reduce((a, b) => a + b, 0)).toBe(1000);
      // Nothing left: validate() refuses the parent (as the package refuses a spent key), and so its children too.
      expect(await ak.getKey(root.id)).toMatchObject({ spentCents: 1000, heldCents: 0, remainingCents: 0 });
      expect(await ak.validate(root.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      for (const k of kids) expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      // The parent's own charge is refused by its own budget.
      expect(await ak.trackUsage(root.key, { costCents: 0.0001 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: root.id } });
      expect(await ak.trackUsage(root.key, { costCents: 0 })).toMatchObject({ success: true });
      await expectAuditOk(ak);
    });

    it('concurrency: holds from five children also stop at the parent budget, then commits and releases settle it', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 300 });
      const kids = await Promise.all([0, 1, 2, 3, 4].map(() => ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 300 })));
      const holds = await Promise.all(
        Array.from({ length: 60 }, (_, i) => (i % 3 === 0 ? ak.trackUsage(kids[i % 5]!.key, { costCents: 10 }) : ak.reserve(kids[i % 5]!.key, { costCents: 10 }))),
      );
      expect(holds.filter((r) => r.success)).toHaveLength(30);
      for (const r of holds.filter((x) => !x.success)) expect(r).toMatchObject({ limitedBy: { kind: 'ancestor', keyId: root.id } });
      const info = (await ak.getKey(root.id))!;
      expect(Number(info.spentCents) + Number(info.heldCents)).toBe(300);
      expect(info.remainingCents).toBe(0);
      const ids = holds.filter((r): r is Extract<typeof r, { reservationId: string }> => r.success && 'reservationId' in r).map((r) => r.reservationId);
      const settled = await Promise.all(ids.map((id, i) => (i % 2 === 0 ? ak.commit(id, { costCents: 4 }) : ak.release(id))));
      expect(settled.every((s) => s.success)).toBe(true);
      const after = (await ak.getKey(root.id))!;
      expect(after.heldCents).toBe(0);
      expect(after.spentCents).toBe(Number(info.spentCents) + 4 * Math.ceil(ids.length / 2));
      await expectAuditOk(ak);
    });

    it('happy: the nearest budget that refuses is named (key, parent, or grandparent)', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 100 });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 50 });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id, budgetCents: 30 });
      expect(await ak.trackUsage(leaf.key, { costCents: 31 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: leaf.id }, budgetUsedCents: 0, budgetRemainingCents: 30 });
      expect(await ak.trackUsage(mid.key, { costCents: 40 })).toMatchObject({ success: true, budgetUsedCents: 40 });
      expect(await ak.trackUsage(leaf.key, { costCents: 11 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: mid.id } });
      expect(await ak.trackUsage(root.key, { costCents: 55 })).toMatchObject({ success: true });
      // Both mid (40+6 <= 50) and leaf fit, the root (95+6) does not.
      expect(await ak.trackUsage(leaf.key, { costCents: 6 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: root.id } });
      expect(await ak.reserve(leaf.key, { costCents: 6 })).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'ancestor', keyId: root.id } });
      expect(await ak.trackUsage(leaf.key, { costCents: 5 })).toMatchObject({ success: true, budgetUsedCents: 5, budgetRemainingCents: 25 });
      expect([await spentOf(ak, root.id), await spentOf(ak, mid.id), await spentOf(ak, leaf.id)]).toEqual([100, 45, 5]);
      // Idempotent replays in a child are not counted twice up the tree.
      const unl = await ak.create({ accountId: 'acc2' });
      const c = await ak.create({ accountId: 'acc2', parentId: unl.id });
      await ak.trackUsage(c.key, { costCents: 7, idempotencyKey: 'req-1' });
      expect(await ak.trackUsage(c.key, { costCents: 7, idempotencyKey: 'req-1' })).toMatchObject({ success: true, replayed: true });
      expect(await spentOf(ak, unl.id)).toBe(7);
      // Adjustments count up the tree too; a refund may not take any node below zero.
      expect(await ak.adjust(c.id, { costCents: -3, reason: 'refund' })).toMatchObject({ success: true, budgetUsedCents: 4 });
      expect(await spentOf(ak, unl.id)).toBe(4);
      await ak.trackUsage(unl.key, { costCents: 10 });
      expect(await ak.adjust(c.id, { costCents: -5, reason: 'too much' })).toEqual({ success: false, reason: 'refund_exceeds_spend' });
      expect(await spentOf(ak, unl.id)).toBe(14);
      await expectAuditOk(ak);
    });

    it('happy: a daily child under a monthly parent resets on its own; the parent does not, and still caps the total', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const parent = await ak.create({ accountId: 'acc', budgetCents: 1000, budgetPeriod: 'month' });
      const child = await ak.create({ accountId: 'acc', parentId: parent.id, budgetCents: 300, budgetPeriod: 'day' });
      const parentReset = (await ak.getKey(parent.id))!.budgetResetAt;
      const endDay = () => db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [child.id]);
      expect(await ak.trackUsage(child.key, { costCents: 300 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(child.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: child.id } });
      for (let day = 2; day <= 3; day++) {
        await endDay();
        expect(await ak.getKey(child.id)).toMatchObject({ spentCents: 0, remainingCents: 300 });
        expect(await ak.trackUsage(child.key, { costCents: 300 })).toMatchObject({ success: true, budgetUsedCents: 300 });
        expect(await spentOf(ak, parent.id)).toBe(300 * day);
      }
      await endDay();
      expect(await ak.trackUsage(child.key, { costCents: 101 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: parent.id } });
      expect(await ak.trackUsage(child.key, { costCents: 100 })).toMatchObject({ success: true, budgetUsedCents: 100 });
      expect(await ak.getKey(parent.id)).toMatchObject({ spentCents: 1000, remainingCents: 0, budgetResetAt: parentReset });
      const childInfo = (await ak.getKey(child.id))!;
      expect(childInfo.spentCents).toBe(100);
      expect(new Date(childInfo.budgetResetAt!).getTime()).toBeGreaterThan(Date.now());
      const ledger = tableNames(ak.tableName).ledger;
      const resets = await db.query<{ key_id: number; amount_micros: number }>(
        `SELECT key_id::int, amount_micros::bigint::float8 AS amount_micros FROM ${ledger} WHERE kind = 'reset' ORDER BY id`,
      );
      expect(resets).toEqual([
        { key_id: child.id, amount_micros: -3_000_000 },
        { key_id: child.id, amount_micros: -3_000_000 },
        { key_id: child.id, amount_micros: -3_000_000 },
      ]);
      await expectAuditOk(ak);
    });

    it('happy: holds on a grandchild count against every ancestor (validate and getKey show them held)', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 100 });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id });
      const sibling = await ak.create({ accountId: 'acc', parentId: root.id });
      const hold = await ak.reserve(leaf.key, { costCents: 60 });
      expect(hold).toMatchObject({ success: true });
      expect(await ak.validate(root.key)).toMatchObject({ valid: true, budgetHeldCents: 60, budgetUsedCents: 0, budgetRemainingCents: 40 });
      expect(await ak.getKey(root.id)).toMatchObject({ heldCents: 60, spentCents: 0, remainingCents: 40 });
      expect(await ak.getKey(mid.id)).toMatchObject({ heldCents: 60, remainingCents: null });
      expect(await ak.getKey(leaf.id)).toMatchObject({ heldCents: 60 });
      expect(await ak.getKey(sibling.id)).toMatchObject({ heldCents: 0 });
      expect(await ak.trackUsage(sibling.key, { costCents: 41 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: root.id } });
      expect(await ak.reserve(mid.key, { costCents: 41 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: root.id } });
      expect(await ak.trackUsage(root.key, { costCents: 41 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: root.id } });
      expect(await ak.trackUsage(sibling.key, { costCents: 40 })).toMatchObject({ success: true });
      if (!hold.success) throw new Error('hold failed');
      expect(await ak.release(hold.reservationId)).toMatchObject({ success: true, releasedCents: 60 });
      expect(await ak.getKey(root.id)).toMatchObject({ heldCents: 0, spentCents: 40, remainingCents: 60 });
      expect(await ak.getKey(mid.id)).toMatchObject({ heldCents: 0, spentCents: 0 });
      // A hold past its time stops counting at every ancestor and at the account at once.
      await ak.setAccountBudget('acc', { budgetCents: 100 });
      const late = await ak.reserve(leaf.key, { costCents: 60 });
      if (!late.success) throw new Error(JSON.stringify(late));
      expect(await ak.getAccountBudget('acc')).toMatchObject({ heldCents: 60, spentCents: 40, remainingCents: 0 });
      expect(await ak.trackUsage(sibling.key, { costCents: 1 })).toMatchObject({ success: false });
      const holds = tableNames(ak.tableName).holds;
      await getDb().query(`UPDATE ${holds} SET expires_at = now() - interval '1 second' WHERE id = $1`, [late.reservationId]);
      expect(await ak.getKey(root.id)).toMatchObject({ heldCents: 0, remainingCents: 60 });
      expect(await ak.getKey(mid.id)).toMatchObject({ heldCents: 0 });
      expect(await ak.getAccountBudget('acc')).toMatchObject({ heldCents: 0, remainingCents: 60 });
      expect(await ak.trackUsage(sibling.key, { costCents: 60 })).toMatchObject({ success: true });
      expect(await ak.sweepExpiredHolds()).toBe(1);
      await expectAuditOk(ak);
    });

    it('happy: a commit past its hold is charged up to what an ancestor leaves, the rest is overage (overBudget, limitedBy); no cap is passed', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 100 });
      const sibling = await ak.create({ accountId: 'acc', parentId: root.id });
      await ak.trackUsage(sibling.key, { costCents: 20 });
      const hold = await ak.reserve(child.key, { costCents: 80 });
      if (!hold.success) throw new Error(JSON.stringify(hold));
      expect(await ak.reserve(child.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: root.id } });
      const commit = await ak.commit(hold.reservationId, { costCents: 95 });
      expect(commit).toMatchObject({
        success: true,
        costCents: 95,
        chargedCents: 80,
        overageCents: 15,
        heldCents: 80,
        overHoldCents: 15,
        overBudget: true,
        limitedBy: { kind: 'ancestor', keyId: root.id },
        budgetUsedCents: 80,
        budgetRemainingCents: 20,
      });
      expect(await ak.getKey(root.id)).toMatchObject({ spentCents: 100, heldCents: 0, remainingCents: 0, overageCents: 0 });
      expect(await ak.getKey(child.id)).toMatchObject({ spentCents: 80, overageCents: 15 });
      expect(await ak.trackUsage(child.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: root.id } });
      // The replay returns the first outcome and charges nothing more.
      expect(await ak.commit(hold.reservationId, { costCents: 95 })).toMatchObject({ success: true, replayed: true, chargedCents: 80, overageCents: 15 });
      expect(await spentOf(ak, root.id)).toBe(100);

      // Over its own budget: the key itself is named.
      const own = await ak.create({ accountId: 'acc3', budgetCents: 50 });
      const h2 = await ak.reserve(own.key, { costCents: 50 });
      if (!h2.success) throw new Error('hold failed');
      expect(await ak.commit(h2.reservationId, { costCents: 70 })).toMatchObject({
        chargedCents: 50,
        overageCents: 20,
        overBudget: true,
        limitedBy: { kind: 'key', keyId: own.id },
      });
      // Within every budget: no limitedBy.
      const fine = await ak.create({ accountId: 'acc4', budgetCents: 50 });
      const h3 = await ak.reserve(fine.key, { costCents: 20 });
      if (!h3.success) throw new Error('hold failed');
      const ok = await ak.commit(h3.reservationId, { costCents: 30 });
      expect(ok).toMatchObject({ success: true, overBudget: false, overHoldCents: 10, chargedCents: 30, overageCents: 0 });
      expect(ok).not.toHaveProperty('limitedBy');
      await expectAuditOk(ak);
    });
  });

  describe('account ceilings', () => {
    it('concurrency: ten keys (in and out of a tree) under a 500-cent ceiling stop at exactly 500; limitedBy names the account', async () => {
      const ak = await getDb().agentKey();
      expect(await ak.setAccountBudget('acc', { budgetCents: 500, budgetPeriod: 'month' })).toMatchObject({ accountId: 'acc', budgetCents: 500, spentCents: 0, heldCents: 0, remainingCents: 500 });
      const tree = await ak.create({ accountId: 'acc' });
      const keys = [tree];
      for (let i = 0; i < 3; i++) keys.push(await ak.create({ accountId: 'acc', parentId: tree.id, budgetCents: 200 }));
      for (let i = 0; i < 6; i++) keys.push(await ak.create({ accountId: 'acc', budgetCents: 100 }));
      const other = await ak.create({ accountId: 'other' });
      const results = await Promise.all(Array.from({ length: 150 }, (_, i) => ak.trackUsage(keys[i % 10]!.key, { costCents: 5 })));
      expect(results.filter((r) => r.success)).toHaveLength(100);
      for (const r of results.filter((x) => !x.success)) {
        expect(r).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'account', accountId: 'acc' } });
      }
      expect(await ak.getAccountBudget('acc')).toMatchObject({ spentCents: 500, remainingCents: 0, heldCents: 0 });
      // The roots (the tree's root counts its children) add up to the account's spend.
      const rootSpend = await Promise.all([tree, ...keys.slice(4)].map((k) => spentOf(ak, k.id)));
      expect(rootSpend.reduce((a, b) => a + b, 0)).toBe(500);
      const childSpend = await Promise.all(keys.slice(1, 4).map((k) => spentOf(ak, k.id)));
      expect(childSpend.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(rootSpend[0]!);
      expect(await ak.reserve(keys[5]!.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'account', accountId: 'acc' } });
      // Other accounts are not limited by it.
      expect(await ak.trackUsage(other.key, { costCents: 10_000 })).toMatchObject({ success: true });
      await expectAuditOk(ak);
    });

    it('happy: a ceiling picks up spend already in the ledger this period, and live holds count', async () => {
      const ak = await getDb().agentKey();
      const a = await ak.create({ accountId: 'acc' });
      const b = await ak.create({ accountId: 'acc', parentId: a.id });
      const c = await ak.create({ accountId: 'acc' });
      await ak.trackUsage(b.key, { costCents: 70 });
      await ak.trackUsage(c.key, { costCents: 50 });
      await ak.adjust(c.id, { costCents: -20, reason: 'refund' });
      const hold = await ak.reserve(a.key, { costCents: 30 });
      expect(hold.success).toBe(true);
      expect(await ak.setAccountBudget('acc', { budgetCents: 200, budgetPeriod: 'month' })).toMatchObject({
        budgetCents: 200,
        spentCents: 100,
        heldCents: 30,
        remainingCents: 70,
      });
      expect(await ak.trackUsage(c.key, { costCents: 71 })).toMatchObject({ success: false, limitedBy: { kind: 'account', accountId: 'acc' } });
      expect(await ak.trackUsage(b.key, { costCents: 70 })).toMatchObject({ success: true });
      expect(await ak.getAccountBudget('acc')).toMatchObject({ spentCents: 170, heldCents: 30, remainingCents: 0 });
      // Setting it again (lifetime now) recomputes from the ledger, without double counting.
      expect(await ak.setAccountBudget('acc', { budgetCents: 250, budgetPeriod: null })).toMatchObject({ spentCents: 170, heldCents: 30, remainingCents: 50, budgetPeriod: null, periodStartAt: null, budgetResetAt: null });
      expect(await ak.setAccountBudget('acc', { budgetCents: 250 })).toMatchObject({ spentCents: 170, budgetPeriod: null });
      await expectAuditOk(ak);
    });

    it('happy: get and clear; after clearing, spend is limited by key budgets only', async () => {
      const ak = await getDb().agentKey();
      expect(await ak.getAccountBudget('acc')).toBeNull();
      expect(await ak.clearAccountBudget('acc')).toBe(false);
      const k = await ak.create({ accountId: 'acc', budgetCents: 1000 });
      const child = await ak.create({ accountId: 'acc', parentId: k.id });
      await ak.setAccountBudget('acc', { budgetCents: 0 });
      expect(await ak.trackUsage(child.key, { costCents: 0.01 })).toMatchObject({ success: false, limitedBy: { kind: 'account', accountId: 'acc' } });
      await ak.setAccountBudget('acc', { budgetCents: 50, budgetPeriod: 'day' });
      expect(await ak.getAccountBudget('acc')).toMatchObject({ accountId: 'acc', budgetCents: 50, budgetPeriod: 'day', spentCents: 0 });
      expect(await ak.trackUsage(child.key, { costCents: 50 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'account' } });
      expect(await ak.clearAccountBudget('acc')).toBe(true);
      expect(await ak.getAccountBudget('acc')).toBeNull();
      expect(await ak.clearAccountBudget('acc')).toBe(false);
      expect(await ak.trackUsage(k.key, { costCents: 900 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(k.key, { costCents: 51 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: k.id } });
      // Account ids are the same whether given as a number or as text.
      await ak.setAccountBudget(77, { budgetCents: 5 });
      expect(await ak.getAccountBudget('77')).toMatchObject({ accountId: '77', budgetCents: 5 });
      const n = await ak.create({ accountId: 77 });
      expect(await ak.trackUsage(n.key, { costCents: 6 })).toMatchObject({ success: false, limitedBy: { kind: 'account', accountId: '77' } });
      expect(await ak.clearAccountBudget(77)).toBe(true);
      await expectAuditOk(ak);
    });

    it('happy: a commit past its hold is charged up to what the account ceiling leaves, the rest is overage (limitedBy account)', async () => {
      const ak = await getDb().agentKey();
      await ak.setAccountBudget('acc', { budgetCents: 100 });
      const root = await ak.create({ accountId: 'acc' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 500 });
      await ak.trackUsage(root.key, { costCents: 30 });
      const hold = await ak.reserve(child.key, { costCents: 70 });
      if (!hold.success) throw new Error(JSON.stringify(hold));
      expect(await ak.trackUsage(root.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'account', accountId: 'acc' } });
      const commit = await ak.commit(hold.reservationId, { costCents: 90 });
      expect(commit).toMatchObject({
        success: true,
        overHoldCents: 20,
        chargedCents: 70,
        overageCents: 20,
        overBudget: true,
        limitedBy: { kind: 'account', accountId: 'acc' },
      });
      expect(await ak.getAccountBudget('acc')).toMatchObject({ spentCents: 100, heldCents: 0, remainingCents: 0 });
      expect((await ak.listAccounts()).find((a) => a.accountId === 'acc')).toMatchObject({ spentCents: 100, overageCents: 20 });
      expect(await ak.usage({ accountId: 'acc' })).toMatchObject({ totalCents: 100, overageCents: 20 });
      // Under the ceiling again after a refund: a commit within it is not over budget.
      await ak.adjust(child.id, { costCents: -60, reason: 'refund' });
      const h2 = await ak.reserve(child.key, { costCents: 10 });
      if (!h2.success) throw new Error(JSON.stringify(h2));
      const c2 = await ak.commit(h2.reservationId, { costCents: 10 });
      expect(c2).toMatchObject({ success: true, overBudget: false });
      expect(c2).not.toHaveProperty('limitedBy');
      await expectAuditOk(ak);
    });

    it('concurrency: setting a ceiling while charges are in flight counts every charge once', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const keys = [root, ...(await Promise.all([0, 1, 2].map(() => ak.create({ accountId: 'acc', parentId: root.id })))), await ak.create({ accountId: 'acc' })];
      const charges = Array.from({ length: 100 }, (_, i) => ak.trackUsage(keys[i % keys.length]!.key, { costCents: 3 }));
      const set = ak.setAccountBudget('acc', { budgetCents: 200, budgetPeriod: 'day' });
      const results = await Promise.all(charges);
      await set;
      const ok = results.filter((r) => r.success).length;
      for (const r of results.filter((x) => !x.success)) expect(r).toMatchObject({ limitedBy: { kind: 'account' } });
      const acct = (await ak.getAccountBudget('acc'))!;
      expect(acct.spentCents).toBe(ok * 3);
      expect((await ak.usage({ accountId: 'acc' })).totalCents).toBe(ok * 3);
      await expectAuditOk(ak);
    });

    it('error: bad inputs throw AgentKeyError and write nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.create({ accountId: 'acc' });
      const bad: [unknown, unknown, string][] = [
        ['acc', { budgetCents: -1 }, 'invalid_budget'],
        ['acc', { budgetCents: NaN }, 'invalid_budget'],
        ['acc', { budgetCents: '5e2' }, 'invalid_budget'],
        ['acc', { budgetCents: '-500' }, 'invalid_budget'],
        ['acc', { budgetCents: Infinity }, 'invalid_budget'],
        ['acc', { budgetCents: 500, budgetPeriod: 'year' }, 'invalid_period'],
        ['acc', {}, 'invalid_budget'],
        ['acc', { budgetCents: null }, 'invalid_budget'],
        ['acc', { budgetCents: 500, ceiling: 1 }, 'invalid_argument'],
        ['acc', null, 'invalid_argument'],
        ['acc', undefined, 'invalid_argument'],
        ['', { budgetCents: 500 }, 'invalid_argument'],
        [null, { budgetCents: 500 }, 'invalid_argument'],
        [1.5, { budgetCents: 500 }, 'invalid_argument'],
      ];
      for (const [id, options, code] of bad) {
        await expectRefused(db, ak, () => ak.setAccountBudget(id as never, options as never), code, JSON.stringify([id, options]));
      }
      expect(await codeOf(ak.getAccountBudget(''))).toBe('invalid_argument');
      expect(await codeOf(ak.clearAccountBudget({} as never))).toBe('invalid_argument');
      expect(await ak.getAccountBudget('acc')).toBeNull();
    });

    it('happy: calendar periods in UTC (month: the 1st 00:00Z to the next 1st; day: midnight to midnight)', async () => {
      const ak = await getDb().agentKey();
      const before = new Date();
      const month = await ak.setAccountBudget('m', { budgetCents: 100, budgetPeriod: 'month' });
      const day = await ak.setAccountBudget('d', { budgetCents: 100, budgetPeriod: 'day' });
      const after = new Date();
      expect([utcMonthStart(before), utcMonthStart(after)]).toContain(month.periodStartAt);
      expect([utcMonthStart(before, 1), utcMonthStart(after, 1)]).toContain(month.budgetResetAt);
      expect([utcDayStart(before), utcDayStart(after)]).toContain(day.periodStartAt);
      expect([utcDayStart(before, 1), utcDayStart(after, 1)]).toContain(day.budgetResetAt);
      expect(new Date(month.budgetResetAt!).getTime()).toBeGreaterThan(after.getTime() - 1);
      expect(await ak.getAccountBudget('m')).toEqual(month);
    });

    it('happy: when the account period ends, the next spend resets it and writes a reset ledger row with no key', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      await ak.setAccountBudget('acc', { budgetCents: 100, budgetPeriod: 'month' });
      const k = await ak.create({ accountId: 'acc' });
      expect(await ak.trackUsage(k.key, { costCents: 100 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'account' } });
      // Make it as if that spend happened last month, and the account's month has ended. (One calendar
      // month back, not a fixed number of days: early in a month, 40 days back is the month before last,
      // before the moved period start, and the audit rightly counted none of it.)
      await db.query(`ALTER TABLE ${t.ledger} DISABLE TRIGGER agentkey_append_only`);
      await db.query(`UPDATE ${t.ledger} SET created_at = created_at - interval '1 month' WHERE account_id = 'acc'`);
      await db.query(`ALTER TABLE ${t.ledger} ENABLE TRIGGER agentkey_append_only`);
      await db.query(
        `UPDATE ${t.accounts} SET period_start_at = period_start_at - interval '1 month', budget_reset_at = now() - interval '1 second' WHERE account_id = 'acc'`,
      );
      await expectAuditOk(ak);
      const now = new Date();
      expect(await ak.getAccountBudget('acc')).toMatchObject({ spentCents: 0, remainingCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 60 })).toMatchObject({ success: true, budgetUsedCents: 160 });
      const acct = (await ak.getAccountBudget('acc'))!;
      expect(acct).toMatchObject({ spentCents: 60, remainingCents: 40 });
      expect([utcMonthStart(now), utcMonthStart(new Date())]).toContain(acct.periodStartAt);
      expect([utcMonthStart(now, 1), utcMonthStart(new Date(), 1)]).toContain(acct.budgetResetAt);
      const resets = await db.query<{ key_id: number | null; account_id: string; amount: number }>(
        `SELECT key_id, account_id, amount_micros::float8 AS amount FROM ${t.ledger} WHERE kind = 'reset'`,
      );
      expect(resets).toEqual([{ key_id: null, account_id: 'acc', amount: -1_000_000 }]);
      expect(await ak.trackUsage(k.key, { costCents: 41 })).toMatchObject({ success: false, limitedBy: { kind: 'account' } });
      // The account's reset does not touch the key's own counter, nor usage().
      expect(await spentOf(ak, k.id)).toBe(160);
      expect(await ak.usage({ accountId: 'acc' })).toMatchObject({ totalCents: 160 });
      await expectAuditOk(ak);
    });
  });

  describe('edge cases of the spend functions', () => {
    it('error: a refund may not push an account ceiling below zero (nothing written)', async () => {
      const ak = await getDb().agentKey();
      const { id, key } = await ak.create({ accountId: 'acct_r', budgetCents: 100 });
      expect(await ak.trackUsage(key, { costCents: 30 })).toMatchObject({ success: true });
      // The ceiling starts with the ledger's spend this period: 30.
      expect(await ak.setAccountBudget('acct_r', { budgetCents: 500 })).toMatchObject({ spentCents: 30 });
      // Simulate an account counter that knows less than the key (e.g. spend before its period).
      await getDb().query(`UPDATE "${tableNames(ak.tableName).indexBase}_accounts" SET spent_micros = 100000`);
      expect(await ak.adjust(id, { costCents: -20, reason: 'refund' })).toEqual({ success: false, reason: 'refund_exceeds_spend' });
      expect((await ak.getKey(id))!.spentCents).toBe(30);
      expect(await ak.adjust(id, { costCents: -10, reason: 'refund' })).toMatchObject({ success: true, budgetUsedCents: 20 });
      expect(await ak.getAccountBudget('acct_r')).toMatchObject({ spentCents: 0 });
    });

    it('happy: keys tables named like the functions\' variables (k, h, a, prior) still spend and settle', async () => {
      for (const tableName of ['k', 'h', 'a', 'prior']) {
        const ak = await getDb().agentKey({ tableName: `${tableName}` });
        const parent = await ak.create({ accountId: 'acct_v', budgetCents: 50 });
        const child = await ak.create({ accountId: 'acct_v', parentId: parent.id });
        await ak.setAccountBudget('acct_v', { budgetCents: 40 });
        expect(await ak.trackUsage(child.key, { costCents: 10 }), tableName).toMatchObject({ success: true });
        const hold = await ak.reserve(child.key, { costCents: 20 });
        expect(hold.success, tableName).toBe(true);
        if (!hold.success) continue;
        expect(await ak.commit(hold.reservationId, { costCents: 5 }), tableName).toMatchObject({ success: true, costCents: 5 });
        expect(await ak.trackUsage(child.key, { costCents: 30 }), tableName).toMatchObject({
          success: false,
          limitedBy: { kind: 'account', accountId: 'acct_v' },
        });
        expect(await ak.audit(), tableName).toMatchObject({ ok: true });
      }
    });
  });

  describe('audit()', () => {
    it('security: tampering with an ancestor counter or an account counter is detected', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      await ak.setAccountBudget('acc', { budgetCents: 1000, budgetPeriod: 'month' });
      const root = await ak.create({ accountId: 'acc', budgetCents: 500 });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id });
      await ak.trackUsage(leaf.key, { costCents: 30 });
      await ak.trackUsage(mid.key, { costCents: 20 });
      const h = await ak.reserve(leaf.key, { costCents: 10 });
      if (!h.success) throw new Error('hold failed');
      await ak.commit(h.reservationId, { costCents: 5 });
      await expectAuditOk(ak);
      expect(await ak.audit({ keyId: mid.id })).toMatchObject({ ok: true, keysChecked: 1 });

      await db.query(`UPDATE ${t.table} SET spent_micros = spent_micros + 1 WHERE id = $1`, [root.id]);
      const tampered = await ak.audit();
      expect(tampered).toMatchObject({ ok: false, accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(tampered.mismatches).toEqual([{ keyId: root.id, counterCents: 55.0001, ledgerCents: 55 }]);
      expect(await ak.audit({ keyId: mid.id })).toMatchObject({ ok: true });
      expect(await ak.audit({ keyId: root.id })).toMatchObject({ ok: false });
      await db.query(`UPDATE ${t.table} SET spent_micros = spent_micros - 1 WHERE id = $1`, [root.id]);
      await expectAuditOk(ak);

      await db.query(`UPDATE ${t.accounts} SET spent_micros = spent_micros - 200000 WHERE account_id = 'acc'`);
      const acct = await ak.audit();
      expect(acct).toMatchObject({ ok: false, mismatches: [], accountMismatches: [{ accountId: 'acc', counterCents: 35, ledgerCents: 55 }] });
      await db.query(`UPDATE ${t.accounts} SET spent_micros = spent_micros + 200000 WHERE account_id = 'acc'`);
      await expectAuditOk(ak);
    });
  });
});
