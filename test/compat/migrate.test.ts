import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../../src/index.js';
import { ALL_VERSIONS, columnTypes, relationExists } from '../helpers/catalog.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';
import { packageKey, packageMigrationSql, packageTableSql } from '../helpers/package.js';
import { soon } from '../helpers/wait.js';

/**
 * migrate() looks at the table, not only at its version records: a keys table dropped and
 * created again, renamed, copied, or restored without agentkey's objects gets all it lacks,
 * and a table an earlier agentkey widened gets the @katrinalaszlo/agentkey package's types back.
 */

/** A table of the package's shape in use: a key with spend, a live hold, an account ceiling. */
async function inUse(db: TestDb) {
  const table = db.freshTable();
  await db.query(packageTableSql(table));
  const ak = new AgentKey({ pool: db.pool, tableName: table });
  await ak.migrate();
  const k = await ak.create({ accountId: 'acct_1', budgetCents: 1000 });
  await ak.trackUsage(k.key, { costCents: 12.5 });
  const hold = (await ak.reserve(k.key, { costCents: 100, ttl: '1h' })) as { reservationId: string };
  await ak.setAccountBudget('acct_1', { budgetCents: 5000 });
  return { table, ak, k, hold };
}

forEachDatabase((getDb) => {
  describe('a keys table dropped and created again', () => {
    it("happy: with the package's shape, it gets all it lacks; what the old table left is set aside, not mixed in", async () => {
      const db = getDb();
      const { table, ak } = await inUse(db);
      await db.query(`DROP TABLE ${table}`);
      await db.query(packageTableSql(table));
      // The version records say everything was applied; the table says otherwise.
      expect(await ak.migrate()).toEqual([1, 3, 6, 7, 8, 10]);

      const fresh = await ak.create({ accountId: 'acct_1', budgetCents: 100, name: 'new' });
      expect(fresh.id).toBe(1);
      // The new key 1 is not the old key 1: no spend, no hold, no ceiling of the old table reach it.
      expect(await ak.validate(fresh.key)).toMatchObject({ valid: true, budgetUsedCents: 0, budgetHeldCents: 0, budgetRemainingCents: 100 });
      expect(await ak.getAccountBudget('acct_1')).toBeNull();
      expect(await ak.ledger({})).toEqual([]);
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await ak.trackUsage(fresh.key, { costCents: 100 })).toMatchObject({ success: true, budgetRemainingCents: 0 });

      // Nothing was lost: the old rows are kept, as JSON, beside the table.
      const kept = await db.query<{ source: string; n: number }>(
        `SELECT source, count(*)::int AS n FROM ${table}_orphans GROUP BY source ORDER BY source`,
      );
      expect(kept.map((r) => [r.source, Number(r.n)])).toEqual([
        ['accounts', 1],
        // The key made and the ceiling set.
        ['events', 2],
        ['holds', 1],
        ['ledger', 2],
      ]);
      expect(await ak.migrate()).toEqual([]);
    });

    it("happy: created again with agentkey's own columns (a schema file), it is still told apart from the old one", async () => {
      const db = getDb();
      const { table, ak } = await inUse(db);
      const [{ ddl }] = (await db.query<{ ddl: string }>(
        `SELECT string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) AS ddl
         FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attname <> 'id'`,
        [table],
      )) as [{ ddl: string }];
      await db.query(`DROP TABLE ${table}`);
      await db.query(`CREATE TABLE ${table} (id BIGSERIAL PRIMARY KEY, ${ddl})`);
      await db.query(`ALTER TABLE ${table} ALTER COLUMN spent_micros SET DEFAULT 0, ALTER COLUMN ancestor_ids SET DEFAULT '{}', ALTER COLUMN depth SET DEFAULT 0, ALTER COLUMN created_at SET DEFAULT now()`);
      await ak.migrate();
      const k = await ak.create({ accountId: 'acct_1', budgetCents: 50 });
      expect(k.id).toBe(1);
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetHeldCents: 0, budgetRemainingCents: 50 });
      expect(await ak.getAccountBudget('acct_1')).toBeNull();
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
  });

  describe('a keys table renamed', () => {
    it('happy: its ledger, holds and ceilings follow it; a hold taken before the rename settles after it', async () => {
      const db = getDb();
      const { table, k, hold } = await inUse(db);
      const renamed = `${table}_renamed`;
      await db.query(`ALTER TABLE ${table} RENAME TO ${renamed}`);
      const ak = new AgentKey({ pool: db.pool, tableName: renamed });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);

      expect(await relationExists(db, `${renamed}_ledger`)).toBe(true);
      expect(await relationExists(db, `${table}_ledger`)).toBe(false);
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetUsedCents: 12.5, budgetHeldCents: 100 });
      expect(await ak.commit(hold.reservationId, { costCents: 30 })).toMatchObject({ success: true, costCents: 30, budgetUsedCents: 42.5 });
      expect(await ak.getAccountBudget('acct_1')).toMatchObject({ budgetCents: 5000, spentCents: 42.5 });
      expect((await ak.ledger({ keyId: k.id })).map((r) => r.kind)).toEqual(['commit', 'hold', 'charge']);
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      // Changes still reach caches: the triggers now announce on the new table's channel.
      expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      await db.query(`UPDATE ${renamed} SET revoked_at = now() WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: false, reason: 'revoked' });
    });

    it('happy: a copy of a live keys table (LIKE ... INCLUDING ALL) starts its own history and leaves the original its own', async () => {
      const db = getDb();
      const { table, ak, k } = await inUse(db);
      const copy = `${table}_copy`;
      await db.query(`CREATE TABLE ${copy} (LIKE ${table} INCLUDING ALL)`);
      await db.query(`INSERT INTO ${copy} SELECT * FROM ${table}`);
      const akCopy = new AgentKey({ pool: db.pool, tableName: copy });
      await akCopy.migrate();
      expect(await relationExists(db, `${table}_ledger`)).toBe(true);
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetUsedCents: 12.5, budgetHeldCents: 100 });
      // The copy's spend is explained by an opening balance in its own ledger.
      expect(await akCopy.validate(k.key)).toMatchObject({ valid: true, budgetUsedCents: 12.5, budgetHeldCents: 0 });
      expect(await akCopy.audit()).toMatchObject({ ok: true });
      expect(await ak.audit()).toMatchObject({ ok: true });
      expect(await ak.migrate()).toEqual([]);
      expect(await ak.validate(k.key)).toMatchObject({ budgetHeldCents: 100 });
    });
  });

  describe('a keys table restored without agentkey objects', () => {
    it('happy: the ledger, holds, functions and triggers are made again, with the spend it had as an opening balance', async () => {
      const db = getDb();
      const { table, ak, k } = await inUse(db);
      // As a restore of the keys table alone leaves it: no side tables, no functions, no triggers.
      await db.query(`DROP TABLE ${table}_ledger, ${table}_holds, ${table}_accounts`);
      for (const trigger of ['agentkey_sync', 'agentkey_sync_insert', 'agentkey_changed', 'agentkey_deleted']) {
        await db.query(`DROP TRIGGER ${trigger} ON ${table}`);
      }
      await db.query(`DROP FUNCTION ${table}_spend_many, ${table}_spend, ${table}_settle, ${table}_sync`);
      expect(await ak.migrate()).toEqual([2, 3, 6, 8, 11, 12]);

      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetUsedCents: 12.5, budgetHeldCents: 0 });
      expect((await ak.ledger({ keyId: k.id })).map((r) => [r.kind, r.amountCents])).toEqual([['adjust', 12.5]]);
      expect(await ak.audit()).toMatchObject({ ok: true });
      expect(await ak.trackUsage(k.key, { costCents: 987.5 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      // The SQL-edit trigger is back.
      await db.query(`UPDATE ${table} SET budget_used_cents = 0 WHERE id = $1`, [k.id]);
      await soon(() => ak.validate(k.key), { valid: true, budgetUsedCents: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
  });

  describe('a table an earlier agentkey widened to NUMERIC(20,4)', () => {
    async function widened(db: TestDb) {
      const table = db.freshTable();
      await db.query(packageTableSql(table));
      await db.query(packageMigrationSql(table));
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const k = await ak.create({ accountId: 'a', budgetCents: 1234.5678 });
      await ak.trackUsage(k.key, { costCents: 12.0001 });
      // What the earlier migrate() left: the package's columns widened, exact values in them, versions 1-4
      // recorded, and its change trigger, which watched budget_cents.
      for (const trigger of ['agentkey_sync', 'agentkey_sync_insert', 'agentkey_changed', 'agentkey_key_event']) await db.query(`DROP TRIGGER ${trigger} ON ${table}`);
      await db.query(`ALTER TABLE ${table} ALTER COLUMN budget_cents TYPE NUMERIC(20,4), ALTER COLUMN budget_used_cents TYPE NUMERIC(20,4)`);
      await db.query(`UPDATE ${table} SET budget_cents = budget_micros / 10000.0, budget_used_cents = spent_micros / 10000.0`);
      await db.query(`CREATE TRIGGER agentkey_changed AFTER UPDATE OF budget_cents, revoked_at ON ${table} FOR EACH ROW
        WHEN ((OLD.budget_cents, OLD.revoked_at) IS DISTINCT FROM (NEW.budget_cents, NEW.revoked_at))
        EXECUTE FUNCTION agentkey_notify_change('agentkey_old_channel')`);
      await db.query(`DELETE FROM agentkey_migrations WHERE table_name = $1 AND version = 5`, [table]);
      return { table, ak, k };
    }

    it("happy: it gets the package's INTEGER types back, in whole cents (budget down, spend up); exact figures are kept", async () => {
      const db = getDb();
      const { table, ak, k } = await widened(db);
      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'numeric', budget_used_cents: 'numeric' });
      expect(await ak.migrate()).toEqual([5]);
      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'integer', budget_used_cents: 'integer' });
      const [row] = await db.query(`SELECT budget_cents, budget_used_cents FROM ${table} WHERE id = $1`, [k.id]);
      expect(row).toEqual({ budget_cents: 1234, budget_used_cents: 13 });
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetCents: 1234.5678, budgetUsedCents: 12.0001 });
      expect(await ak.audit()).toMatchObject({ ok: true });
      expect(await ak.migrate()).toEqual([]);
    });

    it('error: a view over the widened columns stops it with a clear error naming the view, and nothing changes', async () => {
      const db = getDb();
      const { table, ak, k } = await widened(db);
      await db.query(`CREATE VIEW ${table}_report AS SELECT id, budget_cents - budget_used_cents AS remaining FROM ${table}`);
      const err = await ak.migrate().then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(AgentKeyError);
      expect((err as AgentKeyError).message).toMatch(new RegExp(`read them \\(view ${table}_report\\)`));
      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'numeric' });
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetUsedCents: 12.0001 });
      await db.query(`DROP VIEW ${table}_report`);
      expect(await ak.migrate()).toEqual([5]);
    });
  });

  it('happy: an unknown key of a package table still reads as invalid after every repair', async () => {
    const db = getDb();
    const { ak } = await inUse(db);
    expect(await ak.validate(packageKey().raw)).toEqual({ valid: false, reason: 'invalid' });
  });
});
