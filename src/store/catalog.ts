import { createHash, randomUUID } from 'node:crypto';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/**
 * What migrate() reads of the database before it changes anything: the keys table and
 * the tables agentkey keeps beside it, as they are, whatever the version records say.
 */

export interface Relation {
  oid: number;
  /** Column name -> its type as PostgreSQL prints it (`integer`, `numeric(20,4)`, ...). */
  columns: Map<string, { type: string; notNull: boolean; comment: string | null }>;
  /** The table's own comment (agentkey's side tables carry their owner's incarnation there). */
  comment: string | null;
  rows: boolean;
  /** Its check constraints, as pg_get_constraintdef prints them. */
  checks: string[];
}

export interface TableState {
  keys: Relation | null;
  ledger: Relation | null;
  holds: Relation | null;
  accounts: Relation | null;
  events: Relation | null;
  windows: Relation | null;
  outbox: Relation | null;
  settings: Relation | null;
  webhooks: Relation | null;
  deliveries: Relation | null;
  attempts: Relation | null;
  accountLimits: Relation | null;
  rateWindows: Relation | null;
}

export type SideTable =
  | 'ledger' | 'holds' | 'accounts' | 'events' | 'windows' | 'outbox' | 'settings' | 'webhooks' | 'deliveries' | 'attempts' | 'accountLimits'
  | 'rateWindows';
export const SIDE_TABLES: readonly SideTable[] = [
  'ledger', 'holds', 'accounts', 'events', 'windows', 'outbox', 'settings', 'webhooks', 'deliveries', 'attempts', 'accountLimits', 'rateWindows',
];

/** The keys table and its side tables as the catalog has them now. */
export async function inspect(tx: Db, t: TableNames): Promise<TableState> {
  const names = [t.table, ...SIDE_TABLES.map((side) => t[side])];
  const rows = await tx.query<{
    ord: number;
    oid: number | null;
    table_comment: string | null;
    attname: string | null;
    type: string | null;
    notnull: boolean | null;
    col_comment: string | null;
  }>(
    `SELECT r.ord, c.oid::int8 AS oid, obj_description(c.oid, 'pg_class') AS table_comment,
            a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull,
            col_description(c.oid, a.attnum) AS col_comment
     FROM unnest($1::text[]) WITH ORDINALITY AS r(name, ord)
     LEFT JOIN pg_class c ON c.oid = to_regclass(r.name) AND c.relkind IN ('r', 'p')
     LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY r.ord, a.attnum`,
    [names],
  );
  const found: (Relation | null)[] = names.map(() => null);
  for (const r of rows) {
    if (r.oid === null) continue;
    const i = Number(r.ord) - 1;
    const rel = (found[i] ??= { oid: Number(r.oid), columns: new Map(), comment: r.table_comment, rows: false, checks: [] });
    if (r.attname !== null) rel.columns.set(r.attname, { type: r.type as string, notNull: r.notnull === true, comment: r.col_comment });
  }
  // Whether side tables hold rows decides if rows left by a dropped keys table must be set aside.
  for (let i = 1; i < names.length; i++) {
    const rel = found[i];
    if (rel) rel.rows = (await tx.query(`SELECT 1 FROM ${names[i]} LIMIT 1`)).length > 0;
  }
  const oids = found.flatMap((rel) => (rel ? [rel.oid] : []));
  const checks = await tx.query<{ oid: number; def: string }>(
    `SELECT conrelid::int8 AS oid, pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE contype = 'c' AND conrelid::int8 = ANY($1::int8[])`,
    [oids],
  );
  for (const c of checks) found.find((rel) => rel?.oid === Number(c.oid))?.checks.push(c.def);
  const [keys, ...sides] = found;
  const state = { keys: keys ?? null } as TableState;
  SIDE_TABLES.forEach((side, i) => {
    state[side] = sides[i] ?? null;
  });
  return state;
}

/** True when the keys table exists (whatever its columns): for callers that read and must never create it. */
export async function keysTableExists(db: Db, t: TableNames): Promise<boolean> {
  const rows = await db.query<{ found: boolean }>(`SELECT to_regclass($1) IS NOT NULL AS found`, [t.table]);
  return rows[0]?.found === true;
}

export function hasColumns(rel: Relation | null, columns: readonly string[]): boolean {
  return rel !== null && columns.every((c) => rel.columns.has(c));
}

/*
 * Incarnations. The side tables (ledger, holds, accounts, events, windows, outbox, settings, webhooks, deliveries, attempts,
 * account_limits, rate_windows) belong to one keys table. Its
 * identity is a random id kept in the comment of agentkey's own column spent_micros, and
 * the same id in each side table's comment. A keys table that was dropped and created again
 * does not have it, so the rows its predecessor left are set aside, not mixed into the new
 * keys (whose ids start again at 1). A renamed keys table keeps it, so its side tables are
 * found under the old name and follow. A restored dump keeps comments, so nothing moves.
 */

const INCARNATION = /incarnation ([0-9a-f-]{36})/;

export function incarnationOf(comment: string | null | undefined): string | null {
  return comment ? (INCARNATION.exec(comment)?.[1] ?? null) : null;
}

/** The keys table's incarnation, or null when it has none (new, recreated, or migrated before they existed). */
export function keysIncarnation(state: TableState): string | null {
  return incarnationOf(state.keys?.columns.get('spent_micros')?.comment);
}

export function newIncarnation(): string {
  return randomUUID();
}

const SIDE_COMMENT: Record<SideTable, string> = {
  ledger: 'the append-only usage ledger',
  holds: 'the holds (reservations)',
  accounts: 'the account ceilings',
  events: 'the key event log',
  windows: 'the budget windows past the first',
  outbox: 'the outbox of events for webhooks',
  settings: 'the settings of the whole table',
  webhooks: 'the webhook endpoints',
  deliveries: 'the webhook deliveries',
  attempts: 'the webhook delivery attempts',
  accountLimits: 'the account rate and concurrency limits',
  rateWindows: 'the rate limit counters',
};

/** Writes the incarnation into the comment of spent_micros and of each side table. */
export async function stampIncarnation(tx: Db, t: TableNames, id: string): Promise<void> {
  const who = t.name.replace(/"/g, '');
  await tx.query(
    `COMMENT ON COLUMN ${t.table}.spent_micros IS 'agentkey: spend in the current period, in micro-dollars (0.0001 cent); table incarnation ${id}'`,
  );
  for (const side of SIDE_TABLES) {
    await tx.query(`COMMENT ON TABLE ${t[side]} IS 'agentkey: ${SIDE_COMMENT[side]} of ${who}; table incarnation ${id}'`);
  }
}

/**
 * Whether another live keys table carries this incarnation: this table is then a copy of
 * it (say, made with CREATE TABLE ... LIKE ... INCLUDING ALL), and must not take its side tables.
 */
export async function incarnationTakenElsewhere(tx: Db, t: TableNames, incarnation: string): Promise<boolean> {
  const rows = await tx.query(
    `SELECT 1 FROM pg_attribute a
     WHERE a.attname = 'spent_micros' AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attrelid <> to_regclass($1) AND col_description(a.attrelid, a.attnum) LIKE $2
     LIMIT 1`,
    [t.table, `%table incarnation ${incarnation}%`],
  );
  return rows.length > 0;
}

/** A side table of the same incarnation under another name: the keys table was renamed. */
export async function findSideTable(tx: Db, side: SideTable, incarnation: string): Promise<{ schema: string; name: string } | null> {
  const rows = await tx.query<{ schema: string; name: string }>(
    `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'r' AND obj_description(c.oid, 'pg_class') LIKE $1 ORDER BY c.oid LIMIT 1`,
    [`agentkey: ${SIDE_COMMENT[side]} of %; table incarnation ${incarnation}`],
  );
  return rows[0] ?? null;
}

/**
 * Sets aside every row of a side table that belongs to no keys table any more: each row,
 * as JSON, into `<table>_orphans`, then the side table is emptied. Nothing is deleted
 * for good; the new keys start from a clean ledger.
 */
export async function setAsideOrphans(tx: Db, t: TableNames, side: SideTable, incarnation: string | null): Promise<number> {
  await tx.query(`CREATE TABLE IF NOT EXISTS ${t.orphans} (
    id BIGSERIAL PRIMARY KEY,
    set_aside_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    source TEXT NOT NULL,
    incarnation TEXT,
    row JSONB NOT NULL)`);
  const moved = await tx.query<{ n: number }>(
    `WITH agentkey_moved AS (
       INSERT INTO ${t.orphans} (source, incarnation, row) SELECT $1, $2, to_jsonb(x) FROM ${t[side]} x RETURNING 1)
     SELECT count(*)::int AS n FROM agentkey_moved`,
    [side, incarnation],
  );
  // TRUNCATE, not DELETE: the ledger's trigger refuses row deletes, and these rows are kept above.
  await tx.query(`TRUNCATE ${t[side]}`);
  return Number(moved[0]?.n ?? 0);
}

/*
 * Live definitions: functions and triggers. Each carries, in its comment, a hash of the
 * statement that made it; migrate() makes again exactly those whose hash differs (a new
 * version of agentkey, a renamed table, a restored dump without them), and leaves the rest,
 * so an up-to-date database takes no lock on the keys table.
 */

export type Definition =
  | {
      kind: 'function';
      /** `name(argtypes)`, as to_regprocedure reads it. */
      signature: string;
      sql: string;
      /** Earlier signatures of this function, dropped when it is made (an overload left behind could make calls ambiguous). */
      replaces?: readonly string[];
    }
  | { kind: 'trigger'; name: string; table: string; sql: string };

function stamp(sql: string): string {
  return `agentkey ${createHash('sha256').update(sql).digest('hex').slice(0, 32)}`;
}

/** Creates or replaces every definition whose stamp differs from the one in the database. */
export async function applyDefinitions(tx: Db, definitions: readonly Definition[]): Promise<number> {
  const fns = definitions.filter((d): d is Extract<Definition, { kind: 'function' }> => d.kind === 'function');
  const trgs = definitions.filter((d): d is Extract<Definition, { kind: 'trigger' }> => d.kind === 'trigger');
  const fnStamps = await tx.query<{ comment: string | null }>(
    `SELECT obj_description(to_regprocedure(s), 'pg_proc') AS comment FROM unnest($1::text[]) WITH ORDINALITY AS u(s, ord) ORDER BY ord`,
    [fns.map((f) => f.signature)],
  );
  const trgStamps = await tx.query<{ comment: string | null }>(
    `SELECT (SELECT obj_description(g.oid, 'pg_trigger') FROM pg_trigger g WHERE g.tgrelid = to_regclass(u.tbl) AND g.tgname = u.name) AS comment
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(tbl, name, ord) ORDER BY ord`,
    [trgs.map((d) => d.table), trgs.map((d) => d.name)],
  );
  let made = 0;
  for (const [i, f] of fns.entries()) {
    const want = stamp(f.sql);
    if (fnStamps[i]?.comment === want) continue;
    for (const earlier of f.replaces ?? []) await tx.query(`DROP FUNCTION IF EXISTS ${earlier}`);
    // A function whose result type changed cannot be replaced in place.
    const exists = (await tx.query(`SELECT 1 FROM pg_proc WHERE oid = to_regprocedure($1)`, [f.signature])).length > 0;
    if (exists) {
      try {
        await tx.query('SAVEPOINT agentkey_define');
        await tx.query(f.sql);
        await tx.query('RELEASE SAVEPOINT agentkey_define');
      } catch (err) {
        await tx.query('ROLLBACK TO SAVEPOINT agentkey_define');
        if ((err as { code?: string }).code !== '42P13') throw err;
        await tx.query(`DROP FUNCTION ${f.signature}`);
        await tx.query(f.sql);
      }
    } else {
      await tx.query(f.sql);
    }
    await tx.query(`COMMENT ON FUNCTION ${f.signature} IS '${want}'`);
    made++;
  }
  for (const [i, d] of trgs.entries()) {
    const want = stamp(d.sql);
    if (trgStamps[i]?.comment === want) continue;
    await tx.query(`DROP TRIGGER IF EXISTS ${d.name} ON ${d.table}`);
    await tx.query(d.sql);
    await tx.query(`COMMENT ON TRIGGER ${d.name} ON ${d.table} IS '${want}'`);
    made++;
  }
  return made;
}

/*
 * Indexes, found by what they index rather than by name: a renamed table keeps its
 * indexes under their old names, and an old table renamed away keeps the names a new
 * table would use.
 */

export interface IndexSpec {
  /** The table, quoted. */
  table: string;
  /** The name to give it (unquoted, no schema). */
  name: string;
  unique?: boolean;
  /** What follows `ON table` as pg_get_indexdef prints it, e.g. `USING btree (key_hash)`. */
  definition: string;
}

/**
 * Makes each index the table lacks. A unique index counts when one indexes the same or, for a
 * unique B-tree, the same after account_id: the form sharding by account needs (Citus refuses a
 * unique index without its distribution column; docs/scaling.md). Over a key id or a dedupe
 * name, which name one account, it allows the same rows; a hash or a subject is then unique
 * per account only, as that page says.
 */
export async function ensureIndexes(tx: Db, schema: string, specs: readonly IndexSpec[]): Promise<number> {
  let made = 0;
  for (const spec of specs) {
    const accountFirst = spec.unique === true ? spec.definition.replace(/^USING btree \(/, 'USING btree (account_id, ') : spec.definition;
    const found = await tx.query(
      `SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique = $2
         AND regexp_replace(pg_get_indexdef(i.indexrelid), '^.* ON \\S+ ', '') IN ($3, $4)`,
      [spec.table, spec.unique === true, spec.definition, accountFirst],
    );
    if (found.length > 0) continue;
    const taken = await tx.query(`SELECT 1 FROM pg_class WHERE oid = to_regclass($1)`, [`${schema}"${spec.name}"`]);
    const name = taken.length === 0 ? spec.name : `${spec.name.slice(0, 50)}_${randomUUID().slice(0, 8)}`;
    await tx.query(`CREATE ${spec.unique ? 'UNIQUE ' : ''}INDEX "${name}" ON ${spec.table} ${spec.definition}`);
    made++;
  }
  return made;
}
