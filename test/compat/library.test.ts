import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, type AgentKeyOptions, expiryFromDuration } from '../../src/index.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';
import { packageKey, packageTableSql } from '../helpers/package.js';
import { soon } from '../helpers/wait.js';
import { agentKeyErrorOf } from '../helpers/errors.js';

/**
 * A user of @katrinalaszlo/agentkey 0.2 switches by changing the import: the same keys
 * table (created as the package's users have it, `name TEXT NOT NULL DEFAULT 'default'`),
 * the same calls, and the same fields, reasons and messages back.
 */

async function packageUser(db: TestDb, options: Partial<AgentKeyOptions> = {}, extraColumns = '') {
  const table = db.freshTable();
  await db.query(packageTableSql(table));
  if (extraColumns) await db.query(`ALTER TABLE ${table} ${extraColumns}`);
  const ak = new AgentKey({ pool: db.pool, tableName: table, ...options });
  await ak.migrate();
  return { ak, table };
}

forEachDatabase((getDb) => {
  describe('create() on the package table', () => {
    it('happy: creates keys and subjects on a name NOT NULL DEFAULT table, and other columns keep their defaults', async () => {
      const db = getDb();
      const { ak, table } = await packageUser(db, {}, "ADD COLUMN tier TEXT NOT NULL DEFAULT 'free', ADD COLUMN region TEXT DEFAULT 'eu'");
      const unnamed = await ak.create({ accountId: 'acct_1' });
      const named = await ak.create({ accountId: 'acct_1', name: 'sales-agent' });
      await ak.ensureSubject('mch_1', { budgetCents: 100 });
      const rows = await db.query<{ id: number; name: string; tier: string; region: string; external_subject: string | null }>(
        `SELECT id, name, tier, region, external_subject FROM ${table} ORDER BY id`,
      );
      expect(rows.map((r) => [Number(r.id), r.name, r.tier, r.region, r.external_subject])).toEqual([
        [unnamed.id, 'default', 'free', 'eu', null],
        [named.id, 'sales-agent', 'free', 'eu', null],
        [expect.any(Number), 'default', 'free', 'eu', 'mch_1'],
      ]);
      expect(await ak.validate(unnamed.key)).toMatchObject({ valid: true, name: 'default' });
      expect(await ak.validateBySubject('mch_1')).toMatchObject({ valid: true, name: 'default', budgetCents: 100 });
    });

    it("happy: returns the package's CreateKeyResult: { key, id, scopes, budgetCents, budgetPeriod, expiresAt }", async () => {
      const { ak } = await packageUser(getDb(), { keyPrefix: 'test_', validScopes: ['read', 'write', 'admin'] });
      const before = Date.now();
      const created = await ak.create({
        accountId: 'acct_test_1',
        scopes: ['read'],
        budgetCents: 1000,
        budgetPeriod: 'month',
        expiresIn: '1d',
        name: 'test-key',
      });
      expect(created).toEqual({
        key: expect.stringMatching(/^test_/),
        id: expect.any(Number),
        scopes: ['read'],
        budgetCents: 1000,
        budgetPeriod: 'month',
        expiresAt: expect.any(String),
      });
      const expires = new Date(created.expiresAt as string).getTime();
      expect(expires).toBeGreaterThanOrEqual(before + 86_400_000 - 1_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 86_400_000 + 1_000);
      expect(await ak.create({ accountId: 'acct_test_2' })).toMatchObject({ scopes: null, budgetCents: null, budgetPeriod: null, expiresAt: null });
    });

    it("happy: expiresIn '0h' (any zero duration) is accepted, and the key is expired at once", async () => {
      const { ak } = await packageUser(getDb());
      for (const zero of ['0h', '0m', '0d', '0s', '0mo']) {
        const created = await ak.create({ accountId: 'acct_test_expire', expiresIn: zero });
        expect(created.expiresAt, zero).not.toBeNull();
        expect(await ak.validate(created.key), zero).toEqual({ valid: false, reason: 'expired' });
        expect(await ak.trackUsage(created.key, { costCents: 1 }), zero).toEqual({ success: false, reason: 'expired' });
      }
    });

    it("error: messages begin with the package's wording, and keep this project's codes", async () => {
      const { ak } = await packageUser(getDb(), { validScopes: ['read', 'write'] });
      const scopes = await agentKeyErrorOf(ak.create({ accountId: 'a', scopes: ['read', 'fake_scope', 'other'] }));
      expect(scopes.message.startsWith('Invalid scopes: fake_scope, other')).toBe(true);
      expect(scopes.code).toBe('invalid_scope');
      const duration = await agentKeyErrorOf(ak.create({ accountId: 'a', expiresIn: '7x' }));
      expect(duration.message.startsWith('Invalid duration: 7x')).toBe(true);
      expect(duration.code).toBe('invalid_duration');
      const period = await agentKeyErrorOf(ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'weekly' as never }));
      expect(period.message.startsWith('Invalid budget period: weekly')).toBe(true);
      expect(period.code).toBe('invalid_period');
      // The same from ensureSubject(), as the package's subject tests match them.
      await expect(ak.ensureSubject('mch_badscope', { scopes: ['nope'] })).rejects.toThrow('Invalid scopes: nope');
      await expect(ak.ensureSubject('mch_badperiod', { budgetCents: 100, budgetPeriod: 'weekly' as never })).rejects.toThrow(/Invalid budget period/);
      await expect(ak.ensureSubject('mch_badexpiry', { expiresIn: 'soon' })).rejects.toThrow('Invalid duration: soon');
      // A malformed scope is named too, even without validScopes.
      const { ak: open } = await packageUser(getDb());
      await expect(open.create({ accountId: 'a', scopes: ['ok', 'not ok'] })).rejects.toThrow('Invalid scopes: not ok');
      // Nothing was created by any of them.
      expect(await ak.listKeys({})).toEqual([]);
    });

    it("happy: validScopes lets 'admin' through, as the package's validateScopes did; validateScopes() reports the rest", async () => {
      const { ak } = await packageUser(getDb(), { validScopes: ['read', 'write'] });
      const admin = await ak.create({ accountId: 'a', scopes: ['admin'] });
      const v = await ak.validate(admin.key);
      expect(ak.hasScope(v, 'read')).toBe(true);
      expect(ak.hasScope(v, 'anything')).toBe(true);
      expect(ak.validateScopes(['read', 'admin'])).toEqual({ valid: true });
      expect(ak.validateScopes(['read', 'nope', 'write', 'bad scope'])).toEqual({ valid: false, invalid: ['nope', 'bad scope'] });
      const { ak: open } = await packageUser(getDb());
      expect(open.validateScopes(['anything.at.all'])).toEqual({ valid: true });
    });
  });

  describe('validate()', () => {
    it("happy: the package's ValidateResult fields: id, userId, name ('default' when NULL), and the rest", async () => {
      const db = getDb();
      const { ak, table } = await packageUser(db);
      const created = await ak.create({
        accountId: 'acct_test_val',
        userId: 'user_9',
        scopes: ['read', 'write'],
        budgetCents: 5000,
        budgetPeriod: 'month',
        delegatedBy: 'user_456',
        name: 'sales-agent',
      });
      const v = await ak.validate(created.key);
      expect(v).toEqual({
        valid: true,
        id: created.id,
        keyId: created.id,
        accountId: 'acct_test_val',
        userId: 'user_9',
        name: 'sales-agent',
        scopes: ['read', 'write'],
        budgetCents: 5000,
        budgetUsedCents: 0,
        budgetRemainingCents: 5000,
        budgetHeldCents: 0,
        budgetPeriod: 'month',
        budgetResetAt: expect.any(String),
        expiresAt: null,
        delegatedBy: 'user_456',
      });
      // A row whose name column allows NULL and holds it reads as 'default'.
      await db.query(`ALTER TABLE ${table} ALTER COLUMN name DROP NOT NULL`);
      await db.query(`UPDATE ${table} SET name = NULL WHERE id = $1`, [created.id]);
      await soon(() => ak.validate(created.key), { valid: true, name: 'default' });
    });

    it("happy: a key with nothing left is refused with reason 'budget_exceeded'; a period rollover lets it through again", async () => {
      const db = getDb();
      const { ak, table } = await packageUser(db);
      const k = await ak.create({ accountId: 'acct_test_reset', budgetCents: 100, budgetPeriod: 'day' });
      expect(await ak.trackUsage(k.key, { costCents: 99.5 })).toMatchObject({ success: true });
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetRemainingCents: 0.5 });
      expect(await ak.trackUsage(k.key, { costCents: 0.5 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'budget_exceeded' });

      await db.query(`UPDATE ${table} SET budget_reset_at = NOW() - INTERVAL '5 days' WHERE id = $1`, [k.id]);
      const again = await soon(() => ak.validate(k.key), { valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect(new Date((again as { budgetResetAt: string }).budgetResetAt).getTime()).toBeGreaterThan(Date.now());
    });

    it("happy: a $0 key has nothing to spend, so it is refused as 'budget_exceeded', as the package refused it", async () => {
      const { ak } = await packageUser(getDb());
      const zero = await ak.create({ accountId: 'a', budgetCents: 0 });
      expect(await ak.validate(zero.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(zero.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });

    it("security: money held by live holds counts; so do a spent ancestor and a spent account ceiling", async () => {
      const { ak } = await packageUser(getDb());
      const held = await ak.create({ accountId: 'acct_held', budgetCents: 10 });
      const hold = await ak.reserve(held.key, { costCents: 10 });
      expect(await ak.validate(held.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      await ak.release((hold as { reservationId: string }).reservationId);
      expect(await ak.validate(held.key)).toMatchObject({ valid: true, budgetRemainingCents: 10 });

      // A child with room of its own under a parent another child has spent.
      const parent = await ak.create({ accountId: 'acct_tree', budgetCents: 100 });
      const spender = await ak.create({ accountId: 'acct_tree', parentId: parent.id, budgetCents: 100 });
      const sibling = await ak.create({ accountId: 'acct_tree', parentId: parent.id, budgetCents: 50 });
      expect(await ak.validate(sibling.key)).toMatchObject({ valid: true });
      expect(await ak.trackUsage(spender.key, { costCents: 100 })).toMatchObject({ success: true });
      expect(await ak.validate(parent.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.validate(sibling.key)).toEqual({ valid: false, reason: 'budget_exceeded' });

      // An unlimited key under a spent account ceiling.
      const unlimited = await ak.create({ accountId: 'acct_ceiling' });
      await ak.setAccountBudget('acct_ceiling', { budgetCents: 20 });
      expect(await ak.validate(unlimited.key)).toMatchObject({ valid: true, budgetRemainingCents: null });
      expect(await ak.trackUsage(unlimited.key, { costCents: 20 })).toMatchObject({ success: true });
      expect(await ak.validate(unlimited.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      await ak.setAccountBudget('acct_ceiling', { budgetCents: 30 });
      expect(await ak.validate(unlimited.key)).toMatchObject({ valid: true });
    });

    it('security: revoked and expired come before budget_exceeded, as in the package', async () => {
      const db = getDb();
      const { ak, table } = await packageUser(db);
      const k = await ak.create({ accountId: 'a', budgetCents: 0 });
      await db.query(`UPDATE ${table} SET expires_at = NOW() - INTERVAL '1 hour' WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: false, reason: 'expired' });
      await ak.revoke(k.id);
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate('test_fakekeythatdoesnotexist')).toEqual({ valid: false, reason: 'invalid' });
    });
  });

  describe('trackUsage()', () => {
    it("error: an unknown or malformed key, or an unknown subject, answers reason 'invalid_key'", async () => {
      const { ak } = await packageUser(getDb());
      expect(await ak.trackUsage(packageKey().raw, { costCents: 5 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.trackUsage('not-a-key', { costCents: 5 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.trackUsageBySubject('mach_ghost', { costCents: 5 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.reserve(packageKey().raw, { costCents: 5 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.trackUsage(packageKey().raw, { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
    });

    it('happy: a zero cost returns { success: true } with no budget figures, and records nothing', async () => {
      const db = getDb();
      const { ak } = await packageUser(db);
      const k = await ak.create({ accountId: 'a', budgetCents: 10 });
      await ak.ensureSubject('mch_free', { budgetCents: 10 });
      expect(await ak.trackUsage(k.key, { costCents: 0 })).toEqual({ success: true });
      expect(await ak.trackUsageBySubject('mch_free', { costCents: 0 })).toEqual({ success: true });
      expect(await ak.ledger({})).toEqual([]);
      expect(await ak.validate(k.key)).toMatchObject({ budgetUsedCents: 0, budgetRemainingCents: 10 });
    });

    it("happy: the package's columns read as whole-cent numbers, spend rounded up; the exact figure is agentkey's", async () => {
      const db = getDb();
      const { ak, table } = await packageUser(db);
      const k = await ak.create({ accountId: 'acct_test_usage', budgetCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 30 })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 70 });
      expect(await ak.trackUsage(k.key, { costCents: 0.03 })).toEqual({ success: true, budgetUsedCents: 30.03, budgetRemainingCents: 69.97 });
      const [row] = await db.query<{ budget_cents: unknown; budget_used_cents: unknown }>(
        `SELECT budget_cents, budget_used_cents FROM ${table} WHERE id = $1`,
        [k.id],
      );
      expect(row).toEqual({ budget_cents: 100, budget_used_cents: 31 });
      const types = await db.query<{ column_name: string; data_type: string }>(
        `SELECT column_name, data_type FROM information_schema.columns
         WHERE table_name = $1 AND column_name IN ('budget_cents', 'budget_used_cents') ORDER BY column_name`,
        [table],
      );
      expect(types.map((t) => [t.column_name, t.data_type])).toEqual([
        ['budget_cents', 'integer'],
        ['budget_used_cents', 'integer'],
      ]);
      // The package's concurrency test, on a subject: 20 charges of 20 against 100 -> exactly 5.
      await ak.ensureSubject('mach_race', { budgetCents: 100 });
      const results = await Promise.all(Array.from({ length: 20 }, () => ak.trackUsageBySubject('mach_race', { costCents: 20 })));
      expect(results.filter((r) => r.success)).toHaveLength(5);
      const [race] = await db.query<{ budget_used_cents: unknown }>(`SELECT budget_used_cents FROM ${table} WHERE external_subject = 'mach_race'`);
      expect(race!.budget_used_cents).toBe(100);
    });
  });

  describe('helpers', () => {
    it('happy: expiryFromDuration() gives the instant a duration from now ends, or null for none', () => {
      const from = new Date('2026-01-31T10:00:00Z');
      expect(expiryFromDuration('1h', from)?.toISOString()).toBe('2026-01-31T11:00:00.000Z');
      expect(expiryFromDuration('7d', from)?.toISOString()).toBe('2026-02-07T10:00:00.000Z');
      expect(expiryFromDuration('1mo', from)?.toISOString()).toBe('2026-02-28T10:00:00.000Z');
      expect(expiryFromDuration('0h', from)?.toISOString()).toBe(from.toISOString());
      expect(expiryFromDuration(null)).toBeNull();
      expect(expiryFromDuration(undefined)).toBeNull();
      const now = Date.now();
      const t = expiryFromDuration('30m')!.getTime();
      expect(t - now).toBeGreaterThanOrEqual(30 * 60_000 - 1_000);
      expect(() => expiryFromDuration('30 minutes')).toThrow('Invalid duration: 30 minutes');
    });
  });
});
