import { AgentKeyError } from '../errors.js';
import type { TableState } from './catalog.js';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';
import { runFile } from './sql/render.js';
import createKeysSql from './sql/migrations/001_keys.sql';
import takenOverSql from './sql/migrations/001_keys_taken_over.sql';
import blockersSql from './sql/migrations/005_page_type_blockers.sql';

/**
 * The keys table: the @katrinalaszlo/agentkey package's columns, which stay the user's (names, types, meaning), and
 * agentkey's own exact columns beside them. Agentkey decides on its own columns and writes
 * the package's columns as whole cents in the same statement; SQL that writes the package's
 * columns is carried over into agentkey's by a trigger (sql/functions/sync.sql).
 */

/** The package's columns, with the types its migration gives them. */
export const PAGE_COLUMNS = [
  'user_id', 'scopes', 'budget_cents', 'budget_used_cents', 'budget_period', 'budget_reset_at', 'expires_at', 'delegated_by',
] as const;
/** Everything version 1 leaves on the keys table. */
export const V1_COLUMNS = [
  'id', 'account_id', 'key_hash', 'key_prefix', 'name', 'created_at', 'last_used_at', 'revoked_at', ...PAGE_COLUMNS,
  'external_subject', 'budget_micros', 'spent_micros', 'budget_anchor_at',
] as const;

/**
 * Version 1: the keys table with the package's columns and agentkey's micro-dollar counters.
 * On a table agentkey has never seen (it lacks spent_micros), the package's budgets and spend
 * are carried into the exact columns; a table that has them is left as it is.
 */
export async function createKeys(tx: Db, t: TableNames, state: TableState): Promise<void> {
  const ours = state.keys?.columns.has('spent_micros') === true;
  await runFile(tx, t, createKeysSql);
  if (!ours) await runFile(tx, t, takenOverSql);
}

/**
 * Version 5: the package's columns back to the package's types. An earlier agentkey widened
 * budget_cents and budget_used_cents to NUMERIC(20,4); users' SQL then read strings. The
 * exact figures live in budget_micros and spent_micros, so the package's columns go back to
 * INTEGER, as whole cents (spend rounded up, budgets down). Which columns change is read
 * from the catalog, so the ALTER is built here.
 */
export async function restorePageTypes(tx: Db, t: TableNames, state: TableState): Promise<void> {
  const widened = widenedColumns(state);
  if (widened.length === 0) return;
  const blockers = await tx.query<{ name: string; ours: boolean; kind: string }>(blockersSql, [t.table, widened]);
  const theirs = blockers.filter((b) => !b.ours);
  if (theirs.length > 0) {
    throw new AgentKeyError(
      'storage_error',
      `migrate() must give ${widened.join(' and ')} of ${t.name} back their INTEGER type, but views, rules or triggers of yours read them (${theirs.map((b) => `${b.kind} ${b.name}`).join(', ')}); drop those, run migrate() and create them again.`,
    );
  }
  for (const b of blockers) await tx.query(`DROP TRIGGER ${b.name} ON ${t.table}`);
  const using: Record<string, string> = {
    budget_cents: `${t.centsDown}(budget_micros)`,
    budget_used_cents: `${t.centsUp}(spent_micros)`,
  };
  await tx.query(`ALTER TABLE ${t.table} ${widened.map((c) => `ALTER COLUMN ${c} TYPE INTEGER USING ${using[c]}`).join(', ')}`);
}

/** The package's cents columns that an earlier agentkey widened (only ever to exactly NUMERIC(20,4), on its own tables). */
export function widenedColumns(state: TableState): string[] {
  const keys = state.keys;
  if (!keys?.columns.has('spent_micros')) return [];
  return ['budget_cents', 'budget_used_cents'].filter((c) => keys.columns.get(c)?.type === 'numeric(20,4)');
}
