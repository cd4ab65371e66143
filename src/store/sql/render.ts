import type { Db } from '../db.js';
import type { TableNames } from '../identifiers.js';

/**
 * The one renderer of agentkey's SQL files: each `{{name}}` becomes a name from the
 * checked, quoted TableNames of the keys table (never anything a caller typed), so the
 * files are plain SQL that psql takes once the names are filled in (see README.md here).
 */
const PLACEHOLDER = /\{\{(\w+)\}\}/g;

function names(t: TableNames): Record<string, string> {
  return {
    table: t.table,
    schema: t.schema,
    base: t.indexBase,
    ledger: t.ledger,
    holds: t.holds,
    accounts: t.accounts,
    events: t.events,
    windows: t.windows,
    outbox: t.outbox,
    settings: t.settings,
    webhooks: t.webhooks,
    deliveries: t.deliveries,
    attempts: t.attempts,
    account_limits: t.accountLimits,
    rate_windows: t.rateWindows,
    rate_take: t.rateTakeFn,
    key_event: t.eventFn,
    hold_expired: t.holdExpiredFn,
    ceiling_event: t.ceilingEventFn,
    spend: t.spendFn,
    settle: t.settleFn,
    spend_many: t.spendManyFn,
    sync: t.syncFn,
    channel: t.channel,
    outbox_channel: t.outboxChannel,
  };
}

/**
 * `text` with every placeholder filled in for table `t`. An unknown placeholder is a
 * mistake in the file, caught at the first migrate() of any table.
 *
 * @example renderSql('SELECT 1 FROM {{ledger}}', tableNames('keys')) // 'SELECT 1 FROM "keys_ledger"'
 */
export function renderSql(text: string, t: TableNames): string {
  const values = names(t);
  return text.replace(PLACEHOLDER, (whole, name: string) => {
    const value = values[name];
    if (value === undefined) throw new Error(`agentkey: unknown placeholder ${whole} in an SQL file`);
    return value;
  });
}

/**
 * The statements of a migration file, in order: split at each `;` that ends a line. Only
 * for files of plain statements (no function bodies): PGlite runs one statement per call.
 */
export function statements(text: string): string[] {
  return text
    .split(/;[ \t]*(?:\r?\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s.split('\n').some((line) => line.trim() !== '' && !line.trim().startsWith('--')));
}

/** Runs every statement of a migration file for table `t`, one after another. */
export async function runFile(tx: Db, t: TableNames, file: string): Promise<void> {
  for (const statement of statements(renderSql(file, t))) await tx.query(statement);
}
