import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { ALL_VERSIONS, columnTypes, currentSchema, insertRow, ledgerOfTable, tableSnapshot } from '../helpers/catalog.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';
import { agentKeyErrorOf } from '../helpers/errors.js';
import { bareTableSql, packageKey, packageMigrationSql } from '../helpers/package.js';

/**
 * migrate() on tables that exist already, on PostgreSQL and PGlite: the bare keys table of a user
 * of the @katrinalaszlo/agentkey package, a table migrated with the package's own SQL (its column
 * types kept), and a table migrated before under another spelling of its name. Rows already there
 * keep working.
 */

const DAY = 86_400_000;

forEachDatabase((getDb) => {
  describe("a legacy table of the @katrinalaszlo/agentkey package's bare shape", () => {
    it('keeps every key working: valid, unlimited, scopes null, chargeable, revoked stays revoked, ids kept', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      const k48 = packageKey(48);
      const k64 = packageKey(64);
      const kRevoked = packageKey(48);
      const kUnused = packageKey(64);
      const created = new Date(Date.now() - 30 * DAY);
      const id48 = await insertRow(db, table, { account_id: 'acct_123', key_hash: k48.hash, key_prefix: k48.prefix, name: 'sales-agent', created_at: created });
      const id64 = await insertRow(db, table, { account_id: 'acct_123', key_hash: k64.hash, key_prefix: k64.prefix, name: null, last_used_at: created });
      // A gap in the ids, as deleted rows leave: ids must be kept, not renumbered.
      const idGone = await insertRow(db, table, { account_id: 'acct_0', key_hash: packageKey(48).hash });
      const idRevoked = await insertRow(db, table, { account_id: 'acct_9', key_hash: kRevoked.hash, key_prefix: kRevoked.prefix, revoked_at: new Date(Date.now() - DAY) });
      const idUnused = await insertRow(db, table, { account_id: 'acct_123', key_hash: kUnused.hash });
      await db.query(`DELETE FROM ${table} WHERE id = $1`, [idGone]);
      const before = await db.query<{ id: number; key_hash: string; created_at: Date }>(
        `SELECT id, key_hash, created_at FROM ${table} ORDER BY id`,
      );

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);

      expect(await db.query(`SELECT id, key_hash, created_at FROM ${table} ORDER BY id`)).toEqual(before);

      const v48 = await ak.validate(k48.raw);
      expect(v48).toEqual({
        valid: true,
        id: id48,
        keyId: id48,
        accountId: 'acct_123',
        userId: null,
        name: 'sales-agent',
        scopes: null,
        budgetCents: null,
        budgetUsedCents: 0,
        budgetRemainingCents: null,
        budgetHeldCents: 0,
        budgetPeriod: null,
        budgetResetAt: null,
        expiresAt: null,
        delegatedBy: null,
      });
      // The bare table had no spend: the ledger starts empty and agrees with every counter.
      expect(await ledgerOfTable(db, table)).toEqual([]);
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 4, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(ak.hasScope(v48, 'proxy.chat')).toBe(true);
      expect(ak.hasScope(v48, 'billing.write')).toBe(true);
      expect(await ak.validate(k64.raw)).toMatchObject({ valid: true, keyId: id64, accountId: 'acct_123', scopes: null, budgetCents: null });
      expect(await ak.validate(kUnused.raw)).toMatchObject({ valid: true, keyId: idUnused });
      expect(await ak.validate(kRevoked.raw)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.trackUsage(kRevoked.raw, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });

      // A mistyped legacy key is still refused.
      const typo = k48.raw.slice(0, -1) + (k48.raw.endsWith('0') ? '1' : '0');
      expect(await ak.validate(typo)).toEqual({ valid: false, reason: 'invalid' });

      // Validation stamps last_used_at on the legacy row (in its next batch of stamps).
      await ak.flush();
      const [used] = await db.query<{ last_used_at: Date | null }>(`SELECT last_used_at FROM ${table} WHERE id = $1`, [id48]);
      expect(used!.last_used_at).not.toBeNull();

      expect(await ak.trackUsage(k48.raw, { costCents: 15 })).toEqual({ success: true, budgetUsedCents: 15, budgetRemainingCents: null });
      expect(await ak.trackUsage(k48.raw, { costCents: 0.03 })).toEqual({ success: true, budgetUsedCents: 15.03, budgetRemainingCents: null });
      expect(await ak.validate(k48.raw)).toMatchObject({ valid: true, budgetUsedCents: 15.03, budgetCents: null });
      // The package's INTEGER column shows whole cents, spend rounded up; the exact figure is agentkey's.
      const [spend] = await db.query<{ c: number; m: number }>(`SELECT budget_used_cents AS c, spent_micros AS m FROM ${table} WHERE id = $1`, [id48]);
      expect(spend!.c).toBe(16);
      expect(Number(spend!.m)).toBe(150_300);
      expect((await ledgerOfTable(db, table))!.map((r) => [Number(r.key_id), r.kind, r.amount])).toEqual([
        [id48, 'charge', '150000'],
        [id48, 'charge', '300'],
      ]);
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [] });

      // New keys live beside the legacy ones, with ids after theirs.
      const fresh = await ak.create({ accountId: 'acct_123', scopes: ['proxy.chat'], budgetCents: 100 });
      expect(fresh.id).toBeGreaterThan(Math.max(...before.map((r) => Number(r.id))));
      expect(await ak.validate(fresh.key)).toMatchObject({ valid: true, keyId: fresh.id, scopes: ['proxy.chat'], budgetCents: 100 });
      expect(await ak.validate(k64.raw)).toMatchObject({ valid: true });

      // Revoking a legacy key, within its account only.
      expect(await ak.revoke(id64, 'acct_other')).toBe(false);
      expect(await ak.revoke(id64, 'acct_123')).toBe(true);
      expect(await ak.validate(k64.raw)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.revoke(idRevoked)).toBe(false);
    });

    it('accepts legacy keys minted with a custom keyPrefix', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      const k = packageKey(64, 'sk_live_');
      const id = await insertRow(db, table, { account_id: 'a', key_hash: k.hash, key_prefix: k.prefix });
      const ak = new AgentKey({ pool: db.pool, tableName: table, keyPrefix: 'sk_live_' });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, keyId: id });
      expect(await new AgentKey({ pool: db.pool, tableName: table }).validate(k.raw)).toEqual({ valid: false, reason: 'invalid' });
    });

    it('works with an INTEGER account_id for numeric account ids', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table, 'INTEGER'));
      const k = packageKey(48);
      const id = await insertRow(db, table, { account_id: 42, key_hash: k.hash, key_prefix: k.prefix, name: 'int' });
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect((await columnTypes(db, table)).account_id).toBe('integer');

      const v = await ak.validate(k.raw);
      expect(v).toMatchObject({ valid: true, keyId: id, name: 'int', scopes: null, budgetCents: null });
      expect(v.valid && Number(v.accountId)).toBe(42);
      expect(await ak.trackUsage(k.raw, { costCents: 2.5 })).toMatchObject({ success: true, budgetUsedCents: 2.5 });

      const byNumber = await ak.create({ accountId: 7, budgetCents: 10 });
      const byDigits = await ak.create({ accountId: '8' });
      const vNumber = await ak.validate(byNumber.key);
      expect(vNumber).toMatchObject({ valid: true, keyId: byNumber.id, budgetCents: 10 });
      expect(vNumber.valid && Number(vNumber.accountId)).toBe(7);
      const vDigits = await ak.validate(byDigits.key);
      expect(vDigits.valid && Number(vDigits.accountId)).toBe(8);

      // A non-numeric account id cannot go into an integer column: a clear error, nothing written.
      const count = async () => Number((await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`))[0]!.n);
      const rows = await count();
      await agentKeyErrorOf(ak.create({ accountId: 'acct_x' }));
      expect(await count()).toBe(rows);

      expect(await ak.revoke(id, 43)).toBe(false);
      expect(await ak.revoke(id, 42)).toBe(true);
      expect(await ak.revoke(byNumber.id, '7')).toBe(true);
      expect(await ak.validate(k.raw)).toEqual({ valid: false, reason: 'revoked' });
    });

    it("adds the package's other columns to a keys table that lacks them", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(`CREATE TABLE ${table} (id SERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL)`);
      const k = packageKey(64);
      const id = await insertRow(db, table, { account_id: 'a', key_hash: k.hash });
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(Object.keys(await columnTypes(db, table))).toEqual(
        expect.arrayContaining(['key_prefix', 'name', 'created_at', 'last_used_at', 'revoked_at']),
      );
      // A row without a name reads as the package's 'default'.
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, keyId: id, name: 'default' });
      const fresh = await ak.create({ accountId: 'a', name: 'new', budgetCents: 5, budgetPeriod: 'day' });
      expect(await ak.validate(fresh.key)).toMatchObject({ valid: true, name: 'new', budgetCents: 5 });
      expect(await ak.revoke(id)).toBe(true);
      expect(await ak.validate(k.raw)).toEqual({ valid: false, reason: 'revoked' });
    });

    it('gives legacy rows with a NULL created_at a working period budget', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      const k = packageKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: k.hash, created_at: null, budget_cents: 100, budget_used_cents: 40, budget_period: 'day' });
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      const v = await ak.validate(k.raw);
      expect(v).toMatchObject({ valid: true, budgetCents: 100, budgetUsedCents: 40, budgetRemainingCents: 60, budgetPeriod: 'day' });
      expect(v.valid && v.budgetResetAt).toBeTruthy();
      expect(await ak.trackUsage(k.raw, { costCents: 60.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(k.raw, { costCents: 60 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
    });
  });

  describe("a table already migrated with the @katrinalaszlo/agentkey package's SQL", () => {
    async function pageTable(db: TestDb) {
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      const resetFuture = new Date(Math.floor((Date.now() + 10 * DAY) / 1000) * 1000);
      const expires = new Date(Math.floor((Date.now() + 7 * DAY) / 1000) * 1000);
      const common = { account_id: 'acct_123', scopes: '{usage.read,proxy.chat}', budget_cents: 5000, budget_used_cents: 1200, delegated_by: 'user_456', user_id: 'u_1' };
      const keys = {
        future: packageKey(48),
        nullReset: packageKey(48),
        pastReset: packageKey(64),
        dayPast: packageKey(64),
        lifetime: packageKey(48),
        nullUsed: packageKey(48),
        expired: packageKey(48),
      };
      const ids = {
        future: await insertRow(db, table, { ...common, key_hash: keys.future.hash, key_prefix: keys.future.prefix, name: 'future', budget_period: 'month', budget_reset_at: resetFuture, expires_at: expires }),
        nullReset: await insertRow(db, table, { ...common, key_hash: keys.nullReset.hash, name: 'null-reset', budget_period: 'month', budget_reset_at: null }),
        pastReset: await insertRow(db, table, { ...common, key_hash: keys.pastReset.hash, name: 'past-reset', budget_period: 'month', budget_reset_at: new Date(Date.now() - 3 * DAY), created_at: new Date(Date.now() - 80 * DAY) }),
        dayPast: await insertRow(db, table, { ...common, key_hash: keys.dayPast.hash, name: 'day', budget_period: 'day', budget_reset_at: new Date(Date.now() - 2 * DAY) }),
        lifetime: await insertRow(db, table, { ...common, key_hash: keys.lifetime.hash, name: 'lifetime', budget_period: null }),
        nullUsed: await insertRow(db, table, { account_id: 'acct_7', key_hash: keys.nullUsed.hash, budget_cents: 300, budget_used_cents: null }),
        expired: await insertRow(db, table, { ...common, key_hash: keys.expired.hash, expires_at: new Date(Date.now() - DAY) }),
      };
      return { table, keys, ids, resetFuture, expires };
    }

    it("keeps every budget and its spend, whatever the reset time, and leaves the package's columns INTEGER", async () => {
      const db = getDb();
      const { table, keys, ids, resetFuture, expires } = await pageTable(db);
      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'integer', budget_used_cents: 'integer' });

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);

      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'integer', budget_used_cents: 'integer' });
      const stored = await db.query<{ id: number; b: string | null; u: string | null }>(
        `SELECT id, budget_cents::text AS b, budget_used_cents::text AS u FROM ${table} ORDER BY id`,
      );
      for (const row of stored) {
        if (Number(row.id) === ids.nullUsed) {
          expect(Number(row.b)).toBe(300);
        } else {
          expect([Number(row.b), Number(row.u)]).toEqual([5000, 1200]);
        }
      }

      expect(await ak.validate(keys.future.raw)).toEqual({
        valid: true,
        id: ids.future,
        keyId: ids.future,
        accountId: 'acct_123',
        userId: 'u_1',
        name: 'future',
        scopes: ['usage.read', 'proxy.chat'],
        budgetCents: 5000,
        budgetUsedCents: 1200,
        budgetRemainingCents: 3800,
        budgetHeldCents: 0,
        budgetPeriod: 'month',
        budgetResetAt: resetFuture.toISOString(),
        expiresAt: expires.toISOString(),
        delegatedBy: 'user_456',
      });
      for (const name of ['nullReset', 'pastReset', 'dayPast', 'lifetime'] as const) {
        const v = await ak.validate(keys[name].raw);
        expect(v, name).toMatchObject({ valid: true, keyId: ids[name], budgetCents: 5000, budgetUsedCents: 1200, budgetRemainingCents: 3800 });
      }
      // Period keys whose reset was unset or past now reset in the future; the lifetime key never does.
      const [periods] = await db.query<{ bad: number }>(
        `SELECT count(*)::int AS bad FROM ${table}
         WHERE budget_period IS NOT NULL AND (budget_reset_at IS NULL OR budget_reset_at <= now())`,
      );
      expect(Number(periods!.bad)).toBe(0);
      expect(await ak.validate(keys.lifetime.raw)).toMatchObject({ budgetPeriod: null, budgetResetAt: null });
      expect(await ak.validate(keys.nullUsed.raw)).toMatchObject({ valid: true, budgetCents: 300, budgetUsedCents: 0, budgetRemainingCents: 300 });
      expect(await ak.validate(keys.expired.raw)).toEqual({ valid: false, reason: 'expired' });

      const v = await ak.validate(keys.future.raw);
      expect(ak.hasScope(v, 'proxy.chat')).toBe(true);
      expect(ak.hasScope(v, 'billing.write')).toBe(false);
    });

    it('opens the ledger with exactly one opening-balance row per key with spend, so audit() is ok at once', async () => {
      const db = getDb();
      const { table, ids } = await pageTable(db);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);

      const rows = (await ledgerOfTable(db, table))!;
      const withSpend = [ids.future, ids.nullReset, ids.pastReset, ids.dayPast, ids.lifetime, ids.expired].sort((a, b) => a - b);
      expect(rows.map((r) => Number(r.key_id)).sort((a, b) => a - b)).toEqual(withSpend);
      for (const r of rows) {
        expect(r).toMatchObject({
          account_id: 'acct_123',
          kind: 'adjust',
          amount: '12000000',
          reservation_id: null,
          idempotency_key: null,
          metadata: { reason: expect.stringMatching(/opening balance/) },
        });
      }
      // The key without spend (budget_used_cents NULL) gets no row.
      expect(rows.some((r) => Number(r.key_id) === ids.nullUsed)).toBe(false);
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 7, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      // Usage reports the opening balances as spend of the migrated keys.
      expect(await ak.usage({ accountId: 'acct_123' })).toEqual({ totalCents: 7200, count: 6, overageCents: 0, buckets: [] });

      // A second migrate() adds no second opening balance.
      expect(await ak.migrate()).toEqual([]);
      expect(await ledgerOfTable(db, table)).toEqual(rows);
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('refuses a charge past the remaining budget for every migrated key, and records spend in the cents columns', async () => {
      const db = getDb();
      const { table, keys, ids } = await pageTable(db);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();

      for (const name of ['future', 'nullReset', 'pastReset', 'dayPast', 'lifetime'] as const) {
        const raw = keys[name].raw;
        expect(await ak.trackUsage(raw, { costCents: 3800.0001 }), name).toEqual({
          success: false,
          reason: 'budget_exceeded',
          limitedBy: { kind: 'key', keyId: ids[name], window: expect.any(String) },
          budgetUsedCents: 1200,
          budgetRemainingCents: 3800,
        });
        expect(await ak.trackUsage(raw, { costCents: 3799.97 }), name).toEqual({ success: true, budgetUsedCents: 4999.97, budgetRemainingCents: 0.03 });
        expect(await ak.trackUsage(raw, { costCents: 0.03 }), name).toEqual({ success: true, budgetUsedCents: 5000, budgetRemainingCents: 0 });
        expect(await ak.trackUsage(raw, { costCents: 0.0001 }), name).toMatchObject({ success: false, reason: 'budget_exceeded' });
      }
      expect(await ak.trackUsage(keys.nullUsed.raw, { costCents: 300.5 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 0 });
      expect(await ak.trackUsage(keys.expired.raw, { costCents: 1 })).toEqual({ success: false, reason: 'expired' });

      const [row] = await db.query<{ b: string; u: string }>(
        `SELECT budget_cents::text AS b, budget_used_cents::text AS u FROM ${table} WHERE id = $1`,
        [ids.future],
      );
      expect([Number(row!.b), Number(row!.u)]).toEqual([5000, 5000]);
    });

    it("keeps users' own SQL and reports over the cents columns working", async () => {
      const db = getDb();
      const { table, keys, ids } = await pageTable(db);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      await ak.trackUsage(keys.lifetime.raw, { costCents: 0.03 });

      const [remaining] = await db.query<{ r: number }>(`SELECT budget_cents - budget_used_cents AS r FROM ${table} WHERE id = $1`, [ids.future]);
      expect(remaining!.r).toBe(3800);
      // Whole cents, spend rounded up as the package rounded it: 0.03 more shows as one cent more.
      const [lifetime] = await db.query<{ r: number }>(`SELECT budget_cents - budget_used_cents AS r FROM ${table} WHERE id = $1`, [ids.lifetime]);
      expect(lifetime!.r).toBe(3799);
      const [report] = await db.query<{ total: string; n: number }>(
        `SELECT sum(budget_used_cents)::text AS total, count(*)::int AS n FROM ${table}
         WHERE account_id = 'acct_123' AND budget_used_cents > budget_cents / 10`,
      );
      expect(Number(report!.total)).toBe(1200 * 6 + 1);
      expect(Number(report!.n)).toBe(6);

      // Rows written by users' own SQL after the migration, in whole cents, are read and enforced.
      const k = packageKey(48);
      await db.query(
        `INSERT INTO ${table} (account_id, key_hash, budget_cents, budget_used_cents) VALUES ('acct_1', $1, 500, 0)`,
        [k.hash],
      );
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, budgetCents: 500, budgetRemainingCents: 500 });
      expect(await ak.trackUsage(k.raw, { costCents: 500.01 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });

    it('keeps subject rows written by the @katrinalaszlo/agentkey package working', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      await db.query(`ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS external_subject TEXT`);
      const id = await insertRow(db, table, {
        account_id: 'mch_1',
        key_hash: `subject-${randomBytes(16).toString('hex')}`,
        external_subject: 'mch_1',
        budget_cents: 100,
        budget_used_cents: 40,
      });
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(await ak.validateBySubject('mch_1')).toMatchObject({ valid: true, keyId: id, budgetCents: 100, budgetUsedCents: 40, budgetRemainingCents: 60 });
      await ak.ensureSubject('mch_1', { budgetCents: 999 });
      expect(await ak.validateBySubject('mch_1')).toMatchObject({ keyId: id, budgetCents: 100, budgetUsedCents: 40 });
      const [n] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE external_subject = 'mch_1'`);
      expect(Number(n!.n)).toBe(1);
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60.5 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
    });

    it('keeps an overspent legacy key overspent: nothing remains, nothing more is charged', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      const k = packageKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: k.hash, budget_cents: 100, budget_used_cents: 150, budget_period: 'month', budget_reset_at: new Date(Date.now() + 5 * DAY) });
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      const [{ id }] = (await db.query<{ id: number }>(`SELECT id FROM ${table}`)) as [{ id: number }];
      await ak.migrate();
      // Nothing left: validate() refuses it, as the package did for budget_used_cents >= budget_cents.
      expect(await ak.validate(k.raw)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 100, spentCents: 150, remainingCents: 0 });
      expect(await ak.trackUsage(k.raw, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 150 });
    });

    it("keeps a user's view over the cents columns working: no column it reads changes type", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      const k = packageKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: k.hash, budget_cents: 5000, budget_used_cents: 1200 });
      await db.query(`CREATE VIEW ${table}_report AS SELECT id, budget_cents - budget_used_cents AS remaining FROM ${table}`);

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      await ak.trackUsage(k.raw, { costCents: 99.5 });
      const [row] = await db.query<{ remaining: number }>(`SELECT remaining FROM ${table}_report`);
      expect(row!.remaining).toBe(3700);
    });

    it('a second migrate() after charges changes no spend', async () => {
      const db = getDb();
      const { table, keys } = await pageTable(db);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      await ak.trackUsage(keys.future.raw, { costCents: 100.1234 });
      const before = await tableSnapshot(db, table);
      expect(await ak.migrate()).toEqual([]);
      expect(await tableSnapshot(db, table)).toEqual(before);
      expect(await ak.validate(keys.future.raw)).toMatchObject({ budgetUsedCents: 1300.1234, budgetRemainingCents: 3699.8766 });
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [] });
    });
  });

  describe('a table migrated before under another spelling of its name', () => {
    it('is not converted again: spend of an ended period stays forgotten, anchors and cents stay', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const day = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'day' });
      const month = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(day.key, { costCents: 60 });
      await ak.trackUsage(month.key, { costCents: 12.3456 });
      // The day period ended without a charge since: its spend is no longer owed.
      await db.query(`UPDATE ${table} SET budget_reset_at = now() - interval '1 hour' WHERE id = $1`, [day.id]);
      expect(await ak.validate(day.key)).toMatchObject({ valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      const rows = async () => db.query(`SELECT to_jsonb(x) AS row FROM ${table} x ORDER BY id`);
      const before = await rows();
      const ledgerBefore = await ledgerOfTable(db, table);
      expect(ledgerBefore!.map((r) => r.kind)).toEqual(['charge', 'charge']);

      const schema = await currentSchema(db);
      expect(await new AgentKey({ pool: db.pool, tableName: `${schema}.${table}` }).migrate()).toEqual(ALL_VERSIONS);

      expect(await rows()).toEqual(before);
      expect(await ak.validate(day.key)).toMatchObject({ valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect(await ak.validate(month.key)).toMatchObject({ valid: true, budgetUsedCents: 12.3456 });
      // The ledger already had this spend: no opening balance is added a second time.
      expect(await ledgerOfTable(db, table)).toEqual(ledgerBefore);
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 2, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });
  });
});

forEachDatabase((getDb) => {
  describe('a table of yours under the name of a side table', () => {
    it('stops migrate() with its name and changes nothing: a fresh keys table, and one migrated before', async () => {
      const db = getDb();
      for (const migratedBefore of [false, true]) {
        const table = db.freshTable();
        const events = `${table}_events`;
        await db.query(bareTableSql(table));
        const ak = new AgentKey({ pool: db.pool, tableName: table });
        if (migratedBefore) {
          await ak.migrate();
          await db.query(`DROP TABLE ${events}`);
        }
        await db.query(`CREATE TABLE ${events} (id SERIAL PRIMARY KEY, what TEXT NOT NULL)`);
        await db.query(`INSERT INTO ${events} (what) VALUES ('my own audit row')`);
        await db.query(`COMMENT ON TABLE ${events} IS 'mine'`);
        const before = await tableSnapshot(db, table);
        const err = await agentKeyErrorOf(ak.migrate());
        expect(err.code).toBe('storage_error');
        expect(err.message).toContain(`"${events}"`);
        expect(err.message).toMatch(/without its columns \(key_id, kind, actor, changes\).*nothing was changed/);
        expect(await tableSnapshot(db, table)).toEqual(before);
        expect(await db.query(`SELECT what FROM ${events}`)).toEqual([{ what: 'my own audit row' }]);
        const [comment] = await db.query<{ c: string }>(`SELECT obj_description($1::regclass, 'pg_class') AS c`, [events]);
        expect(comment!.c).toBe('mine');
        // Renamed away, it is agentkey's to make.
        await db.query(`ALTER TABLE ${events} RENAME TO ${table}_mine`);
        expect(await ak.migrate()).toEqual(migratedBefore ? [7] : ALL_VERSIONS);
      }
    });
  });
});
