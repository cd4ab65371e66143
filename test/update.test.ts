import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey, type KeyInfo, type TrackUsageResult } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb, uniqueName } from './helpers/databases.js';
import { codeOf, rejectsWith } from './helpers/errors.js';
import { ISO, valid } from './helpers/results.js';
import { expectAuditOk, tableState } from './helpers/tables.js';
import { nextUtcMidnight } from './helpers/utc.js';
import { soon, until } from './helpers/wait.js';

/**
 * update(): changing a key's budget, period, scopes, expiry, name and delegatedBy after it was
 * made, on PostgreSQL and PGlite. Only the given fields change; a refusal changes nothing in
 * any key; a child is never widened past its parent, and a parent is never narrowed below its
 * descendants unless `cascade: true` narrows them too (in the same transaction); the change
 * is seen at once by validate() here and, through LISTEN/NOTIFY, by other processes; charges
 * racing an update never spend past the budget in force when they commit.
 */

const newAccount = () => uniqueName('acct_update');
const later = (ms: number) => new Date(Date.now() + ms);
const HOUR = 3_600_000;

/** `call` is refused with `code` (a rejected promise, a one-sentence message) and every table is as it was. */
async function refused(db: TestDb, ak: AgentKey, call: () => Promise<unknown>, code: string, label = code) {
  await ak.flush();
  const before = await tableState(db, ak);
  const err = await rejectsWith(call, code, label);
  expect(await tableState(db, ak), `${label}: a refused update changed a table`).toEqual(before);
  return err;
}

/** A key's scopes as a sorted list (null stays null), for comparisons that do not depend on order. */
async function scopesOf(ak: AgentKey, id: number): Promise<string[] | null> {
  const s = (await ak.getKey(id))!.scopes;
  return s === null ? null : [...s].sort();
}

async function expireNow(db: TestDb, ak: AgentKey, id: number): Promise<void> {
  await db.query(`UPDATE ${tableNames(ak.tableName).table} SET expires_at = now() - interval '1 minute' WHERE id = $1`, [id]);
}

forEachDatabase((getDb) => {
  describe('changing a key', () => {
    it('happy: only the given fields change, and update returns the key as getKey shows it afterwards', async () => {
      const ak = await getDb().agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account, name: 'a', scopes: ['x.read'], budgetCents: 500, budgetPeriod: 'month', expiresIn: '7d', delegatedBy: 'u1' });
      const other = await ak.create({ accountId: account, name: 'other', budgetCents: 10 });
      const otherBefore = await ak.getKey(other.id);
      await ak.trackUsage(k.key, { costCents: 12 });
      await ak.flush();
      const before = (await ak.getKey(k.id))!;

      const renamed = await ak.update(k.id, { name: 'b' });
      expect(renamed).toEqual({ ...before, name: 'b' });
      expect(await ak.getKey(k.id)).toEqual(renamed);

      // A field given as undefined is not given; the id may be a string.
      const r2 = await ak.update(String(k.id), { delegatedBy: 'u2', budgetCents: undefined, scopes: undefined });
      expect(r2).toEqual({ ...before, name: 'b', delegatedBy: 'u2' });

      const r3 = await ak.update(k.id, { scopes: ['x.read', 'y.*'], budgetCents: '250', name: null, delegatedBy: null });
      expect(r3).toEqual({
        ...before, scopes: ['x.read', 'y.*'], budgetCents: 250, remainingCents: 238, name: null, delegatedBy: null,
        budgets: [{ ...before.budgets[0]!, cents: 250, remainingCents: 238 }],
      });
      expect(await ak.getKey(k.id)).toEqual(r3);

      const unlimited = await ak.update(k.id, { scopes: null, budgetCents: null, expiresAt: null });
      expect(unlimited).toMatchObject({ scopes: null, budgetCents: null, remainingCents: null, expiresAt: null, spentCents: 12, status: 'active', budgetPeriod: 'month' });
      expect(await ak.getKey(other.id)).toEqual(otherBefore);
      await expectAuditOk(ak);
    });

    it('happy: an expiry is set by expiresIn or expiresAt (a Date or an ISO string), or removed with null', async () => {
      const ak = await getDb().agentKey();
      const k = await ak.create({ accountId: newAccount() });
      const t0 = Date.now();
      const byIn = await ak.update(k.id, { expiresIn: '2h' });
      const t1 = Date.now();
      expect(byIn.expiresAt).toMatch(ISO);
      expect(Date.parse(byIn.expiresAt!)).toBeGreaterThanOrEqual(t0 + 2 * HOUR);
      expect(Date.parse(byIn.expiresAt!)).toBeLessThanOrEqual(t1 + 2 * HOUR);
      const at = later(5 * HOUR);
      at.setUTCMilliseconds(123);
      expect((await ak.update(k.id, { expiresAt: at })).expiresAt).toBe(at.toISOString());
      const iso = later(3 * HOUR).toISOString();
      expect((await ak.update(k.id, { expiresAt: iso })).expiresAt).toBe(iso);
      expect(await ak.update(k.id, { expiresIn: null })).toMatchObject({ expiresAt: null, status: 'active' });
      expect((await ak.update(k.id, { expiresIn: '1d' })).expiresAt).not.toBeNull();
      expect(await ak.update(k.id, { expiresAt: null })).toMatchObject({ expiresAt: null, status: 'active' });
    });

    it('happy: an expired key can be updated; a later expiry makes it active again', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: newAccount(), expiresIn: '1h', budgetCents: 50 });
      await expireNow(db, ak, k.id);
      expect(await ak.getKey(k.id)).toMatchObject({ status: 'expired' });
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'expired' });
      // Another change leaves it expired.
      expect(await ak.update(k.id, { name: 'still-expired' })).toMatchObject({ status: 'expired', name: 'still-expired' });
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'expired' });
      const revived = await ak.update(k.id, { expiresIn: '2h' });
      expect(revived).toMatchObject({ status: 'active', name: 'still-expired' });
      expect(valid(await ak.validate(k.key))).toMatchObject({ expiresAt: revived.expiresAt });
      expect(await ak.trackUsage(k.key, { costCents: 5 })).toMatchObject({ success: true, budgetUsedCents: 5 });
    });

    it('happy: options.accountId restricts the update to a key of that account (a numeric id matches its text)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: 42, name: 'n' });
      await refused(db, ak, () => ak.update(k.id, { name: 'x' }, { accountId: 'not-42' }), 'key_not_found');
      expect(await ak.update(k.id, { name: 'x' }, { accountId: 42 })).toMatchObject({ name: 'x' });
      expect(await ak.update(k.id, { name: 'y' }, { accountId: '42' })).toMatchObject({ name: 'y' });
    });

    it("happy: an external subject's budget row changes like a key: its budget and scopes hold for the subject's next calls", async () => {
      const ak = await getDb().agentKey();
      await ak.ensureSubject('user_7', { accountId: 'acct_s', budgetCents: 100, scopes: ['proxy.chat'] });
      const [row] = await ak.listKeys({ accountId: 'acct_s' });
      expect(row).toMatchObject({ externalSubject: 'user_7', budgetCents: 100 });
      expect((await ak.trackUsageBySubject('user_7', { costCents: 30 })).success).toBe(true);
      expect(await ak.update(row!.id, { budgetCents: 40, scopes: ['proxy.chat', 'usage.read'] })).toMatchObject({ budgetCents: 40, spentCents: 30 });
      expect(await ak.validateBySubject('user_7')).toMatchObject({ valid: true, scopes: ['proxy.chat', 'usage.read'] });
      expect((await ak.trackUsageBySubject('user_7', { costCents: 20 })).success).toBe(false);
      expect((await ak.trackUsageBySubject('user_7', { costCents: 10 })).success).toBe(true);
    });
  });

  describe('budgets and periods', () => {
    it('happy: a budget lowered below what was spent is allowed and leaves nothing; raising it lets the key spend again', async () => {
      const ak = await getDb().agentKey();
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 60 })).toMatchObject({ success: true });
      expect(await ak.update(k.id, { budgetCents: 50 })).toMatchObject({ budgetCents: 50, spentCents: 60, remainingCents: 0 });
      const refusal = await ak.trackUsage(k.key, { costCents: 1 });
      expect(refusal).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: k.id } });
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 60, budgetCents: 50 });
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'budget_exceeded' });

      expect(await ak.update(k.id, { budgetCents: 70 })).toMatchObject({ budgetCents: 70, spentCents: 60, remainingCents: 10 });
      expect(await ak.trackUsage(k.key, { costCents: 11 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(k.key, { costCents: 10 })).toEqual({ success: true, budgetUsedCents: 70, budgetRemainingCents: 0 });
      expect(await ak.update(k.id, { budgetCents: null })).toMatchObject({ budgetCents: null, remainingCents: null, spentCents: 70 });
      expect(await ak.trackUsage(k.key, { costCents: 1000 })).toMatchObject({ success: true, budgetUsedCents: 1070 });
      await expectAuditOk(ak);
    });

    it('happy: a new period keeps what was spent and starts now; null removes the reset', async () => {
      const ak = await getDb().agentKey();
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(k.key, { costCents: 30 });
      const before = Date.now();
      const daily = await ak.update(k.id, { budgetPeriod: 'day' });
      const after = Date.now();
      expect(daily).toMatchObject({ budgetPeriod: 'day', spentCents: 30, budgetCents: 100 });
      expect([nextUtcMidnight(before), nextUtcMidnight(after)]).toContain(daily.budgetResetAt);
      expect(valid(await ak.validate(k.key))).toMatchObject({ budgetPeriod: 'day', budgetUsedCents: 30, budgetResetAt: daily.budgetResetAt });

      const none = await ak.update(k.id, { budgetPeriod: null });
      expect(none).toMatchObject({ budgetPeriod: null, budgetResetAt: null, spentCents: 30 });

      const monthly = await ak.update(k.id, { budgetPeriod: 'month' });
      expect(monthly).toMatchObject({ budgetPeriod: 'month', spentCents: 30 });
      expect(monthly.budgetResetAt).toMatch(/T00:00:00\.000Z$/);
      expect(Date.parse(monthly.budgetResetAt!)).toBeGreaterThan(Date.now());
      expect(Date.parse(monthly.budgetResetAt!)).toBeLessThanOrEqual(Date.now() + 32 * 86_400_000);
      expect(await ak.trackUsage(k.key, { costCents: 70 })).toMatchObject({ success: true, budgetUsedCents: 100 });
      await expectAuditOk(ak);
    });
  });

  describe('refusals (nothing changes)', () => {
    it('error: bad arguments are invalid_argument, bad values the same codes as create()', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100, expiresIn: '7d' });
      const cases: [unknown, unknown, string][] = [
        [{}, undefined, 'invalid_argument'],
        [{ budgetCents: undefined }, undefined, 'invalid_argument'],
        [{ foo: 1 }, undefined, 'invalid_argument'],
        [{ name: 'x', foo: 1 }, undefined, 'invalid_argument'],
        [{ accountId: 'other' }, undefined, 'invalid_argument'],
        [{ expiresIn: '1d', expiresAt: later(HOUR) }, undefined, 'invalid_argument'],
        [{ expiresAt: new Date(Date.now() - 1000) }, undefined, 'invalid_argument'],
        [{ expiresAt: '2001-01-01T00:00:00Z' }, undefined, 'invalid_argument'],
        [{ name: 'x' }, { cascade: 'yes' }, 'invalid_argument'],
        [{ name: 'x' }, { cascade: 1 }, 'invalid_argument'],
        [{ name: 'x' }, { bar: 1 }, 'invalid_argument'],
        [null, undefined, 'invalid_argument'],
        ['name', undefined, 'invalid_argument'],
        [[], undefined, 'invalid_argument'],
        [{ budgetCents: -1 }, undefined, 'invalid_budget'],
        [{ budgetCents: 'lots' }, undefined, 'invalid_budget'],
        [{ budgetCents: NaN }, undefined, 'invalid_budget'],
        [{ budgetPeriod: 'week' }, undefined, 'invalid_period'],
        [{ scopes: ['bad scope'] }, undefined, 'invalid_scope'],
        [{ scopes: 'proxy.chat' }, undefined, 'invalid_scope'],
        [{ expiresIn: '7x' }, undefined, 'invalid_duration'],
      ];
      for (const [changes, options, code] of cases) {
        await refused(db, ak, () => ak.update(k.id, changes as never, options as never), code, `${JSON.stringify(changes)} ${JSON.stringify(options)}`);
      }
      // A valid change alongside a bad one is not made either.
      await refused(db, ak, () => ak.update(k.id, { name: 'x', budgetCents: 5, scopes: ['bad scope'] }), 'invalid_scope');
      expect(await ak.getKey(k.id)).toMatchObject({ name: null, budgetCents: 100 });
    });

    it('error: an unknown id is key_not_found, a revoked key key_inactive', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100 });
      await refused(db, ak, () => ak.update(k.id + 1000, { name: 'x' }), 'key_not_found');
      await refused(db, ak, () => ak.update(999_999_999, { budgetCents: 5 }), 'key_not_found');
      expect(await ak.revoke(k.id)).toBe(true);
      await refused(db, ak, () => ak.update(k.id, { name: 'x' }), 'key_inactive');
      await refused(db, ak, () => ak.update(k.id, { expiresIn: '1d', budgetCents: 1000 }), 'key_inactive');
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
      // A revoked child (through its parent's revocation) cannot be changed either.
      const root = await ak.create({ accountId: 'acc', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acc', parentId: root.id });
      await ak.revoke(root.id);
      await refused(db, ak, () => ak.update(child.id, { name: 'x' }), 'key_inactive');
    });
  });

  describe('a child is never widened past its parent', () => {
    it('security: budget, scopes and expiry of a child stay within its parent; refusals change nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc', scopes: ['proxy.*', 'usage.read'], budgetCents: 500, expiresIn: '2h' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id, scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1h' });
      const rootExpiry = (await ak.getKey(root.id))!.expiresAt!;

      for (const budgetCents of [501, '500.01', 10_000]) {
        await refused(db, ak, () => ak.update(child.id, { budgetCents }), 'budget_exceeds_parent', String(budgetCents));
      }
      for (const scopes of [['billing.read'], ['proxy.chat', 'admin'], ['*'], null, ['proxy'], ['prox.*']]) {
        await refused(db, ak, () => ak.update(child.id, { scopes }), 'scope_not_allowed', JSON.stringify(scopes));
      }
      await refused(db, ak, () => ak.update(child.id, { expiresIn: '3h' }), 'expiry_exceeds_parent');
      await refused(db, ak, () => ak.update(child.id, { expiresAt: new Date(Date.parse(rootExpiry) + 1000) }), 'expiry_exceeds_parent');
      await refused(db, ak, () => ak.update(child.id, { expiresAt: null }), 'expiry_exceeds_parent');
      await refused(db, ak, () => ak.update(child.id, { expiresIn: null }), 'expiry_exceeds_parent');
      // cascade does not help a widening: it only narrows descendants.
      await refused(db, ak, () => ak.update(child.id, { budgetCents: 600 }, { cascade: true }), 'budget_exceeds_parent');
      // One bad field refuses the others with it.
      await refused(db, ak, () => ak.update(child.id, { name: 'ok', budgetCents: 50, scopes: ['billing.read'] }), 'scope_not_allowed');

      // Up to the parent's limits is fine; a child with no budget of its own under a budgeted parent too.
      expect(await ak.update(child.id, { budgetCents: 500, scopes: ['proxy.*', 'usage.read'], expiresAt: rootExpiry })).toMatchObject({
        budgetCents: 500,
        scopes: ['proxy.*', 'usage.read'],
        expiresAt: rootExpiry,
      });
      expect(await ak.update(child.id, { budgetCents: null, scopes: ['proxy.x.*'] })).toMatchObject({ budgetCents: null, scopes: ['proxy.x.*'] });
      // A grandchild is bounded by its own parent, not only the root.
      const grand = await ak.create({ accountId: 'acc', parentId: child.id, scopes: ['proxy.x.y'] });
      await refused(db, ak, () => ak.update(grand.id, { scopes: ['proxy.chat'] }), 'scope_not_allowed');
      expect(await ak.update(grand.id, { scopes: ['proxy.x.z'] })).toMatchObject({ scopes: ['proxy.x.z'] });
      // Under a parent without limits, anything goes.
      const open = await ak.create({ accountId: 'acc' });
      const free = await ak.create({ accountId: 'acc', parentId: open.id, budgetCents: 1 });
      expect(await ak.update(free.id, { budgetCents: 1_000_000, scopes: ['admin'], expiresAt: null })).toMatchObject({ budgetCents: 1_000_000, scopes: ['admin'] });
    });
  });

  describe('narrowing a parent', () => {
    it('error: narrowing below a descendant is narrows_children (naming it) and changes nothing; within the descendants it is allowed', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc', scopes: ['a.*', 'b.*'], budgetCents: 500, expiresIn: '3h' });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id, scopes: ['a.*'], budgetCents: 300, expiresIn: '2h' });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id, scopes: ['a.x'], budgetCents: 200, expiresIn: '1h' });
      const names = (id: number) => new RegExp(`\\b${id}\\b`);

      expect((await refused(db, ak, () => ak.update(root.id, { budgetCents: 250 }), 'narrows_children')).message).toMatch(names(mid.id));
      expect((await refused(db, ak, () => ak.update(root.id, { scopes: ['b.*'] }), 'narrows_children')).message).toMatch(names(mid.id));
      expect((await refused(db, ak, () => ak.update(root.id, { expiresIn: '90m' }), 'narrows_children')).message).toMatch(names(mid.id));
      expect((await refused(db, ak, () => ak.update(mid.id, { scopes: ['a.y'] }), 'narrows_children')).message).toMatch(names(leaf.id));
      expect((await refused(db, ak, () => ak.update(mid.id, { budgetCents: 150 }), 'narrows_children')).message).toMatch(names(leaf.id));
      await refused(db, ak, () => ak.update(root.id, { budgetCents: 250 }, { cascade: false }), 'narrows_children');
      // With another change alongside, neither is made.
      await refused(db, ak, () => ak.update(root.id, { name: 'r', budgetCents: 100 }), 'narrows_children');

      // Narrowing that every descendant still fits under needs no cascade, and leaves them as they are.
      const midBefore = await ak.getKey(mid.id);
      const leafBefore = await ak.getKey(leaf.id);
      expect(await ak.update(root.id, { budgetCents: 300, scopes: ['a.*'] })).toMatchObject({ budgetCents: 300, scopes: ['a.*'] });
      expect(await ak.update(mid.id, { budgetCents: 200, scopes: ['a.x', 'a.z'] })).toMatchObject({ budgetCents: 200 });
      expect(await ak.getKey(leaf.id)).toEqual(leafBefore);
      expect(await ak.getKey(mid.id)).toMatchObject({ expiresAt: midBefore!.expiresAt });

      // A descendant with no expiry of its own under a parent that starts to expire is narrowed by that.
      const openRoot = await ak.create({ accountId: 'acc' });
      const openChild = await ak.create({ accountId: 'acc', parentId: openRoot.id });
      expect((await refused(db, ak, () => ak.update(openRoot.id, { expiresIn: '1d' }), 'narrows_children')).message).toMatch(names(openChild.id));
      // ... and one with unlimited scopes under a parent that gets some.
      await refused(db, ak, () => ak.update(openRoot.id, { scopes: ['a.x'] }), 'narrows_children');
      // A child without a budget of its own does not stop its parent's budget from being lowered.
      expect(await ak.update(openRoot.id, { budgetCents: 5 })).toMatchObject({ budgetCents: 5 });
      expect(await ak.getKey(openChild.id)).toMatchObject({ budgetCents: null, scopes: null, expiresAt: null });
    });

    it('happy: cascade narrows every descendant that would not fit, level by level, in one go; the rest are untouched', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 500, expiresIn: '3h' });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 300, expiresIn: '2h', budgetPeriod: 'day' });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id, budgetCents: 200, expiresIn: '1h' });
      const noCap = await ak.create({ accountId: 'acc', parentId: mid.id });
      const sibling = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 100 });
      const elsewhere = await ak.create({ accountId: 'acc', budgetCents: 1000 });
      await ak.trackUsage(leaf.key, { costCents: 40 });
      const elsewhereBefore = await ak.getKey(elsewhere.id);

      // Budget: min(own, parent's new), a null budget stays null; those inside the new limit stay.
      expect(await ak.update(root.id, { budgetCents: 250 }, { cascade: true })).toMatchObject({ budgetCents: 250 });
      expect((await ak.getKey(mid.id))!.budgetCents).toBe(250);
      expect((await ak.getKey(leaf.id))!.budgetCents).toBe(200);
      expect(await ak.update(root.id, { budgetCents: 30 }, { cascade: true })).toMatchObject({ budgetCents: 30 });
      expect(await ak.getKey(mid.id)).toMatchObject({ budgetCents: 30, budgetPeriod: 'day' });
      // Below what the leaf spent: allowed, nothing left, spend kept.
      expect(await ak.getKey(leaf.id)).toMatchObject({ budgetCents: 30, spentCents: 40, remainingCents: 0 });
      expect(await ak.getKey(noCap.id)).toMatchObject({ budgetCents: null });
      expect((await ak.getKey(sibling.id))!.budgetCents).toBe(30);
      expect(await ak.trackUsage(leaf.key, { costCents: 1 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      // Expiry: the parent's when later; earlier ones stay (noCap inherited mid's at creation).
      const leafExpiry = (await ak.getKey(leaf.id))!.expiresAt!;
      const r = await ak.update(root.id, { expiresIn: '90m' }, { cascade: true });
      expect((await ak.getKey(mid.id))!.expiresAt).toBe(r.expiresAt);
      expect((await ak.getKey(leaf.id))!.expiresAt).toBe(leafExpiry);
      expect((await ak.getKey(noCap.id))!.expiresAt).toBe(r.expiresAt);
      const r2 = await ak.update(root.id, { expiresIn: '30m' }, { cascade: true });
      for (const id of [mid.id, leaf.id, noCap.id]) expect((await ak.getKey(id))!.expiresAt, String(id)).toBe(r2.expiresAt);

      // Keys of other trees are never touched.
      expect(await ak.getKey(elsewhere.id)).toEqual(elsewhereBefore);
      await expectAuditOk(ak);
    });

    it('happy: cascade intersects scopes: held scopes the parent grants, plus parent scopes inside a held wildcard', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', scopes: ['a.*', 'b.*', 'c.x'] });
      const child = await ak.create({ accountId: 'acc', parentId: root.id, scopes: ['a.*', 'b.x'] });
      const grand = await ak.create({ accountId: 'acc', parentId: child.id, scopes: ['a.y', 'b.x'] });
      const grand2 = await ak.create({ accountId: 'acc', parentId: child.id, scopes: ['b.x'] });
      const fits = await ak.create({ accountId: 'acc', parentId: root.id, scopes: ['a.y'] });
      const fitsBefore = await ak.getKey(fits.id);

      expect(await ak.update(root.id, { scopes: ['a.y'] }, { cascade: true })).toMatchObject({ scopes: ['a.y'] });
      expect(await scopesOf(ak, child.id)).toEqual(['a.y']);
      expect(await scopesOf(ak, grand.id)).toEqual(['a.y']);
      expect(await scopesOf(ak, grand2.id)).toEqual([]);
      expect(await ak.getKey(fits.id)).toEqual(fitsBefore);
      const v = valid(await ak.validate(grand.key));
      expect(ak.hasScope(v, 'a.y')).toBe(true);
      expect(ak.hasScope(v, 'b.x')).toBe(false);

      // A wildcard child keeps both what the narrower parent grants, and the parent's narrower wildcards.
      const p = await ak.create({ accountId: 'acc', scopes: ['x.*', 'y.z'] });
      const c = await ak.create({ accountId: 'acc', parentId: p.id, scopes: ['x.*', 'y.z'] });
      const unlimitedParent = await ak.create({ accountId: 'acc' });
      const unlimitedChild = await ak.create({ accountId: 'acc', parentId: unlimitedParent.id });
      await ak.update(p.id, { scopes: ['x.a.*', 'x.b', 'y.z', 'w.q'] }, { cascade: true });
      expect(await scopesOf(ak, c.id)).toEqual(['x.a.*', 'x.b', 'y.z']);
      // Unlimited scopes under a parent that gets some become the parent's.
      await ak.update(unlimitedParent.id, { scopes: ['m.n', 'o.*'] }, { cascade: true });
      expect(await scopesOf(ak, unlimitedChild.id)).toEqual(['m.n', 'o.*']);
    });

    it('error: a cascade refused for another reason narrows no descendant', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc', scopes: ['a.*'], budgetCents: 500 });
      await ak.create({ accountId: 'acc', parentId: root.id, scopes: ['a.*'], budgetCents: 300 });
      await refused(db, ak, () => ak.update(root.id, { budgetCents: 10, scopes: ['bad scope'] }, { cascade: true }), 'invalid_scope');
      await refused(db, ak, () => ak.update(root.id, { budgetCents: 10 }, { cascade: 'true' as never }), 'invalid_argument');
    });
  });

  describe('validate() sees a change at once', () => {
    it('happy: a cached key is dropped from this AgentKey\'s cache by an update of it or of an ancestor with cascade', async () => {
      const ak = await getDb().agentKey({ cache: { ttlMs: 60_000 } });
      try {
        const account = newAccount();
        const root = await ak.create({ accountId: account, scopes: ['a.*', 'b.*'], budgetCents: 500 });
        const child = await ak.create({ accountId: account, parentId: root.id, scopes: ['a.*', 'b.x'], budgetCents: 400 });
        const k = await ak.create({ accountId: newAccount(), scopes: ['p.q'], budgetCents: 100, name: 'before' });
        await until(async () => (await ak.validate(k.key)).valid && ak.cacheStats()?.listening === true, 'the cache to listen');
        await ak.validate(child.key);
        await ak.validate(k.key);
        const stats = ak.cacheStats()!;
        expect(valid(await ak.validate(k.key))).toMatchObject({ scopes: ['p.q'], budgetCents: 100 });
        expect(ak.cacheStats()!.hits).toBe(stats.hits + 1);

        await ak.update(k.id, { scopes: ['p.r'] });
        const v1 = valid(await ak.validate(k.key));
        expect(v1.scopes).toEqual(['p.r']);
        expect(ak.hasScope(v1, 'p.q')).toBe(false);
        await ak.update(k.id, { budgetCents: 60, name: 'after', delegatedBy: 'boss' });
        expect(valid(await ak.validate(k.key))).toMatchObject({ budgetCents: 60, budgetRemainingCents: 60, name: 'after', delegatedBy: 'boss' });
        const withExpiry = await ak.update(k.id, { expiresIn: '1h' });
        expect(valid(await ak.validate(k.key)).expiresAt).toBe(withExpiry.expiresAt);
        await ak.update(k.id, { budgetPeriod: 'day' });
        expect(valid(await ak.validate(k.key))).toMatchObject({ budgetPeriod: 'day', budgetResetAt: expect.stringMatching(ISO) });

        // A descendant narrowed by a cascade is dropped too.
        expect(valid(await ak.validate(child.key))).toMatchObject({ budgetCents: 400 });
        await ak.update(root.id, { budgetCents: 150, scopes: ['a.*'] }, { cascade: true });
        expect(valid(await ak.validate(child.key))).toMatchObject({ budgetCents: 150, scopes: ['a.*'] });
      } finally {
        await ak.close();
      }
    });
  });

  describe('concurrency', () => {
    it('concurrency: charges racing an update that lowers the budget to 20: none accepted after it spends past max(spent at the update, 20)', async () => {
      const ak = await getDb().agentKey();
      for (const trigger of [3, 40]) {
        const k = await ak.create({ accountId: newAccount(), budgetCents: 1000 });
        let done = 0;
        let update: Promise<KeyInfo> | undefined;
        let updateResolved = false;
        const afterUpdate: TrackUsageResult[] = [];
        const worker = async () => {
          const results: TrackUsageResult[] = [];
          for (let i = 0; i < 25; i++) {
            const wasAfter = updateResolved;
            const r = await ak.trackUsage(k.key, { costCents: 1 });
            results.push(r);
            if (wasAfter) afterUpdate.push(r);
            if (++done === trigger) {
              update = ak.update(k.id, { budgetCents: 20 });
              void update.then(() => (updateResolved = true), () => {});
            }
          }
          return results;
        };
        const results = (await Promise.all(Array.from({ length: 8 }, worker))).flat();
        const info = await update!;
        const atUpdate = Number(info.spentCents);
        const accepted = results.filter((r) => r.success).length;
        const final = (await ak.getKey(k.id))!;
        expect(info.budgetCents).toBe(20);
        expect(Number(final.spentCents)).toBe(accepted);
        expect(Number(final.spentCents), `spent at the update ${atUpdate}`).toBeLessThanOrEqual(Math.max(atUpdate, 20));
        expect(Number(final.spentCents)).toBeGreaterThanOrEqual(20);
        expect(atUpdate).toBeLessThanOrEqual(Number(final.spentCents));
        for (const r of results.filter((x) => !x.success)) expect(r).toMatchObject({ reason: 'budget_exceeded' });
        if (atUpdate >= 20) for (const r of afterUpdate) expect(r).toMatchObject({ success: false, reason: 'budget_exceeded' });
        expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
        expect((await ak.getKey(k.id))!.spentCents).toBe(final.spentCents);
      }
      await expectAuditOk(ak);
    });

    it('concurrency: an update of a child racing charges on the child and on its parent keeps both within their budgets', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 300 });
      const child = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 100 });
      let done = 0;
      const updates: Promise<unknown>[] = [];
      const worker = async (key: string) => {
        const out: TrackUsageResult[] = [];
        for (let i = 0; i < 50; i++) {
          out.push(await ak.trackUsage(key, { costCents: 1 }));
          if (++done === 60) updates.push(ak.update(child.id, { budgetCents: 200, scopes: ['s.t'] }), ak.update(root.id, { name: 'root' }));
        }
        return out;
      };
      // Demand: 250 cents on the child (its budget ends at 200), 150 more on the root (300).
      const keys = [...Array<string>(5).fill(child.key), ...Array<string>(3).fill(root.key)];
      const results = await Promise.all(keys.map(worker));
      await Promise.all(updates);
      expect(updates).toHaveLength(2);
      const childOk = results.slice(0, 5).flat().filter((r) => r.success).length;
      const rootOk = results.slice(5).flat().filter((r) => r.success).length;
      const [r, c] = [(await ak.getKey(root.id))!, (await ak.getKey(child.id))!];
      expect(c).toMatchObject({ budgetCents: 200, scopes: ['s.t'] });
      expect(r).toMatchObject({ budgetCents: 300, name: 'root' });
      expect(Number(c.spentCents)).toBe(childOk);
      expect(Number(r.spentCents)).toBe(childOk + rootOk);
      expect(Number(c.spentCents)).toBeLessThanOrEqual(200);
      expect(Number(r.spentCents)).toBeLessThanOrEqual(300);
      await expectAuditOk(ak);
    });

    it('concurrency: a parent narrowed with cascade racing its child being widened never leaves the child wider', async () => {
      const ak = await getDb().agentKey();
      for (let round = 0; round < 8; round++) {
        const root = await ak.create({ accountId: 'acc', budgetCents: 500, scopes: ['a.*'] });
        const child = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 300, scopes: ['a.x'] });
        const [narrow, widen] = await Promise.all([
          codeOf(ak.update(root.id, { budgetCents: 100, scopes: ['a.y'] }, { cascade: true })),
          codeOf(ak.update(child.id, { budgetCents: 400, scopes: ['a.x', 'a.z'] })),
        ]);
        expect(narrow).toBe('resolved');
        expect(['resolved', 'budget_exceeds_parent', 'scope_not_allowed']).toContain(widen);
        const c = (await ak.getKey(child.id))!;
        expect(c.budgetCents, `round ${round}: ${widen}`).toBeLessThanOrEqual(100);
        expect(c.scopes).not.toBeNull();
        expect(c.scopes!.every((s) => s === 'a.y'), JSON.stringify(c.scopes)).toBe(true);
      }
    });

    it('concurrency: a parent narrowed (with or without cascade) racing the creation of a wider child never leaves the child wider', async () => {
      const ak = await getDb().agentKey();
      for (let round = 0; round < 20; round++) {
        const cascade = round % 2 === 1;
        const root = await ak.create({ accountId: 'acc', budgetCents: 500 });
        const [narrow, create] = await Promise.all([
          codeOf(ak.update(root.id, { budgetCents: 100 }, { cascade })),
          codeOf(ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 300 })),
        ]);
        const label = `round ${round} (cascade: ${cascade}): update ${narrow}, create ${create}`;
        // One after the other: the child made first (then refused, or narrowed by the cascade), or the parent narrowed first.
        if (cascade) {
          expect(narrow, label).toBe('resolved');
          expect(['resolved', 'budget_exceeds_parent'], label).toContain(create);
        } else expect([narrow, create].sort(), label).toEqual(narrow === 'resolved' ? ['budget_exceeds_parent', 'resolved'] : ['narrows_children', 'resolved']);
        const budget = (await ak.getKey(root.id))!.budgetCents!;
        for (const kid of await ak.listKeys({ parentId: root.id })) expect(kid.budgetCents!, label).toBeLessThanOrEqual(budget);
      }
    });
  });
});

forEachDatabase(
  (getDb) => {
    it('happy: an update through one AgentKey is seen by another on the same table, through its cached validation', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const pool = new pg.Pool({ connectionString: db.url, max: 4 });
      const other = new AgentKey({ pool, tableName: ak.tableName, cache: { ttlMs: 60_000 }, ...(db.directUrl ? { directUrl: db.directUrl } : {}) });
      try {
        const account = newAccount();
        const root = await ak.create({ accountId: account, scopes: ['a.*'], budgetCents: 500 });
        const child = await ak.create({ accountId: account, parentId: root.id, scopes: ['a.*'], budgetCents: 400 });
        await until(async () => (await other.validate(root.key)).valid && other.cacheStats()?.listening === true, 'the other cache to listen');
        await other.validate(root.key);
        await other.validate(child.key);
        const stats = other.cacheStats()!;
        expect(valid(await other.validate(root.key))).toMatchObject({ scopes: ['a.*'], budgetCents: 500 });
        expect(valid(await other.validate(child.key))).toMatchObject({ scopes: ['a.*'], budgetCents: 400 });
        expect(other.cacheStats()!.hits).toBe(stats.hits + 2);

        await ak.update(root.id, { scopes: ['a.b'], budgetCents: 200, name: 'narrowed' }, { cascade: true });
        await soon(() => other.validate(root.key), { valid: true, scopes: ['a.b'], budgetCents: 200, name: 'narrowed' });
        await soon(() => other.validate(child.key), { valid: true, scopes: ['a.b'], budgetCents: 200 });
        expect(other.hasScope(await other.validate(child.key), 'a.c')).toBe(false);

        await ak.update(root.id, { budgetCents: 0 }, { cascade: true });
        await soon(() => other.validate(root.key), { valid: false, reason: 'budget_exceeded' });
        await soon(() => other.validate(child.key), { valid: false, reason: 'budget_exceeded' });
      } finally {
        await other.close();
        await pool.end();
      }
    });
  },
  ['postgres'],
);

forEachDatabase((getDb) => {
  describe("a key's metadata", () => {
    it('happy: create() keeps it, update() replaces it (null removes it), getKey and listKeys show it, the event log has before and after', async () => {
      const ak = await getDb().agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account, metadata: { team: 'search', tier: 2 } });
      expect((await ak.getKey(k.id))!.metadata).toEqual({ team: 'search', tier: 2 });
      const bare = await ak.create({ accountId: account });
      expect((await ak.getKey(bare.id))!.metadata).toBeNull();

      const changed = await ak.update(k.id, { metadata: { team: 'ads' } });
      expect(changed.metadata).toEqual({ team: 'ads' });
      expect((await ak.listKeys({ accountId: account })).find((x) => x.id === k.id)!.metadata).toEqual({ team: 'ads' });
      expect((await ak.update(k.id, { metadata: null })).metadata).toBeNull();

      const [removed, replaced] = await ak.keyEvents({ keyId: k.id, limit: 2 });
      expect(removed!.changes).toEqual({ metadata: { before: { team: 'ads' }, after: null } });
      expect(replaced!.changes).toEqual({ metadata: { before: { team: 'search', tier: 2 }, after: { team: 'ads' } } });
    });

    it('unhappy: metadata that is not a JSON object, is too big or holds a NUL is refused and changes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: newAccount(), metadata: { a: 1 } });
      for (const bad of [[1, 2], 'text', 5, { big: 'x'.repeat(9_000) }, { nul: 'a\u0000b' }, new Date(0), new Map([['a', 1]])]) {
        await refused(db, ak, () => ak.update(k.id, { metadata: bad as never }), 'invalid_argument', `update metadata ${JSON.stringify(bad).slice(0, 30)}`);
        await rejectsWith(() => ak.create({ accountId: 'acct_x', metadata: bad as never }), 'invalid_argument', `create metadata ${JSON.stringify(bad).slice(0, 30)}`);
      }
      expect((await ak.getKey(k.id))!.metadata).toEqual({ a: 1 });
    });
  });
});
