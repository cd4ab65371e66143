import { AgentKeyError } from '../errors.js';
import {
  type SideTable,
  type TableState,
  SIDE_TABLES,
  applyDefinitions,
  ensureIndexes,
  findSideTable,
  hasColumns,
  incarnationOf,
  incarnationTakenElsewhere,
  inspect,
  keysIncarnation,
  newIncarnation,
  setAsideOrphans,
  stampIncarnation,
} from './catalog.js';
import type { Db } from './db.js';
import { functionDefinitions, triggerDefinitions } from './definitions.js';
import type { TableNames } from './identifiers.js';
import { indexes } from './indexes.js';
import { V1_COLUMNS, createKeys, restorePageTypes, widenedColumns } from './key-schema.js';
import { createOverage, ledgerKindsCurrent, openingBalances } from './ledger-schema.js';
import { runFile } from './sql/render.js';
import ledgerSql from './sql/migrations/002_ledger.sql';
import treesSql from './sql/migrations/003_trees.sql';
import ledgerBrinSql from './sql/migrations/004_ledger_brin.sql';
import rotationEventsSql from './sql/migrations/007_rotation_events.sql';
import windowsAlertsSql from './sql/migrations/008_windows_alerts.sql';
import webhooksSql from './sql/migrations/009_webhooks.sql';
import rateLimitsSql from './sql/migrations/010_rate_limits.sql';
import llmUsageSql from './sql/migrations/011_llm_usage.sql';
import holdsAccountSql from './sql/migrations/012_holds_account.sql';
import rateWindowsAccountSql from './sql/migrations/013_rate_windows_account.sql';

/*
 * The versions of agentkey's tables. Each is a numbered file under sql/migrations/ where it
 * is plain DDL; where it must first read the catalog (version 1 on a table taken over,
 * versions 5 and 6), the reading is in TypeScript and the statements it runs are in files
 * where they can be. Functions and triggers are no version's: every migrate() makes them
 * again from sql/functions/ and sql/triggers/ when their text differs (definitions.ts).
 */

interface Migration {
  version: number;
  name: string;
  /** Whether the database already has what this version makes: decided from the tables, not the records. */
  present(state: TableState): boolean;
  up(tx: Db, t: TableNames, state: TableState): Promise<void>;
}

/** All agentkey migrations share one lock: they also replace shared functions. */
const LOCK_KEY = "hashtext('agentkey:migrate')";

export const LATEST_VERSION = 13;

const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: 'keys table with the seed columns, micro-dollar counters and UTC periods',
    present: (s) => hasColumns(s.keys, V1_COLUMNS),
    up: createKeys,
  },
  {
    version: 2,
    name: 'append-only usage ledger and holds',
    present: (s) => s.ledger !== null && s.holds !== null,
    up: (tx, t) => runFile(tx, t, ledgerSql),
  },
  {
    version: 3,
    name: 'delegation trees, account ceilings, and spend over every budget a key is under',
    present: (s) =>
      hasColumns(s.keys, ['parent_id', 'ancestor_ids', 'depth']) &&
      s.accounts !== null &&
      hasColumns(s.holds, ['path', 'account_id']) &&
      s.ledger?.columns.get('key_id')?.notNull === false,
    up: (tx, t) => runFile(tx, t, treesSql),
  },
  {
    version: 4,
    name: 'batched charges and holds, and change notifications for key caches',
    present: (s) => s.ledger !== null,
    up: (tx, t) => runFile(tx, t, ledgerBrinSql),
  },
  {
    version: 5,
    name: "the package's columns keep the package's types; SQL edits of them are honoured",
    present: (s) => widenedColumns(s).length === 0,
    up: restorePageTypes,
  },
  {
    version: 6,
    name: 'overage: the part of a cost no budget could take, recorded as its own ledger kind and never counted toward a cap',
    present: (s) =>
      hasColumns(s.keys, ['overage_micros']) && hasColumns(s.holds, ['overage_micros']) && s.ledger !== null && ledgerKindsCurrent(s.ledger.checks),
    up: (tx, t) => createOverage(tx, t),
  },
  {
    version: 7,
    name: "rotation (a key's previous secret, valid through a grace period), key metadata and the key event log",
    present: (s) => hasColumns(s.keys, ['previous_key_hash', 'previous_key_valid_until', 'key_metadata']) && s.events !== null,
    up: (tx, t) => runFile(tx, t, rotationEventsSql),
  },
  {
    version: 8,
    name: 'budget windows past the first, alert thresholds, settings and the outbox of events',
    present: (s) =>
      s.windows !== null && s.outbox !== null && s.settings !== null &&
      hasColumns(s.keys, ['budget_windows', 'alert_percents']) && hasColumns(s.accounts, ['budget_windows', 'alert_percents']),
    up: (tx, t) => runFile(tx, t, windowsAlertsSql),
  },
  {
    version: 9,
    name: 'webhook endpoints, deliveries and attempts, and the outbox in commit-safe order',
    present: (s) => s.webhooks !== null && s.deliveries !== null && s.attempts !== null && hasColumns(s.outbox, ['xact']),
    up: (tx, t) => runFile(tx, t, webhooksSql),
  },
  {
    version: 10,
    name: 'request rate limits and concurrency limits on keys and accounts, and the exact mode\'s counters',
    present: (s) =>
      s.accountLimits !== null && s.rateWindows !== null && hasColumns(s.keys, ['rate_limit_requests', 'rate_limit_per_s', 'concurrency_limit']),
    up: (tx, t) => runFile(tx, t, rateLimitsSql),
  },
  {
    version: 11,
    name: 'the model and token counts of LLM calls on their ledger rows',
    present: (s) => hasColumns(s.ledger, ['model', 'usage']),
    up: (tx, t) => runFile(tx, t, llmUsageSql),
  },
  {
    version: 12,
    name: 'every hold carries its account (NOT NULL), as sharding by account needs',
    present: (s) => s.holds?.columns.get('account_id')?.notNull === true,
    up: (tx, t) => runFile(tx, t, holdsAccountSql),
  },
  {
    version: 13,
    name: 'the exact-mode rate counters carry their account, so their function works inside one',
    present: (s) => s.rateWindows?.columns.get('account_id')?.notNull === true,
    up: (tx, t) => runFile(tx, t, rateWindowsAccountSql),
  },
];

/** The version of each migration, in order (numbers may skip one that another change owns). */
export const VERSIONS: readonly number[] = MIGRATIONS.map((m) => m.version);

/**
 * Brings the keys table to the latest version, in one transaction under an advisory
 * lock, so several processes may call it at once. Returns the versions it applied.
 *
 * It looks at the tables themselves, not only at its version records: a keys table that
 * was dropped and created again, renamed, or restored without agentkey's objects gets all
 * it lacks, and rows a dropped keys table left beside it are set aside (see catalog.ts).
 * Functions and triggers are made again whenever their text differs from this version's.
 * Its lock waits and statements are bounded like every call, but by a minute at least.
 */
export async function migrate(db: Db, t: TableNames): Promise<number[]> {
  return db.transaction(async (tx) => {
    await tx.query(`SELECT pg_advisory_xact_lock(${LOCK_KEY})`);
    await tx.query(`CREATE TABLE IF NOT EXISTS ${t.migrations} (
      table_name TEXT NOT NULL,
      version INTEGER NOT NULL,
      name TEXT NOT NULL,
      applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
      PRIMARY KEY (table_name, version))`);
    const recorded = new Set(
      (await tx.query<{ version: number }>(`SELECT version FROM ${t.migrations} WHERE table_name = $1`, [t.name])).map((r) => Number(r.version)),
    );
    let state = await inspect(tx, t);
    refuseForeignSideTables(t, state);
    let incarnation = keysIncarnation(state);
    // A copy of another live keys table: it starts a history of its own.
    if (incarnation !== null && (await incarnationTakenElsewhere(tx, t, incarnation))) incarnation = null;
    // Spend the ledger does not explain yet: a table taken over, or side tables set aside or missing.
    let needsOpening = await claimSideTables(tx, t, state, incarnation);
    if (needsOpening) state = await inspect(tx, t);

    await applyDefinitions(tx, functionDefinitions(t));
    const ran: number[] = [];
    for (const m of MIGRATIONS) {
      if (recorded.has(m.version) && m.present(state)) continue;
      if (!m.present(state)) {
        await m.up(tx, t, state);
        if (m.version <= 2) needsOpening = true;
        state = await inspect(tx, t);
      }
      await tx.query(
        `INSERT INTO ${t.migrations} (table_name, version, name) VALUES ($1, $2, $3) ON CONFLICT (table_name, version) DO NOTHING`,
        [t.name, m.version, m.name],
      );
      ran.push(m.version);
    }
    await ensureIndexes(tx, t.schema, indexes(t));
    await applyDefinitions(tx, triggerDefinitions(t));
    if (needsOpening) await openingBalances(tx, t);
    const id = incarnation ?? newIncarnation();
    if (keysIncarnation(state) !== id || SIDE_TABLES.some((side) => incarnationOf(state[side]?.comment) !== id)) {
      await stampIncarnation(tx, t, id);
    }
    return ran;
  }, Math.max(db.timeoutMs, MIGRATE_TIMEOUT_MS));
}

/** What each side table agentkey made has at least, whatever its version. */
const SIDE_COLUMNS: Record<SideTable, readonly string[]> = {
  ledger: ['id', 'key_id', 'kind', 'amount_micros'],
  holds: ['id', 'key_id', 'amount_micros', 'status'],
  accounts: ['account_id', 'budget_micros', 'spent_micros'],
  events: ['id', 'key_id', 'kind', 'actor', 'changes'],
  windows: ['id', 'account_id', 'key_id', 'period', 'budget_micros', 'spent_micros'],
  outbox: ['id', 'type', 'account_id', 'data'],
  settings: ['name', 'value'],
  webhooks: ['id', 'url', 'secret'],
  deliveries: ['id', 'webhook_id', 'outbox_id', 'status'],
  attempts: ['id', 'delivery_id'],
  accountLimits: ['account_id', 'rate_limit_requests', 'rate_limit_per_s', 'concurrency_limit'],
  rateWindows: ['scope', 'window_no', 'count'],
};

/**
 * A table under a side table's name that agentkey never stamped and that lacks its columns
 * is someone else's (a user's own `<table>_events` audit table, say): migrate() stops with
 * its name and changes nothing, rather than take it over, stamp it or set its rows aside.
 */
function refuseForeignSideTables(t: TableNames, state: TableState): void {
  for (const side of SIDE_TABLES) {
    const rel = state[side];
    if (!rel || incarnationOf(rel.comment) !== null) continue;
    const missing = SIDE_COLUMNS[side].filter((c) => !rel.columns.has(c));
    if (missing.length > 0) {
      throw new AgentKeyError(
        'storage_error',
        `migrate() keeps agentkey's ${side} in ${t[side]}, but a table of that name without its columns (${missing.join(', ')}) is already there, likely one of yours; rename it, or give agentkey another tableName, and run migrate() again (nothing was changed).`,
      );
    }
  }
}

/**
 * The least bound of migrate()'s statements and lock waits: it may wait for another
 * process's migration, and a statement may rebuild an index.
 */
const MIGRATE_TIMEOUT_MS = 60_000;

/**
 * Makes the side tables under this table's names belong to it. Rows of a keys table that
 * is gone (the keys table has no incarnation, or another one) are set aside; side tables of
 * this incarnation found under another name (the keys table was renamed) move here.
 * Returns whether the ledger may now lack spend that keys already have.
 */
async function claimSideTables(tx: Db, t: TableNames, state: TableState, incarnation: string | null): Promise<boolean> {
  // A keys table agentkey has never migrated cannot own any ledger rows yet.
  const fresh = !state.keys?.columns.has('spent_micros');
  let changed = false;
  for (const side of SIDE_TABLES) {
    const rel = state[side];
    if (rel) {
      const owner = incarnationOf(rel.comment);
      const foreign = owner !== null ? owner !== incarnation : fresh;
      if (foreign && rel.rows) {
        await setAsideOrphans(tx, t, side, owner);
        changed = true;
      }
    } else if (incarnation !== null) {
      const moved = await findSideTable(tx, side, incarnation);
      if (moved) {
        const [schema, name] = splitName(t[side]);
        await tx.query(`ALTER TABLE "${moved.schema}"."${moved.name}" RENAME TO "${name}"`);
        if (schema !== null && schema !== moved.schema) await tx.query(`ALTER TABLE "${moved.schema}"."${name}" SET SCHEMA "${schema}"`);
        changed = true;
      }
    }
  }
  return changed || state.ledger === null;
}

/** `"schema"."name"` or `"name"` (quoted as TableNames quotes them) into its parts; null schema: the search path. */
function splitName(quoted: string): [string | null, string] {
  const parts = quoted.split('.').map((p) => p.replace(/^"|"$/g, ''));
  return parts.length === 2 ? [parts[0] as string, parts[1] as string] : [null, parts[0] as string];
}
