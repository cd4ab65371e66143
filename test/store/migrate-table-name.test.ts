import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../../src/index.js';
import { ALL_VERSIONS, columnTypes, indexes, ledgerObjects, ledgerOfTable, nextResetSchemas, treeObjects, treeObjectsOf, versionRows } from '../helpers/catalog.js';
import { forEachDatabase } from '../helpers/databases.js';
import { agentKeyErrorOf } from '../helpers/errors.js';

/**
 * The tableName option and migrate(), on PostgreSQL and PGlite: schema-qualified and long names,
 * where the objects beside a table go, and names checked before any SQL runs.
 */

forEachDatabase((getDb) => {
  describe('tableName', () => {
    it("accepts the default 'sdk_api_keys'", async () => {
      const db = getDb();
      const ak = new AgentKey({ pool: db.pool });
      expect(ak.tableName).toBe('sdk_api_keys');
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(await columnTypes(db, 'sdk_api_keys')).toHaveProperty('budget_cents', 'integer');
      const explicit = new AgentKey({ pool: db.pool, tableName: 'sdk_api_keys' });
      expect(await explicit.migrate()).toEqual([]);
      const key = await explicit.create({ accountId: 'a' });
      expect(await ak.validate(key.key)).toMatchObject({ valid: true });
    });

    it('accepts schema.table: the table, the period function and the version table land in that schema', async () => {
      const db = getDb();
      const schema = `s_${db.freshTable()}`;
      await db.query(`CREATE SCHEMA ${schema}`);
      const tableName = `${schema}.keys`;
      const ak = new AgentKey({ pool: db.pool, tableName });
      expect(ak.tableName).toBe(tableName);
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);

      expect(await columnTypes(db, 'keys', schema)).toHaveProperty('budget_cents', 'integer');
      expect(await nextResetSchemas(db)).toContain(schema);
      expect((await versionRows(db, tableName, schema)).map((v) => Number(v.version))).toEqual(ALL_VERSIONS);
      expect(await versionRows(db, tableName)).toEqual([]);
      expect(await ledgerObjects(db, 'keys', schema)).toEqual({
        ledger: true,
        holds: true,
        functions: ['keys_settle', 'keys_spend'],
        triggers: ['agentkey_append_only'],
      });
      expect(await ledgerObjects(db, 'keys')).toMatchObject({ ledger: false, holds: false, functions: [] });
      expect(await treeObjects(db, 'keys', schema)).toEqual(treeObjectsOf('keys'));
      const idx = await indexes(db, 'keys', schema);
      expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(key_hash\)/.test(d))).toBe(true);

      // Period keys call the function in that schema on every create and charge.
      const key = await ak.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'month' });
      expect(await ak.trackUsage(key.key, { costCents: 4 })).toMatchObject({ success: true, budgetRemainingCents: 6 });
      expect(await ak.validate(key.key)).toMatchObject({ valid: true, budgetPeriod: 'month', budgetUsedCents: 4 });
      const hold = await ak.reserve(key.key, { costCents: 5 });
      expect(hold).toMatchObject({ success: true, budgetRemainingCents: 1 });
      expect(await ak.commit((hold as { reservationId: string }).reservationId, { costCents: 3 })).toMatchObject({ success: true, budgetUsedCents: 7 });
      expect((await ledgerOfTable(db, 'keys', schema))!.map((r) => r.kind)).toEqual(['charge', 'hold', 'commit']);
      expect(await ak.audit()).toMatchObject({ ok: true });
      expect(await ak.migrate()).toEqual([]);

      // A table of the same name in another schema is another table with its own versions.
      const other = `s_${db.freshTable()}`;
      await db.query(`CREATE SCHEMA ${other}`);
      const ak2 = new AgentKey({ pool: db.pool, tableName: `${other}.keys` });
      expect(await ak2.migrate()).toEqual(ALL_VERSIONS);
      expect(await ak2.validate(key.key)).toEqual({ valid: false, reason: 'invalid' });
    });

    it('keeps the indexes of two long table names with a common start apart', async () => {
      const db = getDb();
      const base = `${db.freshTable()}_${'x'.repeat(45)}`;
      const [a, b] = [`${base}a`, `${base}b`];
      expect(b.length).toBeLessThanOrEqual(63);
      for (const t of [a, b]) expect(await new AgentKey({ pool: db.pool, tableName: t }).migrate()).toEqual(ALL_VERSIONS);
      for (const t of [a, b]) {
        const idx = await indexes(db, t);
        expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(key_hash\)/.test(d)), t).toBe(true);
        expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(external_subject\)/.test(d)), t).toBe(true);
        const ak = new AgentKey({ pool: db.pool, tableName: t });
        await ak.ensureSubject('mch_same');
        await ak.ensureSubject('mch_same');
        const [n] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${t}" WHERE external_subject = 'mch_same'`);
        expect(Number(n!.n), t).toBe(1);
      }
    });

    it('keeps the indexes of tables whose names differ only in case apart', async () => {
      const db = getDb();
      const lower = db.freshTable();
      const upper = lower.toUpperCase();
      for (const t of [lower, upper]) expect(await new AgentKey({ pool: db.pool, tableName: t }).migrate()).toEqual(ALL_VERSIONS);
      for (const t of [lower, upper]) {
        const idx = await indexes(db, t);
        expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(key_hash\)/.test(d)), t).toBe(true);
        expect(idx.some((d) => /UNIQUE INDEX/.test(d) && /\(external_subject\)/.test(d)), t).toBe(true);
      }
    });
  });
});

describe('tableName is checked before any SQL runs', () => {
  function brokenPools() {
    const calls: string[] = [];
    const fail = (what: string) => async () => {
      calls.push(what);
      throw new Error(`${what} must not be called`);
    };
    return {
      calls,
      pg: { query: fail('pg.query'), connect: fail('pg.connect') },
      pglite: { query: fail('pglite.query'), transaction: fail('pglite.transaction') },
    };
  }

  const refused: unknown[] = [
    'a;drop',
    'a b',
    '1abc',
    'a.b.c',
    '',
    'x'.repeat(64),
    `${'x'.repeat(64)}.keys`,
    'keys.' + 'x'.repeat(64),
    42,
    '"quoted"',
    'a.',
    '.a',
    'a..b',
    'a-b',
    "a'b",
    'keys; DROP TABLE users; --',
    'sdk_api_keys ',
    'sdk_api_keys\n',
    'ключи',
    true,
    {},
    ['sdk_api_keys'],
  ];

  it.each(refused.map((name) => [JSON.stringify(name), name]))('refuses %s with invalid_table_name', (_, name) => {
    const pools = brokenPools();
    for (const pool of [pools.pg, pools.pglite]) {
      let err: unknown;
      try {
        new AgentKey({ pool: pool as never, tableName: name as string });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(AgentKeyError);
      expect((err as AgentKeyError).code).toBe('invalid_table_name');
      expect((err as AgentKeyError).message).toMatch(/tableName/);
    }
    expect(pools.calls).toEqual([]);
  });

  it('accepts identifiers, optionally schema-qualified, without touching the database', () => {
    const pools = brokenPools();
    for (const name of ['sdk_api_keys', 'myschema.keys', '_keys', 'Keys2', 'x'.repeat(63), `${'s'.repeat(63)}.${'t'.repeat(63)}`]) {
      expect(new AgentKey({ pool: pools.pg as never, tableName: name }).tableName).toBe(name);
      expect(new AgentKey({ pool: pools.pglite as never, tableName: name }).tableName).toBe(name);
    }
    expect(pools.calls).toEqual([]);
  });

  it('the broken pools do fail once SQL runs, as a storage error', async () => {
    const pools = brokenPools();
    for (const pool of [pools.pg, pools.pglite]) {
      const err = await agentKeyErrorOf(new AgentKey({ pool: pool as never, tableName: 'sdk_api_keys' }).migrate());
      expect(err.code).toBe('storage_error');
    }
    expect(pools.calls.length).toBeGreaterThan(0);
  });
});
