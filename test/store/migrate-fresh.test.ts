import { describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { ALL_VERSIONS, columnTypes, currentSchema, indexes, insertRow, ledgerObjects, ledgerOfTable, nextResetSchemas, tableSnapshot, treeObjects, treeObjectsOf, versionRows } from '../helpers/catalog.js';
import { forEachDatabase } from '../helpers/databases.js';
import { agentKeyErrorOf } from '../helpers/errors.js';
import { bareTableSql, packageKey, packageMigrationSql } from '../helpers/package.js';

/**
 * migrate() on an empty database, on PostgreSQL and PGlite: the table, the objects beside it and
 * a version record for every migration; concurrent calls in one process; and a migration that
 * fails midway, which leaves nothing half done.
 */

forEachDatabase((getDb) => {
  describe('on an empty database', () => {
    it('creates the table, the version table, the period function and the indexes, and returns every version', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });

      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(ALL_VERSIONS).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);

      const cols = await columnTypes(db, table);
      for (const col of ['id', 'account_id', 'key_hash', 'key_prefix', 'name', 'created_at', 'last_used_at', 'revoked_at']) {
        expect(cols).toHaveProperty(col);
      }
      // The columns of the package's migration SQL keep their names and their types.
      expect(cols).toMatchObject({
        user_id: 'text',
        scopes: 'ARRAY',
        budget_cents: 'integer',
        budget_used_cents: 'integer',
        budget_period: 'text',
        budget_reset_at: 'timestamp with time zone',
        expires_at: 'timestamp with time zone',
        delegated_by: 'text',
        external_subject: 'text',
      });

      const versions = await versionRows(db, table);
      expect(versions.map((v) => Number(v.version))).toEqual(ALL_VERSIONS);
      for (const v of versions) {
        expect(v.table_name).toBe(table);
        expect(v.name).toMatch(/\S/);
        expect(v.applied_at).toBeTruthy();
      }
      expect(new Set(versions.map((v) => v.name)).size).toBe(versions.length);

      // Version 2: the ledger and holds tables, the spend and settle functions, the append-only trigger.
      expect(await ledgerObjects(db, table)).toEqual({
        ledger: true,
        holds: true,
        functions: [`${table}_settle`, `${table}_spend`],
        triggers: ['agentkey_append_only'],
      });
      expect(await columnTypes(db, `${table}_ledger`)).toEqual({
        id: 'bigint',
        key_id: 'bigint',
        account_id: 'text',
        kind: 'text',
        amount_micros: 'bigint',
        reservation_id: 'text',
        idempotency_key: 'text',
        metadata: 'jsonb',
        created_at: 'timestamp with time zone',
        // Version 11: an LLM call's model and token counts.
        model: 'text',
        usage: 'jsonb',
      });
      // Version 3: tree columns, the accounts table, hold paths, the calendar period functions,
      // spend and settle replaced by tree- and account-aware ones; an account's ledger rows have no key.
      expect(await treeObjects(db, table)).toEqual(treeObjectsOf(table));
      const [period] = await db.query<{ s: string; e: string }>(
        `SELECT to_char(agentkey_period_start('month', '2024-02-10T05:00:00Z') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS s,
                to_char(agentkey_period_end('month', '2024-02-10T05:00:00Z') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS e`,
      );
      expect(period).toEqual({ s: '2024-02-01 00:00', e: '2024-03-01 00:00' });
      expect(await columnTypes(db, `${table}_holds`)).toMatchObject({
        id: 'text',
        key_id: 'bigint',
        amount_micros: 'bigint',
        status: 'text',
        expires_at: 'timestamp with time zone',
        committed_micros: 'bigint',
        idempotency_key: 'text',
      });
      const ledgerIdx = await indexes(db, `${table}_ledger`);
      expect(ledgerIdx.some((d) => /UNIQUE INDEX/.test(d) && /\(key_id, idempotency_key\)/.test(d))).toBe(true);
      expect(ledgerIdx.some((d) => /\(key_id, created_at\)/.test(d))).toBe(true);
      expect(ledgerIdx.some((d) => /\(account_id, created_at\)/.test(d))).toBe(true);
      expect(ledgerIdx.some((d) => /\(created_at\)/.test(d))).toBe(true);
      const holdIdx = await indexes(db, `${table}_holds`);
      expect(holdIdx.some((d) => /UNIQUE INDEX/.test(d) && /\(key_id, idempotency_key\)/.test(d))).toBe(true);
      expect(holdIdx.some((d) => /\(key_id, expires_at\)/.test(d) && /WHERE/.test(d))).toBe(true);
      // An empty table has no spend: no opening balance.
      expect(await ledgerOfTable(db, table)).toEqual([]);

      expect(await nextResetSchemas(db)).toContain(await currentSchema(db));
      const [reset] = await db.query<{ r: string }>(
        `SELECT to_char(agentkey_next_reset('month', '2024-01-31T10:00:00Z', '2024-02-10T00:00:00Z') AT TIME ZONE 'UTC',
                        'YYYY-MM-DD HH24:MI') AS r`,
      );
      expect(reset!.r).toBe('2024-02-29 00:00');

      const idx = await indexes(db, table);
      expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(key_hash\)/.test(d))).toBe(true);
      expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(external_subject\)/.test(d) && /WHERE/.test(d))).toBe(true);
      expect(idx.some((d) => !/UNIQUE/.test(d) && /\(account_id\)/.test(d))).toBe(true);

      const key = await ak.create({ accountId: 'acct_1', budgetCents: 100, budgetPeriod: 'month' });
      expect(await ak.validate(key.key)).toMatchObject({ valid: true, keyId: key.id, budgetRemainingCents: 100, budgetHeldCents: 0 });

      // Run again: nothing to apply, the version table still lists 1, 2 and 3 once each.
      expect(await ak.migrate()).toEqual([]);
      expect((await versionRows(db, table)).map((v) => Number(v.version))).toEqual(ALL_VERSIONS);
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });

    it('is idempotent: a second call, from the same or another instance, returns [] and changes nothing', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      const key = await ak.create({ accountId: 'acct_1', budgetCents: 5000, budgetPeriod: 'month', scopes: ['a'] });
      await ak.trackUsage(key.key, { costCents: 12.3456 });
      const before = await tableSnapshot(db, table);

      expect(await ak.migrate()).toEqual([]);
      expect(await new AgentKey({ pool: db.pool, tableName: table }).migrate()).toEqual([]);

      expect(await tableSnapshot(db, table)).toEqual(before);
      expect(before.ledger).toHaveLength(1);
      expect(await ak.validate(key.key)).toMatchObject({ valid: true, budgetUsedCents: 12.3456, budgetRemainingCents: 4987.6544 });
      expect(await ak.audit()).toMatchObject({ ok: true, mismatches: [] });
    });

    it('upgrades a database made before overage (version 5): the ledger admits overage rows, keys and holds get their overage columns, spend kept', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      await ak.migrate();
      const key = await ak.create({ accountId: 'acct_1', budgetCents: 10 });
      await ak.trackUsage(key.key, { costCents: 4 });
      // Back to what version 5 left: the ledger's unnamed kind check without 'overage', no overage columns.
      await db.query(`ALTER TABLE "${table}_ledger" DROP CONSTRAINT agentkey_ledger_kind`);
      await db.query(`ALTER TABLE "${table}_ledger" ADD CHECK (kind IN ('charge', 'hold', 'commit', 'release', 'expire', 'reset', 'adjust'))`);
      await db.query(`ALTER TABLE "${table}" DROP COLUMN overage_micros`);
      await db.query(`ALTER TABLE "${table}_holds" DROP COLUMN overage_micros`);
      await db.query(`DELETE FROM agentkey_migrations WHERE table_name = $1 AND version = 6`, [table]);

      expect(await new AgentKey({ pool: db.pool, tableName: table }).migrate()).toEqual([6]);
      const checks = await db.query<{ def: string }>(
        `SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'c'`,
        [`"${table}_ledger"`],
      );
      expect(checks.map((c) => c.def)).toEqual([expect.stringContaining("'overage'")]);
      const hold = await ak.reserve(key.key, { costCents: 1 });
      expect(await ak.commit((hold as { reservationId: string }).reservationId, { costCents: 9 })).toMatchObject({ chargedCents: 6, overageCents: 3 });
      expect(await ak.getKey(key.id)).toMatchObject({ spentCents: 10, overageCents: 3 });
      expect(await ak.audit()).toMatchObject({ ok: true, overageCents: 3 });
      expect(await ak.migrate()).toEqual([]);
    });

    it('migrates several tables of one database independently', async () => {
      const db = getDb();
      const [a, b] = [db.freshTable(), db.freshTable()];
      const akA = new AgentKey({ pool: db.pool, tableName: a });
      const akB = new AgentKey({ pool: db.pool, tableName: b });
      expect(await akA.migrate()).toEqual(ALL_VERSIONS);
      expect(await akB.migrate()).toEqual(ALL_VERSIONS);
      expect(await akA.migrate()).toEqual([]);
      const key = await akA.create({ accountId: 'x' });
      expect(await akB.validate(key.key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await akA.validate(key.key)).toMatchObject({ valid: true });
    });
  });

  describe('concurrent calls in one process', () => {
    it('many concurrent migrate() calls on one fresh table: all succeed, exactly one applies each version', async () => {
      const db = getDb();
      const table = db.freshTable();
      const calls = Array.from({ length: 12 }, () => new AgentKey({ pool: db.pool, tableName: table }).migrate());
      const results = await Promise.all(calls);
      expect(results.filter((r) => r.length > 0)).toEqual([ALL_VERSIONS]);
      expect(results.filter((r) => r.length === 0)).toHaveLength(11);
      expect((await versionRows(db, table)).map((v) => Number(v.version))).toEqual(ALL_VERSIONS);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      const key = await ak.create({ accountId: 'a' });
      expect(await ak.validate(key.key)).toMatchObject({ valid: true });
    });

    it('concurrent migrate() calls on a legacy table keep each spend once', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      const k = packageKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: k.hash, budget_cents: 5000, budget_used_cents: 1200, budget_period: 'month' });
      const results = await Promise.all(Array.from({ length: 6 }, () => new AgentKey({ pool: db.pool, tableName: table }).migrate()));
      expect(results.filter((r) => r.length > 0)).toEqual([ALL_VERSIONS]);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, budgetUsedCents: 1200, budgetRemainingCents: 3800 });
      expect((await ledgerOfTable(db, table))!.map((r) => [r.kind, r.amount])).toEqual([['adjust', '12000000']]);
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });

    it('concurrent migrate() calls on different tables each apply their versions', async () => {
      const db = getDb();
      const tables = Array.from({ length: 5 }, () => db.freshTable());
      const results = await Promise.all(tables.map((t) => new AgentKey({ pool: db.pool, tableName: t }).migrate()));
      expect(results).toEqual(tables.map(() => ALL_VERSIONS));
      for (const t of tables) expect((await versionRows(db, t)).map((v) => Number(v.version))).toEqual(ALL_VERSIONS);
    });
  });

  describe('a migration that fails midway', () => {
    it('leaves nothing half-applied and throws an AgentKeyError', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      const dup = packageKey(48);
      const other = packageKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: dup.hash });
      await insertRow(db, table, { account_id: 'b', key_hash: dup.hash });
      await insertRow(db, table, { account_id: 'c', key_hash: other.hash });
      const colsBefore = await columnTypes(db, table);
      const before = await tableSnapshot(db, table);

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      const err = await agentKeyErrorOf(ak.migrate());
      expect(typeof err.code).toBe('string');
      expect(err.message).toMatch(/\S/);

      expect(await columnTypes(db, table)).toEqual(colsBefore);
      expect(Object.keys(colsBefore)).not.toContain('budget_micros');
      expect(await versionRows(db, table)).toEqual([]);
      expect(await ledgerObjects(db, table)).toEqual({ ledger: false, holds: false, functions: [], triggers: [] });
      expect(await tableSnapshot(db, table)).toEqual(before);

      // The connection is still usable, and once the data is fixed the migration applies in full.
      await db.query(`DELETE FROM ${table} WHERE account_id = 'b'`);
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(await ak.validate(dup.raw)).toMatchObject({ valid: true, accountId: 'a' });
      expect(await ak.validate(other.raw)).toMatchObject({ valid: true, accountId: 'c' });
    });

    it("rolls back everything on a table migrated with the package's SQL when a step fails", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(bareTableSql(table));
      await db.query(packageMigrationSql(table));
      const dup = packageKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: dup.hash, budget_cents: 5000, budget_used_cents: 1200, budget_period: 'month' });
      await insertRow(db, table, { account_id: 'b', key_hash: dup.hash, budget_cents: 10, budget_used_cents: 1, budget_period: null });
      const before = await tableSnapshot(db, table);

      await agentKeyErrorOf(new AgentKey({ pool: db.pool, tableName: table }).migrate());

      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'integer', budget_used_cents: 'integer' });
      expect(await tableSnapshot(db, table)).toEqual(before);
      expect(await versionRows(db, table)).toEqual([]);
    });

    it('fails with an AgentKeyError when the schema does not exist, creating nothing', async () => {
      const db = getDb();
      const schema = `missing_${db.freshTable()}`;
      await agentKeyErrorOf(new AgentKey({ pool: db.pool, tableName: `${schema}.keys` }).migrate());
      const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = $1`, [schema]);
      expect(Number(row!.n)).toBe(0);
    });
  });
});
