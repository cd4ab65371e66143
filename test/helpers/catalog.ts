import { VERSIONS } from '../../src/store/migrations.js';
import type { TestDb } from './databases.js';

/**
 * Reading the schema a table's migrations made (columns, indexes, version records, the
 * objects agentkey keeps beside a table), for the migration and compatibility tests. A
 * `schema` of null means the connection's current schema.
 */

/** Every version migrate() applies to an empty table, in order. */
export const ALL_VERSIONS = [...VERSIONS];

/** True when `name` (a table, index or sequence, quoted as needed) exists. */
export async function relationExists(db: TestDb, name: string): Promise<boolean> {
  const [row] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [name]);
  return row!.t !== null;
}

/** Inserts one row of `fields` into `table` with plain SQL, as another program would; returns its id. */
export async function insertRow(db: TestDb, table: string, fields: Record<string, unknown>): Promise<number> {
  const cols = Object.keys(fields);
  const rows = await db.query<{ id: number }>(
    `INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(', ')}) RETURNING id`,
    Object.values(fields),
  );
  return Number(rows[0]!.id);
}

/** A table's columns and their data types. */
export async function columnTypes(db: TestDb, table: string, schema: string | null = null): Promise<Record<string, string>> {
  const rows = await db.query<{ column_name: string; data_type: string }>(
    `SELECT column_name, data_type FROM information_schema.columns
     WHERE table_schema::text = COALESCE($2::text, current_schema()::text) AND table_name::text = $1
     ORDER BY ordinal_position`,
    [table, schema],
  );
  return Object.fromEntries(rows.map((r) => [r.column_name, r.data_type]));
}

/** A table's index definitions, by index name. */
export async function indexes(db: TestDb, table: string, schema: string | null = null): Promise<string[]> {
  const rows = await db.query<{ indexdef: string }>(
    `SELECT indexdef FROM pg_indexes
     WHERE schemaname::text = COALESCE($2::text, current_schema()::text) AND tablename::text = $1
     ORDER BY indexname`,
    [table, schema],
  );
  return rows.map((r) => r.indexdef);
}

/** The version rows of a table; [] when the version table does not exist (yet) in that schema. */
export async function versionRows(db: TestDb, tableName: string, schema: string | null = null) {
  const qualified = schema === null ? 'agentkey_migrations' : `${schema}.agentkey_migrations`;
  const [exists] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [qualified]);
  if (!exists?.t) return [];
  return db.query<{ table_name: string; version: number; name: string; applied_at: Date }>(
    `SELECT table_name, version, name, applied_at FROM ${qualified} WHERE table_name = $1 ORDER BY version`,
    [tableName],
  );
}

/** The versions recorded for a table, in order. */
export async function appliedVersions(db: TestDb, tableName: string, schema: string | null = null): Promise<number[]> {
  return (await versionRows(db, tableName, schema)).map((r) => Number(r.version));
}

/** The schemas that have an agentkey_next_reset function. */
export async function nextResetSchemas(db: TestDb): Promise<string[]> {
  const rows = await db.query<{ nspname: string }>(
    `SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.proname = 'agentkey_next_reset' ORDER BY n.nspname`,
  );
  return rows.map((r) => r.nspname);
}

/** The connection's current schema. */
export async function currentSchema(db: TestDb): Promise<string> {
  const [row] = await db.query<{ s: string }>(`SELECT current_schema()::text AS s`);
  return row!.s;
}

/** The name of an object agentkey keeps beside `table` (short names: the table name is the base). */
export function beside(table: string, suffix: string, schema: string | null = null): string {
  return `${schema === null ? '' : `${schema}.`}"${table}_${suffix}"`;
}

/** The ledger rows of a table in id order; null when the table has no ledger (yet). */
export async function ledgerOfTable(db: TestDb, table: string, schema: string | null = null) {
  const qualified = beside(table, 'ledger', schema);
  const [exists] = await db.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [qualified]);
  if (!exists?.t) return null;
  return db.query<{ key_id: number; account_id: string; kind: string; amount: string; reservation_id: string | null; idempotency_key: string | null; metadata: unknown }>(
    `SELECT key_id, account_id, kind, amount_micros::text AS amount, reservation_id, idempotency_key, metadata
     FROM ${qualified} ORDER BY id`,
  );
}

/** What migration 2 adds beside a table: its tables, functions and the append-only trigger. */
export async function ledgerObjects(db: TestDb, table: string, schema: string | null = null) {
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
export async function treeObjects(db: TestDb, table: string, schema: string | null = null) {
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
export function treeObjectsOf(table: string) {
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
      // Version 8: windows past the ceiling, and alert percents.
      budget_windows: 'boolean',
      alert_percents: 'ARRAY',
    },
    holdColumns: { path: 'ARRAY', account_id: 'text' },
    ledgerKeyIdNullable: 'YES',
    periodFunctions: ['agentkey_period_end', 'agentkey_period_start'],
    treeAwareFunctions: [`${table}_settle`, `${table}_spend`],
  };
}

/** Everything migrate() could change about a table, to compare before and after. */
export async function tableSnapshot(db: TestDb, table: string) {
  const cols = await db.query(
    `SELECT column_name, data_type, numeric_precision, numeric_scale, column_default, is_nullable
     FROM information_schema.columns
     WHERE table_schema::text = current_schema()::text AND table_name::text = $1 ORDER BY ordinal_position`,
    [table],
  );
  const rows = await db.query(`SELECT to_jsonb(x) AS row FROM ${table} x ORDER BY id`);
  const fn = await db.query(`SELECT prosrc FROM pg_proc WHERE proname = 'agentkey_next_reset'`);
  return { cols, indexes: await indexes(db, table), versions: await versionRows(db, table), rows, fn, ledger: await ledgerOfTable(db, table) };
}
