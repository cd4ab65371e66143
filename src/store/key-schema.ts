import { AgentKeyError } from '../errors.js';
import type { Definition, IndexSpec, TableState } from './catalog.js';
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/**
 * The keys table: the page's columns, which stay the user's (names, types, meaning), and
 * agentkey's own exact columns beside them. Agentkey decides on its own columns and writes
 * the page's columns as whole cents in the same statement; SQL that writes the page's
 * columns is carried over into agentkey's by a trigger.
 */

/** The page's columns, with the types its migration gives them. */
export const PAGE_COLUMNS = [
  'user_id', 'scopes', 'budget_cents', 'budget_used_cents', 'budget_period', 'budget_reset_at', 'expires_at', 'delegated_by',
] as const;
/** Everything version 1 leaves on the keys table. */
export const V1_COLUMNS = [
  'id', 'account_id', 'key_hash', 'key_prefix', 'name', 'created_at', 'last_used_at', 'revoked_at', ...PAGE_COLUMNS,
  'external_subject', 'budget_micros', 'spent_micros', 'budget_anchor_at',
] as const;

/**
 * Version 1: the keys table with the page's columns and agentkey's micro-dollar counters.
 * On a table agentkey has never seen (it lacks spent_micros), the page's budgets and spend
 * are carried into the exact columns; a table that has them is left as it is.
 */
export async function createKeys(tx: Db, t: TableNames, state: TableState): Promise<void> {
  await tx.query(`CREATE TABLE IF NOT EXISTS ${t.table} (
    id BIGSERIAL PRIMARY KEY,
    account_id TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    name TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ)`);
  const ours = state.keys?.columns.has('spent_micros') === true;
  // The page's base columns (for tables that lack some) and its own migration, verbatim in
  // its types, so tables it already migrated are left as they are.
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
  if (ours) return;
  // Whatever numeric type the user's columns have: budgets and spend become micro-dollars exactly.
  await tx.query(`UPDATE ${t.table} SET
    budget_micros = round(budget_cents::numeric * 10000)::bigint,
    spent_micros = round(COALESCE(budget_used_cents, 0)::numeric * 10000)::bigint,
    budget_anchor_at = CASE WHEN budget_period IS NULL THEN NULL ELSE COALESCE(budget_reset_at, created_at, now()) END
    WHERE budget_cents IS NOT NULL OR budget_used_cents IS NOT NULL OR budget_period IS NOT NULL`);
  // A period key without a future reset time would reset (and forget its spend) on its next
  // charge; moving the reset forward keeps the spend and never lets extra money through.
  await tx.query(`UPDATE ${t.table}
    SET budget_reset_at = ${t.nextReset}(budget_period, budget_anchor_at, now())
    WHERE budget_period IN ('day', 'month') AND (budget_reset_at IS NULL OR budget_reset_at <= now())`);
}

/**
 * Version 5: the page's columns back to the page's types. An earlier agentkey widened
 * budget_cents and budget_used_cents to NUMERIC(20,4); users' SQL then read strings. The
 * exact figures live in budget_micros and spent_micros, so the page's columns go back to
 * INTEGER, as whole cents (spend rounded up, budgets down).
 */
export async function restorePageTypes(tx: Db, t: TableNames, state: TableState): Promise<void> {
  const widened = widenedColumns(state);
  if (widened.length === 0) return;
  // What PostgreSQL will not let a type change pass: views and rules, and triggers (agentkey's
  // own are made again right after, so they are dropped; anyone else's are named).
  const blockers = await tx.query<{ name: string; ours: boolean; kind: string }>(
    `SELECT DISTINCT r.ev_class::regclass::text AS name, false AS ours, 'view' AS kind
     FROM pg_attribute a
     JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.classid = 'pg_rewrite'::regclass
     JOIN pg_rewrite r ON r.oid = d.objid
     WHERE a.attrelid = $1::regclass AND a.attname = ANY($2::text[]) AND r.ev_class <> a.attrelid
     UNION
     SELECT DISTINCT g.tgname::text, g.tgname LIKE 'agentkey\_%', 'trigger'
     FROM pg_attribute a
     JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.classid = 'pg_trigger'::regclass
     JOIN pg_trigger g ON g.oid = d.objid
     WHERE a.attrelid = $1::regclass AND a.attname = ANY($2::text[])
     ORDER BY 1`,
    [t.table, widened],
  );
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

/** The page's cents columns that an earlier agentkey widened (only ever to exactly NUMERIC(20,4), on its own tables). */
export function widenedColumns(state: TableState): string[] {
  const keys = state.keys;
  if (!keys?.columns.has('spent_micros')) return [];
  return ['budget_cents', 'budget_used_cents'].filter((c) => keys.columns.get(c)?.type === 'numeric(20,4)');
}

export function keyIndexes(t: TableNames): IndexSpec[] {
  const i = t.indexBase;
  return [
    { table: t.table, name: `${i}_key_hash_uidx`, unique: true, definition: 'USING btree (key_hash)' },
    {
      table: t.table,
      name: `${i}_subject_uidx`,
      unique: true,
      definition: 'USING btree (external_subject) WHERE (external_subject IS NOT NULL)',
    },
    { table: t.table, name: `${i}_account_idx`, definition: 'USING btree (account_id)' },
  ];
}

/** The columns whose SQL edits the sync trigger carries into agentkey's own columns. */
const SYNCED = ['budget_cents', 'budget_used_cents', 'budget_period', 'budget_reset_at'];

/** Functions the keys table needs before any other step: periods and whole cents. */
export function keyFunctions(t: TableNames): Definition[] {
  return [
    {
      kind: 'function',
      signature: `${t.nextReset}(text, timestamptz, timestamptz)`,
      // The end of the period that contains `at`: 'day' at 00:00 UTC, 'month' on the anchor's
      // day of the month (clamped to shorter months), in UTC.
      sql: `CREATE OR REPLACE FUNCTION ${t.nextReset}(period TEXT, anchor TIMESTAMPTZ, at TIMESTAMPTZ)
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
        $fn$`,
    },
    {
      kind: 'function',
      signature: `${t.centsUp}(bigint)`,
      // Spend as whole cents, rounded up (as the page rounded every cost), within INTEGER.
      // Division truncates toward zero and % keeps the dividend's sign: no step can overflow, even at BIGINT's ends.
      sql: `CREATE OR REPLACE FUNCTION ${t.centsUp}(micros BIGINT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $fn$
          SELECT LEAST(2147483647, GREATEST(-2147483648, micros / 10000 + CASE WHEN micros % 10000 > 0 THEN 1 ELSE 0 END))::integer
        $fn$`,
    },
    {
      kind: 'function',
      signature: `${t.centsDown}(bigint)`,
      // A budget as whole cents, rounded down, within INTEGER.
      sql: `CREATE OR REPLACE FUNCTION ${t.centsDown}(micros BIGINT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $fn$
          SELECT LEAST(2147483647, GREATEST(-2147483648, micros / 10000 - CASE WHEN micros % 10000 < 0 THEN 1 ELSE 0 END))::integer
        $fn$`,
    },
    {
      kind: 'function',
      signature: `${t.schema}agentkey_check_page_values(text, numeric, numeric)`,
      // What the page's columns may hold when written by SQL: a clear error, and nothing changes.
      sql: `CREATE OR REPLACE FUNCTION ${t.schema}agentkey_check_page_values(period TEXT, budget NUMERIC, used NUMERIC)
        RETURNS void LANGUAGE plpgsql IMMUTABLE AS $fn$
        BEGIN
          IF period NOT IN ('day', 'month') THEN
            RAISE EXCEPTION 'agentkey: budget_period must be ''day'', ''month'' or NULL; got %', quote_literal(period)
              USING ERRCODE = '23514';
          END IF;
          IF budget < 0 THEN RAISE EXCEPTION 'agentkey: budget_cents must not be negative; got %', budget USING ERRCODE = '23514'; END IF;
          IF used < 0 THEN RAISE EXCEPTION 'agentkey: budget_used_cents must not be negative; got %', used USING ERRCODE = '23514'; END IF;
        END $fn$`,
    },
    {
      kind: 'function',
      signature: `${t.syncFn}()`,
      sql: syncFunction(t),
    },
  ];
}

/**
 * The page's columns are the user's: an INSERT or UPDATE by anyone but agentkey that
 * writes them is carried into agentkey's exact columns, announced to every process's
 * cache, and, for spend, recorded in the ledger. Agentkey's own statements write both
 * sides at once, so the WHEN clauses leave them alone (and spending pays nothing).
 */
export function keyTriggers(t: TableNames): Definition[] {
  const changed = (page: string, own: string) => `(NEW.${page} IS DISTINCT FROM OLD.${page} AND NEW.${own} IS NOT DISTINCT FROM OLD.${own})`;
  const invalid = `NEW.budget_cents < 0 OR NEW.budget_used_cents < 0 OR NEW.budget_period NOT IN ('day', 'month')`;
  return [
    {
      kind: 'trigger',
      name: 'agentkey_sync_insert',
      table: t.table,
      sql: `CREATE TRIGGER agentkey_sync_insert BEFORE INSERT ON ${t.table} FOR EACH ROW
        WHEN ((NEW.budget_micros IS NULL AND NEW.budget_cents IS NOT NULL)
           OR (NEW.spent_micros = 0 AND COALESCE(NEW.budget_used_cents, 0) <> 0)
           OR (NEW.budget_period IS NOT NULL AND (NEW.budget_anchor_at IS NULL OR NEW.budget_reset_at IS NULL))
           OR ${invalid})
        EXECUTE FUNCTION ${t.syncFn}()`,
    },
    {
      kind: 'trigger',
      name: 'agentkey_sync',
      table: t.table,
      sql: `CREATE TRIGGER agentkey_sync BEFORE UPDATE OF ${SYNCED.join(', ')} ON ${t.table} FOR EACH ROW
        WHEN (${changed('budget_cents', 'budget_micros')}
           OR ${changed('budget_used_cents', 'spent_micros')}
           OR ${changed('budget_period', 'budget_anchor_at')}
           OR (NEW.budget_reset_at IS DISTINCT FROM OLD.budget_reset_at AND NEW.budget_period IS NOT NULL
               AND NEW.budget_reset_at > now()
               AND NEW.budget_reset_at IS DISTINCT FROM
                   ${t.nextReset}(NEW.budget_period, COALESCE(NEW.budget_anchor_at, NEW.created_at), NEW.budget_reset_at - interval '1 microsecond')))
        EXECUTE FUNCTION ${t.syncFn}()`,
    },
  ];
}

function syncFunction(t: TableNames): string {
  const micros = (cents: string) => `round(${cents}::numeric * 10000)::bigint`;
  return `CREATE OR REPLACE FUNCTION ${t.syncFn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
    DECLARE v_spent BIGINT; v_set_budget BOOLEAN; v_set_used BOOLEAN; v_set_period BOOLEAN; v_set_reset BOOLEAN;
    BEGIN
      IF TG_OP = 'INSERT' THEN
        PERFORM ${t.schema}agentkey_check_page_values(NEW.budget_period, NEW.budget_cents, NEW.budget_used_cents);
        -- A row written by SQL rather than by create(): its page columns say what it may spend.
        IF NEW.budget_micros IS NULL AND NEW.budget_cents IS NOT NULL THEN
          NEW.budget_micros := ${micros('NEW.budget_cents')};
        END IF;
        IF NEW.spent_micros = 0 AND COALESCE(NEW.budget_used_cents, 0) <> 0 THEN
          NEW.spent_micros := ${micros('NEW.budget_used_cents')};
          INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, metadata)
          VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), 'reset', NEW.spent_micros,
                  jsonb_build_object('source', 'sql', 'reason', 'budget_used_cents written by SQL', 'to', NEW.budget_used_cents));
        END IF;
        IF NEW.budget_period IS NOT NULL THEN
          NEW.budget_anchor_at := COALESCE(NEW.budget_anchor_at, NEW.budget_reset_at, NEW.created_at, now());
          NEW.budget_reset_at := COALESCE(NEW.budget_reset_at, ${t.nextReset}(NEW.budget_period, NEW.budget_anchor_at, now()));
        END IF;
        RETURN NEW;
      END IF;
      -- What this statement itself wrote, decided before anything below changes NEW.
      v_set_budget := NEW.budget_cents IS DISTINCT FROM OLD.budget_cents AND NEW.budget_micros IS NOT DISTINCT FROM OLD.budget_micros;
      v_set_used := NEW.budget_used_cents IS DISTINCT FROM OLD.budget_used_cents AND NEW.spent_micros IS NOT DISTINCT FROM OLD.spent_micros;
      v_set_period := NEW.budget_period IS DISTINCT FROM OLD.budget_period AND NEW.budget_anchor_at IS NOT DISTINCT FROM OLD.budget_anchor_at;
      v_set_reset := NEW.budget_reset_at IS DISTINCT FROM OLD.budget_reset_at AND NEW.budget_reset_at IS NOT NULL;
      -- Only what this statement changed is checked: old rows may hold what the page allowed.
      PERFORM ${t.schema}agentkey_check_page_values(
        CASE WHEN v_set_period THEN NEW.budget_period END,
        CASE WHEN v_set_budget THEN NEW.budget_cents END,
        CASE WHEN v_set_used THEN NEW.budget_used_cents END);
      IF v_set_budget THEN
        NEW.budget_micros := ${micros('NEW.budget_cents')};
      END IF;
      v_spent := OLD.spent_micros;
      IF OLD.budget_period IS NOT NULL AND OLD.budget_reset_at <= now() AND NEW.spent_micros IS NOT DISTINCT FROM OLD.spent_micros THEN
        -- A period that ended before this edit ends first, as the next call would have ended
        -- it: its spend is not carried into whatever the edit makes.
        IF OLD.spent_micros <> 0 THEN
          INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros)
          VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), 'reset', -OLD.spent_micros);
        END IF;
        v_spent := 0;
        NEW.spent_micros := 0;
        IF NOT v_set_used THEN NEW.budget_used_cents := 0; END IF;
        IF NOT v_set_reset THEN
          NEW.budget_reset_at := ${t.nextReset}(OLD.budget_period, COALESCE(OLD.budget_anchor_at, OLD.created_at), now());
        END IF;
      END IF;
      IF v_set_used THEN
        -- This key's counter, set by hand: recorded like a period reset (the key alone; its
        -- ancestors and account keep what they spent), so audit() still reconciles.
        IF ${micros('COALESCE(NEW.budget_used_cents, 0)')} <> v_spent THEN
          INSERT INTO ${t.ledger} (key_id, account_id, kind, amount_micros, metadata)
          VALUES (NEW.id, COALESCE(NEW.account_id::text, ''), 'reset', ${micros('COALESCE(NEW.budget_used_cents, 0)')} - v_spent,
                  jsonb_build_object('source', 'sql', 'reason', 'budget_used_cents set by SQL',
                                     'from', OLD.budget_used_cents, 'to', NEW.budget_used_cents));
        END IF;
        NEW.spent_micros := ${micros('COALESCE(NEW.budget_used_cents, 0)')};
      END IF;
      IF v_set_period THEN
        -- A new period starts now (or on the reset time written with it); spend so far is kept.
        IF NEW.budget_period IS NULL THEN
          NEW.budget_anchor_at := NULL;
          NEW.budget_reset_at := NULL;
        ELSIF v_set_reset THEN
          NEW.budget_anchor_at := NEW.budget_reset_at;
        ELSE
          NEW.budget_anchor_at := now();
          NEW.budget_reset_at := ${t.nextReset}(NEW.budget_period, NEW.budget_anchor_at, now());
        END IF;
      ELSIF v_set_reset AND NEW.budget_period IS NOT NULL AND NEW.budget_reset_at > now() THEN
        -- A reset moved by hand into the future: later periods follow the day it names. (One
        -- moved into the past needs nothing here: the next call rolls the period over.)
        NEW.budget_anchor_at := NEW.budget_reset_at;
      END IF;
      PERFORM pg_notify('${t.channel}', NEW.id::text);
      RETURN NEW;
    END $fn$`;
}
