import { AgentKeyError } from '../errors.js';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';
import { createLedger } from './ledger-schema.js';
import { createTrees } from './tree-schema.js';
import { createBatching } from './batch-schema.js';

interface Migration {
  version: number;
  name: string;
  up(tx: Db, t: TableNames): Promise<void>;
}

/** All agentkey migrations share one lock: they also replace shared functions. */
const LOCK_KEY = "hashtext('agentkey:migrate')";

/**
 * Brings the keys table to the latest version, in one transaction under an advisory
 * lock, so several processes may call it at once. Returns the versions it applied.
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
    const done = await tx.query<{ version: number }>(
      `SELECT version FROM ${t.migrations} WHERE table_name = $1`,
      [t.name],
    );
    const applied = new Set(done.map((r) => Number(r.version)));
    const ran: number[] = [];
    for (const m of MIGRATIONS) {
      if (applied.has(m.version)) continue;
      await m.up(tx, t);
      await tx.query(`INSERT INTO ${t.migrations} (table_name, version, name) VALUES ($1, $2, $3)`, [
        t.name,
        m.version,
        m.name,
      ]);
      ran.push(m.version);
    }
    return ran;
  });
}

export const LATEST_VERSION = 4;

const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: 'keys table with the seed columns, micro-dollar counters and UTC periods',
    async up(tx, t) {
      await tx.query(`CREATE TABLE IF NOT EXISTS ${t.table} (
        id BIGSERIAL PRIMARY KEY,
        account_id TEXT NOT NULL,
        key_hash TEXT NOT NULL,
        key_prefix TEXT NOT NULL,
        name TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        last_used_at TIMESTAMPTZ,
        revoked_at TIMESTAMPTZ)`);
      // A table that already has the micro-dollar counters is agentkey's (e.g. migrated under
      // another spelling of its name): its data is current and must not be converted again.
      const ours = await hasColumn(tx, t, 'spent_micros');
      // The page's base columns (for tables that lack some) and its own migration, so tables it
      // already migrated are left as they are.
      await tx.query(`ALTER TABLE ${t.table}
        ADD COLUMN IF NOT EXISTS key_prefix TEXT,
        ADD COLUMN IF NOT EXISTS name TEXT,
        ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ DEFAULT now(),
        ADD COLUMN IF NOT EXISTS last_used_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS revoked_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS user_id TEXT,
        ADD COLUMN IF NOT EXISTS scopes TEXT[],
        ADD COLUMN IF NOT EXISTS budget_cents INTEGER,
        ADD COLUMN IF NOT EXISTS budget_used_cents INTEGER DEFAULT 0,
        ADD COLUMN IF NOT EXISTS budget_period TEXT,
        ADD COLUMN IF NOT EXISTS budget_reset_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS delegated_by TEXT,
        ADD COLUMN IF NOT EXISTS external_subject TEXT,
        ADD COLUMN IF NOT EXISTS budget_micros BIGINT,
        ADD COLUMN IF NOT EXISTS spent_micros BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS budget_anchor_at TIMESTAMPTZ`);
      if (!ours) {
        // The cents columns keep their meaning; widened so they hold $9B and sub-cent spend exactly.
        await refuseDependentViews(tx, t);
        await tx.query(`ALTER TABLE ${t.table}
          ALTER COLUMN budget_cents TYPE NUMERIC(20,4),
          ALTER COLUMN budget_used_cents TYPE NUMERIC(20,4)`);
        await tx.query(`UPDATE ${t.table} SET
          budget_micros = round(budget_cents * 10000)::bigint,
          spent_micros = round(COALESCE(budget_used_cents, 0) * 10000)::bigint,
          budget_used_cents = COALESCE(budget_used_cents, 0),
          budget_anchor_at = CASE WHEN budget_period IS NULL THEN NULL
                                  ELSE COALESCE(budget_reset_at, created_at, now()) END`);
      }
      await tx.query(`CREATE OR REPLACE FUNCTION ${t.nextReset}(period TEXT, anchor TIMESTAMPTZ, at TIMESTAMPTZ)
        RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $fn$
          SELECT CASE period
            WHEN 'day' THEN (date_trunc('day', at AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
            WHEN 'month' THEN (
              SELECT (s.start + make_interval(months => k.n)) AT TIME ZONE 'UTC'
              FROM (SELECT date_trunc('day', anchor AT TIME ZONE 'UTC') AS start, at AT TIME ZONE 'UTC' AS now_utc) s,
                   LATERAL (SELECT greatest(1, ((extract(year FROM s.now_utc) - extract(year FROM s.start)) * 12
                                               + extract(month FROM s.now_utc) - extract(month FROM s.start))::int) AS d) m,
                   LATERAL generate_series(m.d, m.d + 1) AS k(n)
              WHERE s.start + make_interval(months => k.n) > s.now_utc
              ORDER BY k.n LIMIT 1)
          END
        $fn$`);
      // A period key without a future reset time would reset (and forget its spend) on its next
      // charge; moving the reset forward keeps the spend and never lets extra money through.
      if (!ours) {
        await tx.query(`UPDATE ${t.table}
          SET budget_reset_at = ${t.nextReset}(budget_period, budget_anchor_at, now())
          WHERE budget_period IS NOT NULL AND (budget_reset_at IS NULL OR budget_reset_at <= now())`);
      }
      await tx.query(`CREATE UNIQUE INDEX IF NOT EXISTS "${t.indexBase}_key_hash_uidx" ON ${t.table} (key_hash)`);
      await tx.query(`CREATE UNIQUE INDEX IF NOT EXISTS "${t.indexBase}_subject_uidx"
        ON ${t.table} (external_subject) WHERE external_subject IS NOT NULL`);
      await tx.query(`CREATE INDEX IF NOT EXISTS "${t.indexBase}_account_idx" ON ${t.table} (account_id)`);
    },
  },
  {
    version: 2,
    name: 'append-only usage ledger, holds, and the spend and settle functions',
    up: createLedger,
  },
  {
    version: 3,
    name: 'delegation trees, account ceilings, and spend over every budget a key is under',
    up: createTrees,
  },
  {
    version: 4,
    name: 'batched charges and holds, and change notifications for key caches',
    up: createBatching,
  },
];

/**
 * PostgreSQL cannot widen a column that a view or rule reads: name them and say what to
 * do, rather than fail with the server's bare "column used by a view or rule".
 */
async function refuseDependentViews(tx: Db, t: TableNames): Promise<void> {
  const rows = await tx.query<{ view: string }>(
    `SELECT DISTINCT r.ev_class::regclass::text AS view
     FROM pg_attribute a
     JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.classid = 'pg_rewrite'::regclass
     JOIN pg_rewrite r ON r.oid = d.objid
     WHERE a.attrelid = $1::regclass AND a.attname IN ('budget_cents', 'budget_used_cents')
     ORDER BY 1`,
    [t.table],
  );
  if (rows.length === 0) return;
  throw new AgentKeyError(
    'storage_error',
    `migrate() must widen budget_cents and budget_used_cents of ${t.name} to NUMERIC(20,4), but views or rules of ${rows.map((r) => r.view).join(', ')} read them; drop those, run migrate() and create them again.`,
  );
}

async function hasColumn(tx: Db, t: TableNames, column: string): Promise<boolean> {
  const rows = await tx.query(
    `SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped`,
    [t.table, column],
  );
  return rows.length > 0;
}
