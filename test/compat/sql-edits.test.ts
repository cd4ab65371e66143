import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../../src/index.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';
import { packageKey, packageTableSql } from '../helpers/package.js';
import { soon, until } from '../helpers/wait.js';

/**
 * The @katrinalaszlo/agentkey package's columns are the user's: an UPDATE (or INSERT) by the user's own SQL takes
 * effect at once, even in a cache that would otherwise keep a key for ten minutes,
 * carries over into agentkey's exact figures, and keeps audit() reconciled.
 */

const TEN_MINUTES = { ttlMs: 600_000 };

async function setup(db: TestDb) {
  const table = db.freshTable();
  await db.query(packageTableSql(table));
  const ak = new AgentKey({ pool: db.pool, tableName: table, cache: TEN_MINUTES });
  await ak.migrate();
  const sql = (text: string, params: unknown[] = []) => db.query(text.replaceAll('$table', table), params);
  return { ak, table, sql };
}

/** The SQL error a trigger raised, as a client sees it. */
async function sqlError(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  const err = (await promise.then(
    () => null,
    (e: unknown) => e,
  )) as { code?: string; message?: string } | null;
  expect(err).not.toBeNull();
  return { code: String(err?.code), message: String(err?.message) };
}

forEachDatabase((getDb) => {
  describe('UPDATE of budget_used_cents', () => {
    it('happy: resetting used spend to 0 lets a spent key spend again; a ledger row records it and audit() reconciles', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 99.99 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(k.key, { costCents: 0.01 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      await soon(() => ak.validate(k.key), { valid: false, reason: 'budget_exceeded' });

      await sql(`UPDATE $table SET budget_used_cents = 0 WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 100 })).toMatchObject({ success: true, budgetUsedCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      const rows = await ak.ledger({ keyId: k.id });
      expect(rows.map((r) => [r.kind, r.amountCents])).toEqual([
        ['charge', 100],
        ['reset', -100],
        ['charge', 0.01],
        ['charge', 99.99],
      ]);
      expect(rows[1]!.metadata).toMatchObject({ source: 'sql', from: 100, to: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [] });
      // Usage still reports what was spent: a counter set by hand is not a refund.
      expect((await ak.usage({ keyId: k.id })).totalCents).toBe(200);
    });

    it("happy: raising used spend by SQL leaves less to spend; the key's ancestors and account keep their own figures", async () => {
      const { ak, sql } = await setup(getDb());
      const parent = await ak.create({ accountId: 'acct', budgetCents: 1000 });
      const child = await ak.create({ accountId: 'acct', parentId: parent.id, budgetCents: 100 });
      await ak.setAccountBudget('acct', { budgetCents: 5000 });
      await ak.trackUsage(child.key, { costCents: 10 });
      await sql(`UPDATE $table SET budget_used_cents = 90 WHERE id = $1`, [child.id]);
      await soon(() => ak.validate(child.key), { valid: true, budgetUsedCents: 90, budgetRemainingCents: 10 });
      expect(await ak.trackUsage(child.key, { costCents: 10.01 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(parent.id)).toMatchObject({ spentCents: 10 });
      expect(await ak.getAccountBudget('acct')).toMatchObject({ spentCents: 10 });
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });

    it('error: a negative value is refused with a clear error, and nothing changes', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(k.key, { costCents: 5 });
      const err = await sqlError(sql(`UPDATE $table SET budget_used_cents = -5 WHERE id = $1`, [k.id]));
      expect(err.code).toBe('23514');
      expect(err.message).toMatch(/budget_used_cents must not be negative/);
      await soon(() => ak.validate(k.key), { valid: true, budgetUsedCents: 5 });
      expect(await ak.ledger({ keyId: k.id })).toHaveLength(1);
    });
  });

  describe('UPDATE of budget_cents', () => {
    it('happy: raising or lowering a budget by SQL is enforced at once, exactly; NULL makes the key unlimited', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 10 });
      await ak.trackUsage(k.key, { costCents: 10 });
      await soon(() => ak.validate(k.key), { valid: false, reason: 'budget_exceeded' });
      await sql(`UPDATE $table SET budget_cents = 500 WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, budgetCents: 500, budgetRemainingCents: 490 });
      expect(await ak.trackUsage(k.key, { costCents: 490.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(k.key, { costCents: 490 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      await sql(`UPDATE $table SET budget_cents = NULL WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, budgetCents: null, budgetRemainingCents: null });
      expect(await ak.trackUsage(k.key, { costCents: 1_000 })).toMatchObject({ success: true });
      await sql(`UPDATE $table SET budget_cents = 5 WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: false, reason: 'budget_exceeded' });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('error: a negative budget is refused, and nothing changes', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 10 });
      expect((await sqlError(sql(`UPDATE $table SET budget_cents = -1 WHERE id = $1`, [k.id]))).message).toMatch(/budget_cents must not be negative/);
      await soon(() => ak.validate(k.key), { valid: true, budgetCents: 10 });
    });
  });

  describe('UPDATE of budget_period and budget_reset_at', () => {
    it('happy: setting a period starts one now; clearing it makes the budget a lifetime one; spend is kept', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(k.key, { costCents: 40 });
      await sql(`UPDATE $table SET budget_period = 'day' WHERE id = $1`, [k.id]);
      const daily = await ak.validate(k.key);
      expect(daily).toMatchObject({ valid: true, budgetPeriod: 'day', budgetUsedCents: 40 });
      const reset = new Date((daily as { budgetResetAt: string }).budgetResetAt);
      expect(reset.getUTCHours()).toBe(0);
      expect(reset.getTime()).toBeGreaterThan(Date.now());
      expect(reset.getTime()).toBeLessThanOrEqual(Date.now() + 86_400_000);
      await sql(`UPDATE $table SET budget_period = NULL WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, budgetPeriod: null, budgetResetAt: null, budgetUsedCents: 40 });
    });

    it('happy: a reset moved into the past rolls the period on the next call; one moved into the future is kept, and later periods follow its day', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(k.key, { costCents: 100 });
      await soon(() => ak.validate(k.key), { valid: false, reason: 'budget_exceeded' });
      await sql(`UPDATE $table SET budget_reset_at = NOW() - INTERVAL '5 days' WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: true, budgetUsedCents: 1 });
      expect(await ak.audit()).toMatchObject({ ok: true });

      const future = new Date(Date.UTC(new Date().getUTCFullYear() + 1, 2, 15, 13, 0, 0));
      await sql(`UPDATE $table SET budget_reset_at = $2 WHERE id = $1`, [k.id, future]);
      await soon(() => ak.validate(k.key), { valid: true, budgetResetAt: future.toISOString(), budgetUsedCents: 1 });
      const [row] = await sql(`SELECT budget_anchor_at AS d FROM $table WHERE id = $1`, [k.id]);
      expect(new Date((row as { d: Date }).d).toISOString()).toBe(future.toISOString());
    });

    it("error: a period the package never had is refused with a clear error, and nothing changes", async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      const err = await sqlError(sql(`UPDATE $table SET budget_period = 'weekly' WHERE id = $1`, [k.id]));
      expect(err.message).toMatch(/budget_period must be 'day', 'month' or NULL; got 'weekly'/);
      await soon(() => ak.validate(k.key), { valid: true, budgetPeriod: 'month' });
    });
  });

  describe('UPDATE of expires_at, revoked_at, scopes and name', () => {
    it('happy: each takes effect at once, through a ten-minute cache', async () => {
      const { ak, sql } = await setup(getDb());
      const k = await ak.create({ accountId: 'a', scopes: ['read'], name: 'first' });
      await soon(() => ak.validate(k.key), { valid: true, name: 'first', scopes: ['read'] });
      // The listener starts with the first validation and connects on its own connection.
      await until(() => ak.cacheStats()?.listening === true, 'the cache to listen');

      await sql(`UPDATE $table SET name = 'second', scopes = '{read,write}' WHERE id = $1`, [k.id]);
      // Within the notification's few milliseconds, not the cache's ten minutes.
      const renamed = await soon(() => ak.validate(k.key), { valid: true, name: 'second', scopes: ['read', 'write'] });
      expect(ak.hasScope(renamed, 'write')).toBe(true);

      await sql(`UPDATE $table SET expires_at = NOW() - INTERVAL '1 hour' WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: false, reason: 'expired' });
      await sql(`UPDATE $table SET expires_at = NULL WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, expiresAt: null });

      await sql(`UPDATE $table SET revoked_at = NOW() WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: false, reason: 'revoked' });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      await sql(`UPDATE $table SET revoked_at = NULL WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true });
      // The cache did its job between the edits: every change was announced, none waited for the ttl.
      expect(ak.cacheStats()!.invalidations).toBeGreaterThanOrEqual(5);
    });
  });

  describe('INSERT by SQL', () => {
    it("happy: a key row written by the user's own SQL is enforced through the package's columns, with its spend in the ledger", async () => {
      const { ak, sql } = await setup(getDb());
      const k = packageKey();
      const [{ id }] = (await sql(
        `INSERT INTO $table (account_id, key_hash, key_prefix, budget_cents, budget_used_cents, budget_period, budget_reset_at)
         VALUES ('acct_sql', $1, $2, 300, 120, 'month', NOW() + INTERVAL '10 days') RETURNING id`,
        [k.hash, k.prefix],
      )) as [{ id: number }];
      await soon(() => ak.validate(k.raw), { valid: true, name: 'default', budgetCents: 300, budgetUsedCents: 120, budgetRemainingCents: 180 });
      expect(await ak.trackUsage(k.raw, { costCents: 180.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(k.raw, { costCents: 180 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      const err = await sqlError(sql(`INSERT INTO $table (account_id, key_hash, key_prefix, budget_period) VALUES ('a', 'h', 'p', 'hourly')`));
      expect(err.message).toMatch(/budget_period must be/);
    });
  });

  it("happy: agentkey's own steps never set off the SQL-edit trigger: charges, holds, commits and period rolls write no 'sql' rows", async () => {
    const { ak, sql } = await setup(getDb());
    const k = await ak.create({ accountId: 'a', budgetCents: 1000, budgetPeriod: 'day' });
    for (let i = 0; i < 5; i++) await ak.trackUsage(k.key, { costCents: 1.2345 });
    const hold = await ak.reserve(k.key, { costCents: 10 });
    await ak.commit((hold as { reservationId: string }).reservationId, { costCents: 3.5 });
    await sql(`UPDATE $table SET budget_reset_at = date_trunc('day', NOW()) WHERE id = $1`, [k.id]);
    await ak.trackUsage(k.key, { costCents: 2 });
    const rows = await ak.ledger({ keyId: k.id });
    expect(rows.filter((r) => (r.metadata as { source?: string } | null)?.source === 'sql')).toEqual([]);
    expect(rows.map((r) => r.kind)).toContain('reset');
    await soon(() => ak.validate(k.key), { budgetUsedCents: 2 });
    const [row] = await sql(`SELECT budget_used_cents FROM $table WHERE id = $1`, [k.id]);
    expect(row).toEqual({ budget_used_cents: 2 });
  });

  it('error: a user statement that fails changes nothing, and the AgentKey keeps working', async () => {
    const { ak, sql } = await setup(getDb());
    const k = await ak.create({ accountId: 'a', budgetCents: 100 });
    await expect(sql(`UPDATE $table SET budget_used_cents = -1, budget_cents = 5 WHERE id = $1`, [k.id])).rejects.toBeTruthy();
    await soon(() => ak.validate(k.key), { valid: true, budgetCents: 100, budgetUsedCents: 0 });
    await expect(ak.create({ accountId: '' })).rejects.toBeInstanceOf(AgentKeyError);
  });
});
