import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../src/index.js';
import { LATEST_VERSION } from '../src/store/migrations.js';
import { forEachDatabase, type TestDb } from './helpers/databases.js';
import { packageKey as legacyKey, packageMigrationSql as pageMigrationSql } from './helpers/package.js';
import { agentKeyErrorOf } from './helpers/errors.js';

/** Every version migrate() applies to an empty table, in order. */
const ALL_VERSIONS = Array.from({ length: LATEST_VERSION }, (_, i) => i + 1);
const DAY = 86_400_000;

/** The bare keys table of the seed page, before its own ALTER TABLE. */
function legacyTableSql(table: string, accountType = 'TEXT'): string {
  return `CREATE TABLE ${table} (
    id SERIAL PRIMARY KEY,
    account_id ${accountType} NOT NULL,
    key_hash TEXT NOT NULL,
    key_prefix TEXT,
    name TEXT,
    created_at TIMESTAMPTZ DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ)`;
}


async function insertRow(db: TestDb, table: string, fields: Record<string, unknown>): Promise<number> {
  const cols = Object.keys(fields);
  const rows = await db.query<{ id: number }>(
    `INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(', ')}) RETURNING id`,
    Object.values(fields),
  );
  return Number(rows[0]!.id);
}

async function columnTypes(db: TestDb, table: string, schema: string | null = null): Promise<Record<string, string>> {
  const rows = await db.query<{ column_name: string; data_type: string }>(
    `SELECT column_name, data_type FROM information_schema.columns
     WHERE table_schema::text = COALESCE($2::text, current_schema()::text) AND table_name::text = $1
     ORDER BY ordinal_position`,
    [table, schema],
  );
  return Object.fromEntries(rows.map((r) => [r.column_name, r.data_type]));
}

async function indexes(db: TestDb, table: string, schema: string | null = null): Promise<string[]> {
  const rows = await db.query<{ indexdef: string }>(
    `SELECT indexdef FROM pg_indexes
     WHERE schemaname::text = COALESCE($2::text, current_schema()::text) AND tablename::text = $1
     ORDER BY indexname`,
    [table, schema],
  );
  return rows.map((r) => r.indexdef);
}

/** The version rows of a table; [] when the version table does not exist (yet) in that schema. */
async function versionRows(db: TestDb, tableName: string, schema: string | null = null) {
  const qualified = schema === null ? 'agentkey_migrations' : `${schema}.agentkey_migrations`;
  const [exists] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [qualified]);
  if (!exists?.t) return [];
  return db.query<{ table_name: string; version: number; name: string; applied_at: Date }>(
    `SELECT table_name, version, name, applied_at FROM ${qualified} WHERE table_name = $1 ORDER BY version`,
    [tableName],
  );
}

async function nextResetSchemas(db: TestDb): Promise<string[]> {
  const rows = await db.query<{ nspname: string }>(
    `SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.proname = 'agentkey_next_reset' ORDER BY n.nspname`,
  );
  return rows.map((r) => r.nspname);
}

async function currentSchema(db: TestDb): Promise<string> {
  const [row] = await db.query<{ s: string }>(`SELECT current_schema()::text AS s`);
  return row!.s;
}

/** The name of an object agentkey keeps beside `table` (short names: the table name is the base). */
function beside(table: string, suffix: string, schema: string | null = null): string {
  return `${schema === null ? '' : `${schema}.`}"${table}_${suffix}"`;
}

/** The ledger rows of a table in id order; null when the table has no ledger (yet). */
async function ledgerRows(db: TestDb, table: string, schema: string | null = null) {
  const qualified = beside(table, 'ledger', schema);
  const [exists] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [qualified]);
  if (!exists?.t) return null;
  return db.query<{ key_id: number; account_id: string; kind: string; amount: string; reservation_id: string | null; idempotency_key: string | null; metadata: unknown }>(
    `SELECT key_id, account_id, kind, amount_micros::text AS amount, reservation_id, idempotency_key, metadata
     FROM ${qualified} ORDER BY id`,
  );
}

/** What migration 2 adds beside a table: its tables, functions and the append-only trigger. */
async function ledgerObjects(db: TestDb, table: string, schema: string | null = null) {
  const rel = async (suffix: string) =>
    (await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [beside(table, suffix, schema)]))[0]!.t !== null;
  const fns = await db.query<{ proname: string }>(
    `SELECT p.proname::text AS proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname::text = COALESCE($1::text, current_schema()::text) AND p.proname::text = ANY($2::text[])
     ORDER BY 1`,
    [schema, [`${table}_spend`, `${table}_settle`]],
  );
  const triggers = await db.query<{ tgname: string }>(
    `SELECT tgname::text AS tgname FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal`,
    [beside(table, 'ledger', schema)],
  );
  return {
    ledger: await rel('ledger'),
    holds: await rel('holds'),
    functions: fns.map((f) => f.proname),
    triggers: triggers.map((t) => t.tgname),
  };
}

/**
 * What migration 3 adds beside a table: the tree columns of the keys table, the accounts table,
 * the hold paths, the calendar period functions, and the spend and settle functions replaced by
 * ones that walk a key's ancestors and its account.
 */
async function treeObjects(db: TestDb, table: string, schema: string | null = null) {
  const keys = await columnTypes(db, table, schema);
  const holds = await columnTypes(db, `${table}_holds`, schema);
  const [accounts] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [beside(table, 'accounts', schema)]);
  const [ledgerKey] = await db.query<{ is_nullable: string }>(
    `SELECT is_nullable FROM information_schema.columns
     WHERE table_schema::text = COALESCE($2::text, current_schema()::text) AND table_name::text = $1 AND column_name = 'key_id'`,
    [`${table}_ledger`, schema],
  );
  const fns = await db.query<{ proname: string; prosrc: string }>(
    `SELECT p.proname::text AS proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname::text = COALESCE($1::text, current_schema()::text) AND p.proname::text = ANY($2::text[])
     ORDER BY 1`,
    [schema, ['agentkey_period_start', 'agentkey_period_end', `${table}_spend`, `${table}_settle`]],
  );
  const accountsName = `"${table}_accounts"`;
  return {
    keyColumns: { parent_id: keys.parent_id, ancestor_ids: keys.ancestor_ids, depth: keys.depth },
    accounts: accounts!.t !== null ? await columnTypes(db, `${table}_accounts`, schema) : null,
    holdColumns: { path: holds.path, account_id: holds.account_id },
    ledgerKeyIdNullable: ledgerKey?.is_nullable,
    periodFunctions: fns.filter((f) => f.proname.startsWith('agentkey_period_')).map((f) => f.proname),
    // The version-3 spend and settle functions lock every budget on the key's path and its account row.
    treeAwareFunctions: fns
      .filter((f) => !f.proname.startsWith('agentkey_period_') && f.prosrc.includes(accountsName) && f.prosrc.includes('v_nodes'))
      .map((f) => f.proname),
  };
}

/** treeObjects() of a table that migration 3 has been applied to. */
function treeObjectsOf(table: string) {
  return {
    keyColumns: { parent_id: 'bigint', ancestor_ids: 'ARRAY', depth: 'integer' },
    accounts: {
      account_id: 'text',
      budget_micros: 'bigint',
      spent_micros: 'bigint',
      budget_period: 'text',
      period_start_at: 'timestamp with time zone',
      budget_reset_at: 'timestamp with time zone',
      created_at: 'timestamp with time zone',
      updated_at: 'timestamp with time zone',
    },
    holdColumns: { path: 'ARRAY', account_id: 'text' },
    ledgerKeyIdNullable: 'YES',
    periodFunctions: ['agentkey_period_end', 'agentkey_period_start'],
    treeAwareFunctions: [`${table}_settle`, `${table}_spend`],
  };
}

/** Everything migrate() could change about a table, to compare before and after. */
async function snapshot(db: TestDb, table: string) {
  const cols = await db.query(
    `SELECT column_name, data_type, numeric_precision, numeric_scale, column_default, is_nullable
     FROM information_schema.columns
     WHERE table_schema::text = current_schema()::text AND table_name::text = $1 ORDER BY ordinal_position`,
    [table],
  );
  const rows = await db.query(`SELECT to_jsonb(x) AS row FROM ${table} x ORDER BY id`);
  const fn = await db.query(`SELECT prosrc FROM pg_proc WHERE proname = 'agentkey_next_reset'`);
  return { cols, indexes: await indexes(db, table), versions: await versionRows(db, table), rows, fn, ledger: await ledgerRows(db, table) };
}

forEachDatabase((getDb) => {
  describe('on an empty database', () => {
    it('creates the table, the version table, the period function and the indexes, and returns every version', async () => {
      const db = getDb();
      const table = db.freshTable();
      const ak = new AgentKey({ pool: db.pool, tableName: table });

      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(ALL_VERSIONS).toEqual([1, 2, 3, 4, 5, 6]);

      const cols = await columnTypes(db, table);
      for (const col of ['id', 'account_id', 'key_hash', 'key_prefix', 'name', 'created_at', 'last_used_at', 'revoked_at']) {
        expect(cols).toHaveProperty(col);
      }
      // The columns of the page's migration SQL keep their names and their types.
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
      expect(await ledgerRows(db, table)).toEqual([]);

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
      const before = await snapshot(db, table);

      expect(await ak.migrate()).toEqual([]);
      expect(await new AgentKey({ pool: db.pool, tableName: table }).migrate()).toEqual([]);

      expect(await snapshot(db, table)).toEqual(before);
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

  describe("a legacy table of the page's bare shape", () => {
    it('keeps every key working: valid, unlimited, scopes null, chargeable, revoked stays revoked, ids kept', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(legacyTableSql(table));
      const k48 = legacyKey(48);
      const k64 = legacyKey(64);
      const kRevoked = legacyKey(48);
      const kUnused = legacyKey(64);
      const created = new Date(Date.now() - 30 * DAY);
      const id48 = await insertRow(db, table, { account_id: 'acct_123', key_hash: k48.hash, key_prefix: k48.prefix, name: 'sales-agent', created_at: created });
      const id64 = await insertRow(db, table, { account_id: 'acct_123', key_hash: k64.hash, key_prefix: k64.prefix, name: null, last_used_at: created });
      // A gap in the ids, as deleted rows leave: ids must be kept, not renumbered.
      const idGone = await insertRow(db, table, { account_id: 'acct_0', key_hash: legacyKey(48).hash });
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
      expect(await ledgerRows(db, table)).toEqual([]);
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
      // The page's INTEGER column shows whole cents, spend rounded up; the exact figure is agentkey's.
      const [spend] = await db.query<{ c: number; m: number }>(`SELECT budget_used_cents AS c, spent_micros AS m FROM ${table} WHERE id = $1`, [id48]);
      expect(spend!.c).toBe(16);
      expect(Number(spend!.m)).toBe(150_300);
      expect((await ledgerRows(db, table))!.map((r) => [Number(r.key_id), r.kind, r.amount])).toEqual([
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
      await db.query(legacyTableSql(table));
      const k = legacyKey(64, 'sk_live_');
      const id = await insertRow(db, table, { account_id: 'a', key_hash: k.hash, key_prefix: k.prefix });
      const ak = new AgentKey({ pool: db.pool, tableName: table, keyPrefix: 'sk_live_' });
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, keyId: id });
      expect(await new AgentKey({ pool: db.pool, tableName: table }).validate(k.raw)).toEqual({ valid: false, reason: 'invalid' });
    });

    it('works with an INTEGER account_id for numeric account ids', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(legacyTableSql(table, 'INTEGER'));
      const k = legacyKey(48);
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

    it("adds the page's other columns to a keys table that lacks them", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(`CREATE TABLE ${table} (id SERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL)`);
      const k = legacyKey(64);
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
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
      const k = legacyKey(48);
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

  describe("a table already migrated with the page's SQL", () => {
    async function pageTable(db: TestDb) {
      const table = db.freshTable();
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
      const resetFuture = new Date(Math.floor((Date.now() + 10 * DAY) / 1000) * 1000);
      const expires = new Date(Math.floor((Date.now() + 7 * DAY) / 1000) * 1000);
      const common = { account_id: 'acct_123', scopes: '{usage.read,proxy.chat}', budget_cents: 5000, budget_used_cents: 1200, delegated_by: 'user_456', user_id: 'u_1' };
      const keys = {
        future: legacyKey(48),
        nullReset: legacyKey(48),
        pastReset: legacyKey(64),
        dayPast: legacyKey(64),
        lifetime: legacyKey(48),
        nullUsed: legacyKey(48),
        expired: legacyKey(48),
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

    it("keeps every budget and its spend, whatever the reset time, and leaves the page's columns INTEGER", async () => {
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

      const rows = (await ledgerRows(db, table))!;
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
      expect(await ledgerRows(db, table)).toEqual(rows);
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
          limitedBy: { kind: 'key', keyId: ids[name] },
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
      const k = legacyKey(48);
      await db.query(
        `INSERT INTO ${table} (account_id, key_hash, budget_cents, budget_used_cents) VALUES ('acct_1', $1, 500, 0)`,
        [k.hash],
      );
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, budgetCents: 500, budgetRemainingCents: 500 });
      expect(await ak.trackUsage(k.raw, { costCents: 500.01 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });

    it('keeps subject rows written by the seed package working', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
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
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
      const k = legacyKey(48);
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
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
      const k = legacyKey(48);
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
      const before = await snapshot(db, table);
      expect(await ak.migrate()).toEqual([]);
      expect(await snapshot(db, table)).toEqual(before);
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
      const ledgerBefore = await ledgerRows(db, table);
      expect(ledgerBefore!.map((r) => r.kind)).toEqual(['charge', 'charge']);

      const schema = await currentSchema(db);
      expect(await new AgentKey({ pool: db.pool, tableName: `${schema}.${table}` }).migrate()).toEqual(ALL_VERSIONS);

      expect(await rows()).toEqual(before);
      expect(await ak.validate(day.key)).toMatchObject({ valid: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect(await ak.validate(month.key)).toMatchObject({ valid: true, budgetUsedCents: 12.3456 });
      // The ledger already had this spend: no opening balance is added a second time.
      expect(await ledgerRows(db, table)).toEqual(ledgerBefore);
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 2, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
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
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
      const k = legacyKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: k.hash, budget_cents: 5000, budget_used_cents: 1200, budget_period: 'month' });
      const results = await Promise.all(Array.from({ length: 6 }, () => new AgentKey({ pool: db.pool, tableName: table }).migrate()));
      expect(results.filter((r) => r.length > 0)).toEqual([ALL_VERSIONS]);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.validate(k.raw)).toMatchObject({ valid: true, budgetUsedCents: 1200, budgetRemainingCents: 3800 });
      expect((await ledgerRows(db, table))!.map((r) => [r.kind, r.amount])).toEqual([['adjust', '12000000']]);
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
      expect((await ledgerRows(db, 'keys', schema))!.map((r) => r.kind)).toEqual(['charge', 'hold', 'commit']);
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

  describe('a migration that fails midway', () => {
    it('leaves nothing half-applied and throws an AgentKeyError', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(legacyTableSql(table));
      const dup = legacyKey(48);
      const other = legacyKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: dup.hash });
      await insertRow(db, table, { account_id: 'b', key_hash: dup.hash });
      await insertRow(db, table, { account_id: 'c', key_hash: other.hash });
      const colsBefore = await columnTypes(db, table);
      const before = await snapshot(db, table);

      const ak = new AgentKey({ pool: db.pool, tableName: table });
      const err = await agentKeyErrorOf(ak.migrate());
      expect(typeof err.code).toBe('string');
      expect(err.message).toMatch(/\S/);

      expect(await columnTypes(db, table)).toEqual(colsBefore);
      expect(Object.keys(colsBefore)).not.toContain('budget_micros');
      expect(await versionRows(db, table)).toEqual([]);
      expect(await ledgerObjects(db, table)).toEqual({ ledger: false, holds: false, functions: [], triggers: [] });
      expect(await snapshot(db, table)).toEqual(before);

      // The connection is still usable, and once the data is fixed the migration applies in full.
      await db.query(`DELETE FROM ${table} WHERE account_id = 'b'`);
      expect(await ak.migrate()).toEqual(ALL_VERSIONS);
      expect(await ak.validate(dup.raw)).toMatchObject({ valid: true, accountId: 'a' });
      expect(await ak.validate(other.raw)).toMatchObject({ valid: true, accountId: 'c' });
    });

    it('rolls back everything on a page-migrated table when a step fails', async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(legacyTableSql(table));
      await db.query(pageMigrationSql(table));
      const dup = legacyKey(48);
      await insertRow(db, table, { account_id: 'a', key_hash: dup.hash, budget_cents: 5000, budget_used_cents: 1200, budget_period: 'month' });
      await insertRow(db, table, { account_id: 'b', key_hash: dup.hash, budget_cents: 10, budget_used_cents: 1, budget_period: null });
      const before = await snapshot(db, table);

      await agentKeyErrorOf(new AgentKey({ pool: db.pool, tableName: table }).migrate());

      expect(await columnTypes(db, table)).toMatchObject({ budget_cents: 'integer', budget_used_cents: 'integer' });
      expect(await snapshot(db, table)).toEqual(before);
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
