// One file (about 570 lines): every statement spending sends and every report read from the
// ledger, beside the shapes they return, so the money path's SQL can be read in one place.
import { type TokenUsage, type Tokens, USAGE_FIELDS } from '../llm/usage.js';
import { type Micros, addMicros, sameMicros, toMicros } from '../money.js';
import { type Actor, actAs } from './actor.js';
import { type Db, lockWaitMs } from './db.js';
import type { TableNames } from './identifiers.js';
import { type LogPage, newestFirst } from './paging.js';
import { AccountRouting, type RefAccount, groupByAccount, refName } from './routing.js';
import { shardedByAccount } from './sharding.js';

export { refName };
import type { KeyRef } from './keys.js';
import { type LedgerKind, SPEND_KINDS } from './ledger-schema.js';

/** What the spend and settle functions report, in micro-dollars. */
export interface SpendOutcome {
  outcome: string;
  /** When a batch decided it (ms), so figures from batches that finish out of order are not mixed up. */
  at?: number;
  key_id?: number;
  budget?: number | null;
  /** The key's counters: past 2^53 micro-dollars they are bigints (the functions send them as text). */
  spent?: Micros;
  held?: Micros;
  hold_id?: string | null;
  expires_at?: string | null;
  status?: string;
  hold?: number;
  /** A commit's real cost; `overage` is the part of it no budget could take (not counted). */
  committed?: number;
  overage?: number;
  released?: number;
  expired?: boolean;
  over_budget?: boolean;
  limit?: 'key' | 'ancestor' | 'account' | null;
  limit_key_id?: number | null;
  limit_account_id?: string | null;
  /** Which window of the limiting key or account ('day', 'week', 'month', 'lifetime'). */
  limit_window?: string | null;
  /** The least the key's own windows past the first leave (micros; absent: it has none). */
  window_room?: number;
  /** The windows past the first over the key (its path's and its account's), by id. */
  windows?: number[];
  /** The key's ancestors, then the key; and its account. */
  path?: number[];
  account_id?: string;
}

export type SpendOp = 'charge' | 'hold' | 'adjust';

/** One step of a batch: a charge or hold on a key, or the commit or release of a hold. */
export type BatchItem =
  | { ref: KeyRef; request: SpendRequest }
  | { ref: { hold: string }; request: { op: 'commit' | 'release'; micros: number; metadata: string | null; usage?: string | null } };

export interface SpendRequest {
  op: SpendOp;
  micros: number;
  idempotencyKey: string | null;
  metadata: string | null;
  holdId: string | null;
  ttlMs: number | null;
  /** An LLM call's model and token counts, as JSON (`{ model, provider, inputTokens, ... }`), for its ledger rows. */
  usage?: string | null;
}

export interface LedgerRow {
  id: number;
  key_id: number;
  account_id: string;
  kind: LedgerKind;
  amount_micros: Micros;
  reservation_id: string | null;
  metadata: Record<string, unknown> | null;
  created_at: Date;
  model: string | null;
  usage: (Required<TokenUsage> & { provider: string }) | null;
}

export interface HoldRow {
  id: string;
  key_id: number;
  account_id: string;
  amount_micros: Micros;
  committed_micros: number | null;
  /** The part of the committed cost that was overage (null until committed, or committed before overage existed). */
  overage_micros: number | null;
  status: 'held' | 'committed' | 'released' | 'expired';
  expires_at: Date;
  created_at: Date;
  settled_at: Date | null;
  /** Still 'held' in the table, but past its expiry: it holds nothing. */
  lapsed: boolean;
}

export interface UsageFilter {
  keyId: number | null;
  accountId: string | null;
  since: Date | null;
  until: Date | null;
  bucket: 'hour' | 'day' | null;
}

export interface AuditMismatch {
  keyId: number;
  counterMicros: Micros;
  ledgerMicros: Micros;
}

export interface AccountMismatch {
  accountId: string;
  counterMicros: Micros;
  ledgerMicros: Micros;
}

/**
 * The SQL of spending, plus reports over the ledger. Every step goes through the one function
 * with the budget rules, sql/functions/spend_many.sql: `spend` and `settle` as batches of one.
 */
export class SpendStore {
  /** Which account each step is of, when each account's steps go in a call of their own. */
  private readonly routing: AccountRouting;
  /** Whether they do (given, or asked of the database: shardedByAccount). */
  private readonly byAccount: boolean | undefined;

  /**
   * `byAccount`: send each account's steps in a call of their own (what a database sharded
   * by account needs). Left out: on when the database has the citus extension.
   */
  constructor(private readonly db: Db, private readonly t: TableNames, byAccount?: boolean) {
    this.routing = new AccountRouting(t);
    this.byAccount = byAccount;
  }

  /** One charge, hold or adjustment: a batch of one (see spendMany). */
  async spend(ref: KeyRef, r: SpendRequest): Promise<SpendOutcome> {
    return one(await this.spendMany([{ ref, request: r }]));
  }

  /** An operator's adjustment of a key's spend: a batch of one, in a transaction that names who made it (its event). */
  async adjust(ref: KeyRef, r: SpendRequest, actor: Actor): Promise<SpendOutcome> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      return one(await this.spendMany([{ ref, request: r }], lockWaitMs(this.db.timeoutMs), tx));
    });
  }

  /**
   * Many charges, holds, adjustments, commits and releases in one statement, with the
   * outcomes they would have had one after another in the order given. All or nothing: a
   * failure changes nothing. One shape the AgentKey never sends differs from sending the
   * items one by one: settling a hold taken earlier in the same batch is not_found (a caller
   * only learns the id once the reserve returns). A release keeps its metadata either way.
   *
   * A key, account or hold row that another transaction holds is waited for up to `waitMs`
   * (a longer wait fails the statement with lock_not_available, having written nothing).
   * With `waitMs` 0 such rows are skipped, never waited for: the items that need one come
   * back with the outcome 'busy', untouched (nothing of them read for a decision or
   * written), for the caller to send again.
   */
  async spendMany(items: readonly BatchItem[], waitMs: number = lockWaitMs(this.db.timeoutMs), db: Db = this.db): Promise<SpendOutcome[]> {
    // On one PostgreSQL: one call for the batch whatever its accounts (no account given).
    if (!(this.byAccount ?? (await shardedByAccount(this.db)))) return this.spendByAccount(items, [], waitMs, db);
    const refs = items.map((i) => i.ref);
    const found = await this.routing.accountsOf(refs, db);
    const outs = await this.spendByAccount(items, found.map((f) => f.account), waitMs, db);
    // A remembered account that no longer holds its ref (a subject now of a key in another
    // account): looked up afresh, and the step sent again where it now belongs.
    const stale = outs.flatMap((o, i) => ((found[i] as RefAccount).remembered && NOT_THERE.has(o.outcome) ? [i] : []));
    if (stale.length > 0) {
      for (const i of stale) this.routing.forget(refs[i] as BatchItem['ref']);
      const again = await this.routing.accountsOf(stale.map((i) => refs[i] as BatchItem['ref']), db);
      const moved = stale.flatMap((i, j) => {
        const now = (again[j] as RefAccount).account;
        return now !== null && now !== (found[i] as RefAccount).account ? [{ i, account: now }] : [];
      });
      if (moved.length > 0) {
        const redone = await this.spendByAccount(moved.map((m) => items[m.i] as BatchItem), moved.map((m) => m.account), waitMs, db);
        moved.forEach((m, j) => (outs[m.i] = redone[j] as SpendOutcome));
      }
    }
    // What the function answered teaches where each key is, and each hold just taken.
    outs.forEach((o, i) => {
      if (o.account_id === undefined) return;
      this.routing.learn(refs[i] as BatchItem['ref'], o.account_id);
      if (o.hold_id) this.routing.learn({ hold: o.hold_id }, o.account_id);
    });
    return outs;
  }

  /**
   * The items in one statement, one call of the spend function per account: a single
   * account's as that call alone; several accounts' as one call each over slices of the
   * same arrays (CROSS JOIN LATERAL, in account order: the one order in which statements
   * that span accounts take their locks). One statement: all or nothing, one round trip.
   */
  private async spendByAccount(items: readonly BatchItem[], accounts: readonly (string | null)[], waitMs: number, db: Db): Promise<SpendOutcome[]> {
    // No accounts given: every item in one call of no account (the function then spans accounts).
    const groups = accounts.length === 0 ? [{ account: null, at: items.map((_, i) => i) }] : groupByAccount(accounts);
    // Per account: its refs (each distinct key or hold once) and its items, laid end to end.
    const a = { account: [] as (string | null)[], rlo: [] as number[], rhi: [] as number[], ilo: [] as number[], ihi: [] as number[] };
    const r = { hash: [] as (string | null)[], subject: [] as (string | null)[], id: [] as (number | null)[], hold: [] as (string | null)[] };
    const sent: { item: BatchItem; ref: number }[] = [];
    for (const g of groups) {
      const names = new Map<string, number>();
      a.account.push(g.account);
      a.rlo.push(r.hash.length + 1);
      a.ilo.push(sent.length + 1);
      for (const i of g.at) {
        const item = items[i] as BatchItem;
        const name = refName(item.ref);
        let ref = names.get(name);
        if (ref === undefined) {
          names.set(name, (ref = names.size + 1));
          r.hash.push('hash' in item.ref ? item.ref.hash : null);
          r.subject.push('subject' in item.ref ? item.ref.subject : null);
          r.id.push('id' in item.ref ? item.ref.id : null);
          r.hold.push('hold' in item.ref ? item.ref.hold : null);
        }
        sent.push({ item, ref });
      }
      a.rhi.push(r.hash.length);
      a.ihi.push(sent.length);
    }
    const field = <K extends keyof SpendRequest>(i: BatchItem, k: K): SpendRequest[K] | null =>
      k in i.request ? (i.request as SpendRequest)[k] : null;
    const params = [
      r.hash,
      r.subject,
      r.id,
      r.hold,
      sent.map((s) => s.ref),
      sent.map((s) => s.item.request.op),
      sent.map((s) => s.item.request.micros),
      sent.map((s) => field(s.item, 'idempotencyKey')),
      sent.map((s) => s.item.request.metadata),
      sent.map((s) => ('hold' in s.item.ref ? s.item.ref.hold : field(s.item, 'holdId'))),
      sent.map((s) => field(s.item, 'ttlMs')),
      Math.max(0, Math.round(waitMs)),
      sent.map((s) => s.item.request.usage ?? null),
    ];
    const types = ['text[]', 'text[]', 'bigint[]', 'text[]', 'int[]', 'text[]', 'bigint[]', 'text[]', 'jsonb[]', 'text[]', 'bigint[]', 'int', 'jsonb[]'];
    const rows =
      groups.length === 1
        ? await db.query<BatchRow>(
            `SELECT * FROM ${this.t.spendManyFn}($1::text, ${types.map((t, k) => `$${k + 2}::${t}`).join(', ')})`,
            [a.account[0], ...params],
          )
        : await db.query<BatchRow>(
            `SELECT r.* FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[]) WITH ORDINALITY AS g(account, rlo, rhi, ilo, ihi, n)
             CROSS JOIN LATERAL ${this.t.spendManyFn}(g.account, ${types
               .map((t, k) => (t === 'int' ? `$${k + 6}::int` : `($${k + 6}::${t})[${k < 4 ? 'g.rlo:g.rhi' : 'g.ilo:g.ihi'}]`))
               .join(', ')}) AS r
             ORDER BY g.n`,
            [a.account, a.rlo, a.rhi, a.ilo, a.ihi, ...params],
          );
    if (rows.length !== groups.length) throw new Error(`the batch spend function returned ${rows.length} rows for ${groups.length} accounts`);
    const outs: SpendOutcome[] = new Array(items.length);
    groups.forEach((g, k) => {
      const row = rows[k] as BatchRow;
      if (!Array.isArray(row.r_outcome) || row.r_outcome.length !== g.at.length) {
        throw new Error(`the batch spend function returned ${row.r_outcome?.length ?? 0} outcomes for ${g.at.length} items`);
      }
      g.at.forEach((i, j) => (outs[i] = fromBatchRow(row, j, ((sent[(a.ilo[k] as number) - 1 + j] as { ref: number }).ref) - 1)));
    });
    return outs;
  }

  /** The commit or release of one hold: a batch of one (see spendMany). */
  async settle(holdId: string, op: 'commit' | 'release', micros: number, metadata: string | null, usage: string | null = null): Promise<SpendOutcome> {
    return one(await this.spendMany([{ ref: { hold: holdId }, request: { op, micros, metadata, usage } }]));
  }

  /** Ledger rows, newest first, for a key and/or an account, before a row id (for paging). */
  async ledger(f: LogPage): Promise<LedgerRow[]> {
    return newestFirst<LedgerRow>(this.db, this.t.ledger, 'id, key_id, account_id, kind, amount_micros, reservation_id, metadata, created_at, model, usage', f);
  }

  async findHold(id: string): Promise<HoldRow | null> {
    const rows = await this.db.query<HoldRow>(
      `SELECT h.id, h.key_id, k.account_id::text AS account_id, h.amount_micros, h.committed_micros, h.overage_micros, h.status,
              h.expires_at, h.created_at, h.settled_at, (h.status = 'held' AND h.expires_at <= now()) AS lapsed
       FROM ${this.t.holds} h JOIN ${this.t.table} k ON k.id = h.key_id WHERE h.id = $1`,
      [id],
    );
    return rows[0] ?? null;
  }

  /**
   * Marks holds past their time as expired, with an 'expire' ledger row each: at most `limit`
   * of them, the earliest due first. Returns how many.
   *
   * One account at a time: the accounts with due holds are read without a lock, then each
   * account's are locked and expired with `account_id = $n`, one shard on Citus
   * (docs/scaling.md, P4). Holds another sweeper has locked are skipped, not waited for.
   */
  async sweep(limit: number): Promise<number> {
    // On one PostgreSQL one statement for every account; sharded by account, one per account.
    if (!(this.byAccount ?? (await shardedByAccount(this.db)))) return this.sweepAccount(null, limit);
    const accounts = await this.db.query<{ account_id: string; n: number }>(
      `SELECT account_id, count(*)::int AS n FROM (
         SELECT account_id, expires_at FROM ${this.t.holds} WHERE status = 'held' AND expires_at <= now()
         ORDER BY expires_at LIMIT $1) agentkey_due
       GROUP BY account_id ORDER BY min(expires_at), account_id`,
      [limit],
    );
    let swept = 0;
    for (const a of accounts) {
      if (swept >= limit) break;
      swept += await this.sweepAccount(a.account_id, Math.min(Number(a.n), limit - swept));
    }
    return swept;
  }

  /**
   * Up to `limit` due holds of one account (null: of any) expired, with their ledger rows, in
   * one statement. The CTE names are prefixed so they cannot shadow a keys table named, say, "swept".
   */
  private async sweepAccount(accountId: string | null, limit: number): Promise<number> {
    const rows = await this.db.query<{ n: number }>(
      // The due holds are picked once, in a CTE of their own: as an IN (subquery) the planner
      // may run the subquery once per candidate row, and then LIMIT bounds nothing.
      `WITH agentkey_due AS MATERIALIZED (
         SELECT id FROM ${this.t.holds} WHERE ($3::boolean OR account_id = $2) AND status = 'held' AND expires_at <= now()
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED),
       agentkey_swept AS (
         UPDATE ${this.t.holds} SET status = 'expired', settled_at = now()
         WHERE ($3::boolean OR account_id = $2) AND id IN (SELECT id FROM agentkey_due)
           AND status = 'held'
         RETURNING id, key_id, account_id, amount_micros),
       agentkey_logged AS (
         INSERT INTO ${this.t.ledger} (key_id, account_id, kind, amount_micros, reservation_id)
         SELECT key_id, account_id, 'expire', -amount_micros, id FROM agentkey_swept
         RETURNING 1)
       SELECT count(*)::int AS n FROM agentkey_logged`,
      [limit, accountId, accountId === null],
    );
    return Number(rows[0]?.n ?? 0);
  }

  /**
   * Counters that differ from the ledger. A key's counter is the spend rows of its whole
   * subtree plus its own period resets; an account's is its spend rows since its period began.
   */
  async audit(keyId: number | null): Promise<{
    checked: number;
    mismatches: AuditMismatch[];
    accounts: AccountMismatch[];
    overage: AuditMismatch[];
    overageMicros: Micros;
  }> {
    const spend = SPEND_KINDS.filter((k) => k !== 'reset').map((k) => `'${k}'`).join(', ');
    const filter = keyId === null ? '' : 'WHERE k.id = $1';
    // Sums stay NUMERIC (sent as text, read exactly): a ledger's sum may pass BIGINT.
    const rows = await this.db.query<{ id: number; counter: Micros; ledger: string; overage_counter: Micros; overage_ledger: string }>(
      `SELECT k.id, k.spent_micros AS counter,
         (COALESCE((SELECT sum(l.amount_micros) FROM ${this.t.ledger} l
                    WHERE l.kind IN (${spend}) AND l.key_id IN (
                      SELECT d.id FROM ${this.t.table} d WHERE d.id = k.id OR d.ancestor_ids @> ARRAY[k.id::bigint])), 0)
          + COALESCE((SELECT sum(l.amount_micros) FROM ${this.t.ledger} l
                      WHERE l.kind = 'reset' AND l.key_id = k.id), 0))::text AS ledger,
         COALESCE(k.overage_micros, 0) AS overage_counter,
         COALESCE((SELECT sum(l.amount_micros) FROM ${this.t.ledger} l WHERE l.kind = 'overage' AND l.key_id = k.id), 0)::text AS overage_ledger
       FROM ${this.t.table} k ${filter}`,
      keyId === null ? [] : [keyId],
    );
    // A counter written by SQL may be NULL: it counts as 0, as the spend functions read it.
    const differ = (counter: Micros | null, ledger: string) => !sameMicros(toMicros(counter), toMicros(ledger));
    const mismatches = rows
      .filter((r) => differ(r.counter, r.ledger))
      .map((r) => ({ keyId: r.id, counterMicros: toMicros(r.counter), ledgerMicros: toMicros(r.ledger) }));
    // A key's overage is its own (not its subtree's), over its whole life.
    const overage = rows
      .filter((r) => differ(r.overage_counter, r.overage_ledger))
      .map((r) => ({ keyId: r.id, counterMicros: toMicros(r.overage_counter), ledgerMicros: toMicros(r.overage_ledger) }));
    const overageMicros = addMicros(...rows.map((r) => toMicros(r.overage_ledger)));
    const accountRows = keyId !== null ? [] : await this.db.query<{ account_id: string; counter: Micros; ledger: string }>(
      `SELECT a.account_id, a.spent_micros AS counter,
         COALESCE((SELECT sum(l.amount_micros) FROM ${this.t.ledger} l
                   WHERE l.account_id = a.account_id AND l.kind IN (${spend})
                     AND (a.period_start_at IS NULL OR l.created_at >= a.period_start_at)), 0)::text AS ledger
       FROM ${this.t.accounts} a`,
    );
    const accounts = accountRows
      .filter((r) => differ(r.counter, r.ledger))
      .map((r) => ({ accountId: r.account_id, counterMicros: toMicros(r.counter), ledgerMicros: toMicros(r.ledger) }));
    return { checked: rows.length, mismatches, accounts, overage, overageMicros };
  }

  /**
   * Spend (charges, commits, adjustments) over a time range, in total and in UTC buckets,
   * and beside it the overage recorded in that range (never part of the spend).
   */
  async usage(f: UsageFilter): Promise<UsageTotals> {
    const { where, params } = usageWhere(f);
    // Sums stay NUMERIC (sent as text, read exactly): many rows may pass BIGINT.
    const sums = `COALESCE(sum(amount_micros) FILTER (WHERE kind <> 'overage'), 0)::text AS total,
       count(*) FILTER (WHERE kind <> 'overage')::bigint AS n,
       COALESCE(sum(amount_micros) FILTER (WHERE kind = 'overage'), 0)::text AS overage`;
    const from = `FROM ${this.t.ledger} WHERE ${where.join(' AND ')}`;
    if (f.bucket === null) {
      const rows = await this.db.query<{ total: string; n: number; overage: string }>(`SELECT ${sums} ${from}`, params);
      const r = rows[0];
      return { total: toMicros(r?.total ?? '0'), count: Number(r?.n ?? 0), overage: toMicros(r?.overage ?? '0'), buckets: [] };
    }
    const rows = await this.db.query<{ start: Date; total: string; n: number; overage: string }>(
      `SELECT date_trunc('${f.bucket}', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start, ${sums}
       ${from} GROUP BY 1 ORDER BY 1`,
      params,
    );
    const buckets = rows.map((r) => ({ start: new Date(r.start), micros: toMicros(r.total), count: Number(r.n), overage: toMicros(r.overage) }));
    return {
      total: addMicros(...buckets.map((b) => b.micros)),
      count: buckets.reduce((sum, b) => sum + b.count, 0),
      overage: addMicros(...buckets.map((b) => b.overage)),
      buckets,
    };
  }

  /** Spend and tokens by model over a span: the rows of LLM calls (those with a model), dearest first. */
  async usageByModel(f: UsageFilter): Promise<ModelTotals[]> {
    const { where, params } = usageWhere(f);
    const tokens = (field: string) => `COALESCE(sum((usage ->> '${field}')::bigint), 0)::bigint AS "${field}"`;
    const rows = await this.db.query<Record<string, unknown> & { model: string; provider: string | null; total: string; overage: string; n: number }>(
      `SELECT model, max(usage ->> 'provider') AS provider,
         COALESCE(sum(amount_micros) FILTER (WHERE kind <> 'overage'), 0)::text AS total,
         COALESCE(sum(amount_micros) FILTER (WHERE kind = 'overage'), 0)::text AS overage,
         count(*) FILTER (WHERE kind <> 'overage')::bigint AS n,
         ${USAGE_FIELDS.map(tokens).join(', ')}
       FROM ${this.t.ledger} WHERE ${where.join(' AND ')} AND model IS NOT NULL
       GROUP BY model ORDER BY sum(amount_micros) DESC, model`,
      params,
    );
    return rows.map((r) => ({
      model: r.model,
      provider: r.provider,
      total: toMicros(r.total),
      overage: toMicros(r.overage),
      count: Number(r.n),
      ...(Object.fromEntries(USAGE_FIELDS.map((k) => [k, Number(r[k])])) as Record<(typeof USAGE_FIELDS)[number], number>),
    }));
  }
}


/** The rows a usage report counts (charges, commits, adjustments, overage) in its filter. */
function usageWhere(f: UsageFilter): { where: string[]; params: unknown[] } {
  const where = [`kind IN ('charge', 'commit', 'adjust', 'overage')`];
  const params: unknown[] = [];
  const add = (sql: string, value: unknown) => {
    params.push(value);
    where.push(sql.replace('?', `$${params.length}`));
  };
  if (f.keyId !== null) add('key_id = ?', f.keyId);
  if (f.accountId !== null) add('account_id = ?', f.accountId);
  if (f.since !== null) add('created_at >= ?', f.since);
  if (f.until !== null) add('created_at < ?', f.until);
  return { where, params };
}

/** One model's spend and tokens over a span. */
export interface ModelTotals extends Tokens {
  model: string;
  provider: string | null;
  total: Micros;
  overage: Micros;
  count: number;
}

export interface UsageTotals {
  total: Micros;
  count: number;
  overage: Micros;
  buckets: { start: Date; micros: Micros; count: number; overage: Micros }[];
}

/** The batch function's one row: an array per field, one entry per item. */
interface BatchRow {
  r_outcome: string[];
  r_key_id: Num[];
  r_budget: Num[];
  r_spent: Num[];
  r_held: Num[];
  r_hold_id: (string | null)[];
  r_expires_at: (Date | string | null)[];
  r_status: (string | null)[];
  r_limit: ('key' | 'ancestor' | 'account' | null)[];
  r_limit_key_id: Num[];
  r_limit_account_id: (string | null)[];
  r_hold_amount: Num[];
  r_committed: Num[];
  r_released: Num[];
  r_expired: (boolean | null)[];
  r_over_budget: (boolean | null)[];
  r_overage: Num[];
  /** When the batch took place: later batches on a key always have later times (the clock is read after the locks). */
  r_at: Date | string;
  /** Per key named (not per item): its path as 'ancestor,...,key', and its account. */
  r_ref_paths: string[];
  r_ref_accounts: (string | null)[];
  r_limit_window: (string | null)[];
  r_window_room: Num[];
  /** Per key named: the windows over it, as 'id,id'. */
  r_ref_windows: string[];
}

/** BIGINT array entries: strings from node-postgres, numbers from PGlite. */
type Num = number | string | null;
const num = (v: Num | undefined): number | null => (v === null || v === undefined ? null : Number(v));

/** Item `i` of a batch row, in the shape the single-step function reports (only the fields it would set). */
function fromBatchRow(r: BatchRow, i: number, ref: number): SpendOutcome {
  const out: SpendOutcome = { outcome: r.r_outcome[i] as string, at: new Date(r.r_at).getTime() };
  const keyId = num(r.r_key_id[i]);
  if (keyId === null) return out;
  Object.assign(out, { key_id: keyId, budget: num(r.r_budget[i]), spent: toMicros(r.r_spent[i]), held: toMicros(r.r_held[i]) });
  const path = r.r_ref_paths[ref];
  if (path) out.path = path.split(',').map(Number);
  const account = r.r_ref_accounts[ref];
  if (account !== null && account !== undefined) out.account_id = account;
  const holdId = r.r_hold_id[i] ?? null;
  if (holdId !== null) out.hold_id = holdId;
  const expiresAt = r.r_expires_at[i] ?? null;
  if (expiresAt !== null) out.expires_at = new Date(expiresAt).toISOString();
  const status = r.r_status[i] ?? null;
  if (status !== null) out.status = status;
  const limit = r.r_limit[i] ?? null;
  if (limit !== null) {
    Object.assign(out, {
      limit,
      limit_key_id: num(r.r_limit_key_id[i]),
      limit_account_id: r.r_limit_account_id[i] ?? null,
      limit_window: r.r_limit_window[i] ?? null,
    });
  }
  const windowRoom = num(r.r_window_room[i]);
  if (windowRoom !== null) out.window_room = windowRoom;
  const windows = r.r_ref_windows[ref];
  if (windows) out.windows = windows.split(',').map(Number);
  const hold = num(r.r_hold_amount[i]);
  if (hold !== null) out.hold = hold;
  const committed = num(r.r_committed[i]);
  if (committed !== null) out.committed = committed;
  const released = num(r.r_released[i]);
  if (released !== null) out.released = released;
  const expired = r.r_expired[i] ?? null;
  if (expired !== null) out.expired = expired;
  const over = r.r_over_budget[i] ?? null;
  if (over !== null) out.over_budget = over;
  const overage = num(r.r_overage[i]);
  if (overage !== null) out.overage = overage;
  return out;
}

/** One name per key or hold a batch item names, the same for every item that names it the same way. */

/** What the spend function answers for a ref it does not find in the account it was sent to. */
const NOT_THERE = new Set(['invalid', 'not_found']);

/** The outcome of a batch of one. */
function one(outcomes: SpendOutcome[]): SpendOutcome {
  const [out] = outcomes;
  if (!out) throw new Error('the batch spend function returned no outcome for one item');
  return out;
}

