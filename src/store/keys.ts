// One file (about 550 lines): every statement about keys (reads with their budgets above, inserts,
// revokes, updates, rotation) beside the row shapes they return, so the SQL of a key's life reads in one place.
import type { Micros } from '../money.js';
import { shardedByAccount } from './sharding.js';
import { type Actor, actAs } from './actor.js';
import { type Db, lockBound, lockWaitSetting } from './db.js';
import type { TableNames } from './identifiers.js';
import { type WindowRow, WindowStore } from './windows.js';
import type { WindowSpec } from '../windows.js';

export type KeyStatus = 'active' | 'expired' | 'revoked';

/** A key as the store reads it: spend and reset already rolled over if the period ended. */
export interface KeyRow {
  id: number;
  account_id: string | number;
  name: string | null;
  key_prefix: string | null;
  scopes: string[] | null;
  budget_micros: number | null;
  spent_micros: Micros;
  /** Money held by live (unexpired, unsettled) reservations. */
  held_micros: Micros;
  /** Real cost of its commits that no budget could take, over its whole life (never counted toward a cap). */
  overage_micros: Micros;
  budget_period: string | null;
  budget_reset_at: Date | null;
  expires_at: Date | null;
  revoked_at: Date | null;
  delegated_by: string | null;
  user_id: string | null;
  external_subject: string | null;
  /** The key's own metadata (a JSON object), or null. */
  metadata: Record<string, unknown> | null;
  created_at: Date | null;
  last_used_at: Date | null;
  parent_id: number | null;
  ancestor_ids: number[];
  depth: number;
  /** When this row was read (the statement's start), to order it against spending seen since. */
  read_at: Date;
  /** The earliest expiry among the key's ancestors, which ends the key too. */
  ancestors_expire_at: Date | null;
  /** The ancestors with a budget, and what each leaves (budget - spent - held), in the same order. */
  limit_ids: (number | string)[];
  limit_rooms: (number | string)[];
  /** What the account's ceiling leaves, or null when the account has none. */
  account_room: number | null;
  /** The windows past the first over the key (its own, its ancestors', its account's), and what each leaves. */
  window_ids: (number | string)[];
  window_rooms: (number | string)[];
  /** Whose each is: a key's id, or null for the account's. */
  window_owner_ids: (number | string | null)[];
  /** Whether any window past the first is over the key (the window fields are filled in only then). */
  under_windows: boolean;
  /** The key's own windows past the first (null: none). */
  windows: WindowRow[] | null;
  /** Its own alert percents (null: the table's). */
  alert_percents: number[] | null;
  /** When an ancestor's or the account's period ends (and what they leave grows again). */
  path_reset_at: Date | null;
  status: KeyStatus;
  /** Found by the secret it had before a rotation: that secret works until then (absent for the current secret). */
  secret_valid_until?: Date;
  /** The key's own rate limit (requests per rate_limit_per_s seconds) and concurrency limit; null: none. */
  rate_limit_requests: number | null;
  rate_limit_per_s: number | null;
  concurrency_limit: number | null;
  /** Its account's (the account_limits row), null: none. */
  account_rate_requests: number | null;
  account_rate_per_s: number | null;
  account_concurrency: number | null;
}

/** A key's rate limits as written: requests per `perSeconds`, and requests in flight. */
export interface RateLimitWrite {
  requests: number;
  perSeconds: number;
}

export interface NewKey {
  accountId: string;
  hash: string;
  visiblePrefix: string;
  name: string | null;
  scopes: string[] | null;
  budgetMicros: number | null;
  budgetPeriod: string | null;
  expiresAt: Date | null;
  delegatedBy: string | null;
  userId: string | null;
  subject: string | null;
  /** A JSON object as text, or null. */
  metadata: string | null;
  /** Windows past the first (none: empty), and its own alert percents (null: the table's). */
  windows: WindowSpec[];
  alerts: number[] | null;
  /** The parent's id and its own ancestors (root first), or null for a root key. */
  parent: { id: number; ancestorIds: number[] } | null;
  /** Rate limits (absent: none). */
  rateLimit?: RateLimitWrite | null;
  concurrency?: number | null;
}

/** What `update()` writes of one key: a field left out is not written. */
export interface KeyWrite {
  id: number;
  budgetMicros?: number | null;
  budgetPeriod?: string | null;
  scopes?: string[] | null;
  expiresAt?: Date | null;
  name?: string | null;
  delegatedBy?: string | null;
  /** A JSON object as text, or null for none. */
  metadata?: string | null;
  /** All its windows past the first (empty: none). */
  windows?: WindowSpec[];
  alerts?: number[] | null;
  /** Rate limits: null removes one. */
  rateLimit?: RateLimitWrite | null;
  concurrency?: number | null;
}

/** A new key as the table holds it (defaults of the user's table included). */
export interface InsertedKey {
  id: number;
  scopes: string[] | null;
  budget_micros: number | null;
  budget_period: string | null;
  expires_at: Date | null;
}

/** Which row a call is about: by key hash, by external subject, or by id. */
export type KeyRef = { hash: string } | { subject: string } | { id: number };

export interface KeyFilter {
  /** null: every account's keys. */
  accountId: string | null;
  parentId: number | null;
  includeRevoked: boolean;
  limit: number;
}

/** All SQL about keys. Method names follow the use cases of the facade. */
export class KeyStore {
  private readonly columns: string;
  private readonly from: string;
  private readonly windows: WindowStore;

  /** `byAccount`: touch one account at a time, as a database sharded by account needs (left out: asked of the database). */
  constructor(private readonly db: Db, private readonly t: TableNames, private readonly byAccount?: boolean) {
    this.windows = new WindowStore(t);
    const due = (k: string) => `(${k}.budget_period IS NOT NULL AND ${k}.budget_reset_at IS NOT NULL AND ${k}.budget_reset_at <= now())`;
    const live = `h.status = 'held' AND h.expires_at > now()`;
    const heldOn = (k: string) => `(SELECT COALESCE(sum(h.amount_micros), 0) FROM ${t.holds} h WHERE ${live} AND h.path @> ARRAY[${k}.id::bigint])`;
    const accountDue = `(a.budget_period IS NOT NULL AND a.budget_reset_at <= now())`;
    const budgeted = 'FILTER (WHERE n.budget_micros IS NOT NULL)';
    this.columns = `k.id, k.account_id, k.name, k.key_prefix, k.scopes, k.budget_micros,
      (CASE WHEN ${due('k')} THEN 0 ELSE k.spent_micros END) AS spent_micros, k.budget_period,
      ${heldOn('k')}::bigint AS held_micros, COALESCE(k.overage_micros, 0) AS overage_micros,
      CASE WHEN ${due('k')} THEN ${this.nextReset('k', 'now()')} ELSE k.budget_reset_at END AS budget_reset_at,
      k.expires_at, k.revoked_at, k.delegated_by, k.user_id, k.external_subject, k.key_metadata AS metadata, k.created_at, k.last_used_at,
      k.parent_id, k.ancestor_ids, k.depth,
      anc.anc_expire_at AS ancestors_expire_at,
      COALESCE(anc.anc_limit_ids, '{}') AS limit_ids, COALESCE(anc.anc_limit_rooms, '{}')::bigint[] AS limit_rooms,
      acct.acct_room::bigint AS account_room,
      -- Whether a window past the first is over it (its own, an ancestor's, its account's): read then by withWindows().
      (k.budget_windows OR COALESCE(anc.anc_wins, false) OR COALESCE(acct.acct_wins, false)) AS under_windows, k.alert_percents,
      LEAST(anc.anc_reset_at, acct.acct_reset_at) AS path_reset_at,
      statement_timestamp() AS read_at,
      k.rate_limit_requests, k.rate_limit_per_s, k.concurrency_limit,
      al.rate_limit_requests AS account_rate_requests, al.rate_limit_per_s AS account_rate_per_s, al.concurrency_limit AS account_concurrency,
      -- A revoked or expired ancestor takes the whole subtree with it.
      CASE WHEN k.revoked_at IS NOT NULL OR anc.anc_revoked THEN 'revoked'
           WHEN (k.expires_at IS NOT NULL AND k.expires_at <= now()) OR anc.anc_expired THEN 'expired'
           ELSE 'active' END AS status`;
    // Each key's ancestors, read once (and not at all for a root key): their expiry and
    // revocation, and what each budgeted one leaves; then what the account's ceiling leaves.
    // Both end by themselves at the first period end among them (path_reset_at).
    this.from = `${t.table} k
      LEFT JOIN LATERAL (
        SELECT min(n.expires_at) AS anc_expire_at, bool_or(n.revoked_at IS NOT NULL) AS anc_revoked,
               bool_or(n.expires_at <= now()) AS anc_expired,
               array_agg(n.id ORDER BY n.id) ${budgeted} AS anc_limit_ids,
               array_agg(n.budget_micros - (CASE WHEN ${due('n')} THEN 0 ELSE n.spent_micros END) - ${heldOn('n')} ORDER BY n.id)
                 ${budgeted} AS anc_limit_rooms,
               min(CASE WHEN ${due('n')} THEN ${this.nextReset('n', 'now()')} ELSE n.budget_reset_at END)
                 FILTER (WHERE n.budget_micros IS NOT NULL AND n.budget_period IS NOT NULL) AS anc_reset_at,
               bool_or(n.budget_windows) AS anc_wins
        FROM ${t.table} n WHERE cardinality(k.ancestor_ids) > 0 AND n.id = ANY(k.ancestor_ids)) anc ON true
      LEFT JOIN LATERAL (
        SELECT a.budget_micros - (CASE WHEN ${accountDue} THEN 0 ELSE a.spent_micros END)
                 - (SELECT COALESCE(sum(h.amount_micros), 0) FROM ${t.holds} h WHERE ${live} AND h.account_id = a.account_id) AS acct_room,
               CASE WHEN a.budget_period IS NULL THEN NULL WHEN ${accountDue} THEN ${t.schema}agentkey_period_end(a.budget_period, now())
                    ELSE a.budget_reset_at END AS acct_reset_at,
               a.budget_windows AS acct_wins
        FROM ${t.accounts} a WHERE a.account_id = k.account_id::text) acct ON true
      LEFT JOIN ${t.accountLimits} al ON al.account_id = k.account_id::text`;
  }

  /**
   * Fills in the windows past the first over each row (read in a second query, and only for
   * rows that have some: a key without windows costs nothing more), what each leaves, the
   * key's own, and the first of their period ends in path_reset_at.
   */
  private async withWindows<R extends KeyRow>(rows: R[], db: Db = this.db): Promise<R[]> {
    const ids = rows.filter((r) => r.under_windows).map((r) => Number(r.id));
    const over = ids.length === 0 ? [] : await this.windows.over(db, ids);
    for (const r of rows) {
      const mine = over.filter((w) => Number(w.for_key) === Number(r.id));
      r.window_ids = mine.map((w) => Number(w.id));
      r.window_owner_ids = mine.map((w) => (w.key_id === null ? null : Number(w.key_id)));
      r.window_rooms = mine.map((w) => Number(BigInt(w.budget_micros) - BigInt(w.spent_micros) - BigInt(w.held_micros)));
      const own = mine.filter((w) => w.key_id !== null && Number(w.key_id) === Number(r.id));
      r.windows = own.length === 0 ? null : own.map(({ period, budget_micros, spent_micros, period_start_at, reset_at }) => ({ period, budget_micros, spent_micros, period_start_at, reset_at }));
      for (const w of mine) {
        if (w.reset_at !== null && (r.path_reset_at === null || new Date(w.reset_at) < new Date(r.path_reset_at))) r.path_reset_at = new Date(w.reset_at);
      }
    }
    return rows;
  }

  /** The table's alert percents (settings), or null. */
  globalAlerts(): Promise<number[] | null> {
    return this.windows.globalAlerts(this.db);
  }

  setGlobalAlerts(percents: number[] | null): Promise<void> {
    return this.windows.setGlobalAlerts(this.db, percents);
  }

  private nextReset(k: string, at: string): string {
    return `${this.t.nextReset}(${k}.budget_period, COALESCE(${k}.budget_anchor_at, ${k}.created_at), ${at})`;
  }

  /**
   * Key `id`'s account as text (null: the key has none), read without a lock, or undefined
   * when no key has `id`. A lock then names that account (`account_id = $n`: the column
   * uncast, one shard on Citus); the account of a key never changes, and a tree's keys
   * share theirs. A key without an account (the package's column allows NULL, Citus does
   * not) matches the lock's `$n IS NULL AND account_id IS NULL` instead, which folds away
   * for any other.
   */
  private async ownerOf(db: Db, id: number): Promise<{ account_id: string | null } | undefined> {
    const [owner] = await db.query<{ account_id: string | null }>(`SELECT account_id::text AS account_id FROM ${this.t.table} WHERE id = $1`, [id]);
    return owner;
  }

  private where(ref: { subject: string } | { id: number }): [string, string | number] {
    if ('subject' in ref) return ['external_subject = $1', ref.subject];
    return ['id = $1', ref.id];
  }

  /**
   * Inserts a key, naming only the columns it sets: a column left out keeps the table's
   * default (the package's `name TEXT NOT NULL DEFAULT 'default'`, or any column of the
   * user's own). The package's budget columns are written as whole cents beside the exact ones.
   */
  async insert(k: NewKey, actor: Actor): Promise<InsertedKey> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      return this.insertRow(tx, k);
    });
  }

  private async insertRow(db: Db, k: NewKey): Promise<InsertedKey> {
    const columns: string[] = [];
    const values: string[] = [];
    const params: unknown[] = [];
    const set = (column: string, value: unknown, cast = '', expr?: (p: string) => string) => {
      if (value === null || value === undefined) return;
      const p = `$${params.push(value)}${cast}`;
      columns.push(column);
      values.push(expr ? expr(p) : p);
    };
    set('account_id', k.accountId);
    set('key_hash', k.hash);
    set('key_prefix', k.visiblePrefix);
    set('name', k.name);
    set('scopes', k.scopes, '::text[]');
    set('budget_micros', k.budgetMicros, '::bigint');
    set('budget_cents', k.budgetMicros, '::bigint', (p) => `${this.t.centsDown}(${p})`);
    // The package's create() wrote 0 here too: a table without a default on it still reads 0.
    set('budget_used_cents', 0);
    if (k.budgetPeriod !== null) {
      set('budget_period', k.budgetPeriod, '::text');
      columns.push('budget_anchor_at', 'budget_reset_at');
      values.push('now()', `${this.t.nextReset}($${params.length}::text, now(), now())`);
    }
    set('expires_at', k.expiresAt, '::timestamptz');
    set('delegated_by', k.delegatedBy);
    set('user_id', k.userId);
    set('external_subject', k.subject);
    set('key_metadata', k.metadata, '::jsonb');
    set('alert_percents', k.alerts, '::smallint[]');
    if (k.windows.length > 0) set('budget_windows', true);
    set('rate_limit_requests', k.rateLimit?.requests, '::int');
    set('rate_limit_per_s', k.rateLimit?.perSeconds, '::int');
    set('concurrency_limit', k.concurrency, '::int');
    if (k.parent) {
      set('parent_id', k.parent.id, '::bigint');
      set('ancestor_ids', [...k.parent.ancestorIds, k.parent.id], '::bigint[]');
      set('depth', k.parent.ancestorIds.length + 1, '::int');
    }
    const rows = await db.query<InsertedKey>(
      `INSERT INTO ${this.t.table} (${columns.join(', ')}) VALUES (${values.join(', ')})
       ${k.subject === null ? '' : 'ON CONFLICT DO NOTHING'}
       RETURNING id, scopes, budget_micros, budget_period, expires_at`,
      params,
    );
    const row = rows[0] as InsertedKey | undefined;
    if (row && k.windows.length > 0) await this.windows.replace(db, { keyId: Number(row.id), accountId: k.accountId }, k.windows);
    return row as InsertedKey;
  }

  /**
   * Inserts a child key, its fields fitted under its parent by `fit` (which throws to
   * insert nothing) from the parent as it is under a share lock, in one transaction: an
   * `update()` that narrows the parent waits for it, or it for the update, so the child
   * is checked against the parent's limits as they end up. Null when the parent is gone.
   */
  async insertChild(parentId: number, fit: (parent: KeyRow) => NewKey, actor: Actor): Promise<InsertedKey | null> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      const owner = await this.ownerOf(tx, parentId);
      if (!owner) return null;
      const locked = await tx.query(
        `SELECT id FROM ${this.t.table} WHERE id = $1 AND (account_id = $2 OR ($2 IS NULL AND account_id IS NULL)) FOR SHARE`,
        [parentId, owner.account_id],
      );
      if (locked.length === 0) return null;
      const rows = await tx.query<KeyRow>(`SELECT ${this.columns} FROM ${this.from} WHERE k.id = $1`, [parentId]);
      const parent = rows[0];
      return parent ? this.insertRow(tx, fit(parent)) : null;
    });
  }

  /**
   * Stamps `last_used_at` on many keys (never moving it back), locking them in id order: one
   * statement on one PostgreSQL, one per account where the database is sharded by account
   * (the accounts read first, unlocked). A key another transaction
   * holds is skipped, not waited for (a stamp must never hold up a charge); returns the ids
   * skipped so, for the next write.
   */
  async touch(ids: number[], at: Date[]): Promise<number[]> {
    const when = new Map(ids.map((id, i) => [id, at[i]]));
    // On one PostgreSQL one statement for every account ($4: any account); on a database
    // sharded by account one per account, each key's account read first (unlocked).
    const groups = new Map<string | null, number[]>();
    if (this.byAccount ?? (await shardedByAccount(this.db))) {
      const owners = await this.db.query<{ id: number; account_id: string | null }>(
        `SELECT id, account_id::text AS account_id FROM ${this.t.table} WHERE id = ANY($1::bigint[]) ORDER BY id`,
        [ids],
      );
      for (const o of owners) groups.set(o.account_id, [...(groups.get(o.account_id) ?? []), Number(o.id)]);
    }
    const any = groups.size === 0;
    if (any) groups.set(null, ids);
    const skipped: number[] = [];
    for (const [account, mine] of groups) {
      const rows = await this.db.query<{ id: number }>(
        `WITH agentkey_locked AS (
           SELECT id FROM ${this.t.table} WHERE id = ANY($1::bigint[]) AND ($4::boolean OR account_id = $3 OR ($3 IS NULL AND account_id IS NULL))
           ORDER BY id FOR UPDATE SKIP LOCKED),
         agentkey_stamped AS (
           UPDATE ${this.t.table} k SET last_used_at = GREATEST(k.last_used_at, v.at)
           FROM unnest($1::bigint[], $2::timestamptz[]) AS v(id, at)
           WHERE k.id = v.id AND k.id IN (SELECT id FROM agentkey_locked))
         SELECT id FROM ${this.t.table} WHERE id = ANY($1::bigint[]) AND id NOT IN (SELECT id FROM agentkey_locked)`,
        [mine, mine.map((id) => when.get(id)), account, any],
      );
      skipped.push(...rows.map((r) => Number(r.id)));
    }
    return skipped.sort((a, b) => a - b);
  }

  /**
   * Many keys by lookup hash in one query, in the order asked (null where none matches): by
   * a key's current secret, or by the one it had before a rotation while that still works.
   */
  async findByHashes(hashes: readonly string[]): Promise<(KeyRow | null)[]> {
    const rows = await this.db.query<
      KeyRow & { key_hash: string; previous_key_hash: string | null; previous_key_valid_until: Date | null; previous_live: boolean }
    >(
      `SELECT ${this.columns}, k.key_hash, k.previous_key_hash, k.previous_key_valid_until,
              COALESCE(k.previous_key_valid_until > now(), false) AS previous_live FROM ${this.from}
       WHERE k.key_hash = ANY($1::text[]) OR (k.previous_key_hash = ANY($1::text[]) AND k.previous_key_valid_until > now())`,
      [hashes],
    );
    await this.withWindows(rows);
    const byHash = new Map<string, KeyRow>();
    for (const { key_hash, previous_key_hash, previous_key_valid_until, previous_live, ...row } of rows) {
      byHash.set(key_hash, row);
      // A row found by its current secret still carries its previous one: only a live one counts.
      if (previous_live && previous_key_hash !== null && previous_key_valid_until !== null && !byHash.has(previous_key_hash)) {
        byHash.set(previous_key_hash, { ...row, secret_valid_until: new Date(previous_key_valid_until) });
      }
    }
    return hashes.map((h) => byHash.get(h) ?? null);
  }

  async find(ref: KeyRef): Promise<KeyRow | null> {
    if ('hash' in ref) return (await this.findByHashes([ref.hash]))[0] ?? null;
    const [cond, value] = this.where(ref);
    const rows = await this.db.query<KeyRow>(`SELECT ${this.columns} FROM ${this.from} WHERE k.${cond}`, [value]);
    return (await this.withWindows(rows))[0] ?? null;
  }

  async list(f: KeyFilter): Promise<KeyRow[]> {
    const params: unknown[] = [f.limit];
    let where = 'true';
    if (f.accountId !== null) where += ` AND k.account_id = $${params.push(f.accountId)}`;
    if (f.parentId !== null) where += ` AND k.parent_id = $${params.push(f.parentId)}`;
    // A key under a revoked ancestor is revoked too, even if it was created while the revoke ran.
    if (!f.includeRevoked) where += ` AND k.revoked_at IS NULL AND anc.anc_revoked IS NOT TRUE`;
    return this.withWindows(await this.db.query<KeyRow>(`SELECT ${this.columns} FROM ${this.from} WHERE ${where} ORDER BY k.id LIMIT $1`, params));
  }

  /**
   * Revokes a key and its whole subtree in one statement, locking the rows in id order
   * (the order spending locks them in), so a revocation never deadlocks with a charge.
   */
  async revoke(id: number, accountId: string | null, actor: Actor): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      return this.revokeIn(tx, id, accountId);
    });
  }

  private async revokeIn(tx: Db, id: number, accountId: string | null): Promise<boolean> {
    // With the caller's account, no read first: a key of another account locks nothing.
    const account = accountId === null ? await this.ownerOf(tx, id) : { account_id: accountId };
    if (!account) return false;
    const rows = await tx.query(
      `UPDATE ${this.t.table} SET revoked_at = now()
       WHERE id IN (SELECT k.id FROM ${this.t.table} k, ${lockBound('$2')}
                    WHERE (k.id = $1 OR k.ancestor_ids @> ARRAY[$1::bigint]) AND k.revoked_at IS NULL
                      AND (k.account_id = $3 OR ($3 IS NULL AND k.account_id IS NULL))
                    ORDER BY k.id FOR UPDATE OF k)
       RETURNING id`,
      [id, lockWaitSetting(this.db), account.account_id],
    );
    return rows.length > 0;
  }

  /**
   * `update()` in one transaction: locks the key's ancestors, the key and its subtree (all
   * of the key's account, read first) in id order (the order spending locks them in, so it
   * never deadlocks with a charge), reads them as they are now, asks `decide` what to write
   * (it throws to change nothing), and writes it. Returns the ids written, or null when no key has `id` (in `accountId`).
   *
   * The package's budget column is written beside the exact one (whole cents). A new
   * budget period is written to the package's column alone: the sync trigger then does
   * what it does for any edit of it (sql/functions/sync.sql), so the rule has one home: a
   * period that had ended ends first (a reset row), and the new one starts now, keeping
   * what was spent. Every write of a watched column is announced to every process's cache
   * by the change trigger.
   */
  async update(
    id: number,
    accountId: string | null,
    decide: (key: KeyRow, parent: KeyRow | null, descendants: KeyRow[]) => KeyWrite[],
    actor: Actor,
  ): Promise<number[] | null> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      const found = await tx.query<{ ancestor_ids: number[]; account_id: string | null }>(
        `SELECT ancestor_ids, account_id::text AS account_id FROM ${this.t.table} WHERE id = $1 ${accountId === null ? '' : 'AND account_id = $2'}`,
        accountId === null ? [id] : [id, accountId],
      );
      if (!found[0]) return null;
      const tree = [...found[0].ancestor_ids.map(Number), id];
      const locked = await tx.query<{ id: number }>(
        `SELECT id FROM ${this.t.table} WHERE (id = ANY($1::bigint[]) OR ancestor_ids @> ARRAY[$2::bigint])
           AND (account_id = $3 OR ($3 IS NULL AND account_id IS NULL)) ORDER BY id FOR UPDATE`,
        [tree, id, found[0].account_id],
      );
      // Gone since it was read (or, outside Citus, moved to another account by hand): as if never found.
      if (!locked.some((r) => Number(r.id) === id)) return null;
      const rows = await tx.query<KeyRow>(
        `SELECT ${this.columns} FROM ${this.from} WHERE k.id = ANY($1::bigint[]) OR k.ancestor_ids @> ARRAY[$2::bigint]`,
        [tree, id],
      );
      const key = rows.find((r) => Number(r.id) === id);
      if (!key) return null;
      const parent = key.parent_id === null ? null : (rows.find((r) => Number(r.id) === Number(key.parent_id)) ?? null);
      const descendants = rows.filter((r) => r.ancestor_ids.map(Number).includes(id));
      const writes = decide(key, parent, descendants);
      for (const w of writes) await this.write(tx, w);
      return writes.map((w) => w.id);
    });
  }

  /**
   * `rotate()`: gives key `id` the secret whose hash is `hash`, in one transaction with the
   * key locked (its spend, ledger, children and subject bindings stay as they are). The
   * secret it had stays valid for `graceMs` (0: not at all), replacing any older one: at
   * most one previous secret is ever alive. `check` sees the key first and throws to
   * change nothing. Returns until when the previous secret works, or null when no key has
   * `id` (in `accountId`).
   */
  async rotate(
    id: number,
    accountId: string | null,
    secret: { hash: string; visiblePrefix: string; graceMs: number },
    check: (key: KeyRow) => void,
    actor: Actor,
  ): Promise<{ previousValidUntil: Date | null } | null> {
    return this.db.transaction(async (tx) => {
      await actAs(tx, actor);
      const account = accountId === null ? await this.ownerOf(tx, id) : { account_id: accountId };
      if (!account) return null;
      const locked = await tx.query(
        `SELECT id FROM ${this.t.table} WHERE id = $1 AND (account_id = $2 OR ($2 IS NULL AND account_id IS NULL)) FOR UPDATE`,
        [id, account.account_id],
      );
      if (locked.length === 0) return null;
      const rows = await tx.query<KeyRow>(`SELECT ${this.columns} FROM ${this.from} WHERE k.id = $1`, [id]);
      check(rows[0] as KeyRow);
      const written = await tx.query<{ previous_key_valid_until: Date | null }>(
        `UPDATE ${this.t.table} SET
           previous_key_hash = CASE WHEN $4::bigint > 0 THEN key_hash END,
           previous_key_valid_until = CASE WHEN $4::bigint > 0 THEN clock_timestamp() + $4::bigint * interval '1 millisecond' END,
           key_hash = $2, key_prefix = $3
         WHERE id = $1 RETURNING previous_key_valid_until`,
        [id, secret.hash, secret.visiblePrefix, secret.graceMs],
      );
      const until = written[0]?.previous_key_valid_until ?? null;
      return { previousValidUntil: until === null ? null : new Date(until) };
    });
  }

  private async write(tx: Db, w: KeyWrite): Promise<void> {
    const sets: string[] = [];
    const params: unknown[] = [w.id];
    const param = (value: unknown, cast: string) => `$${params.push(value)}::${cast}`;
    if (w.budgetMicros !== undefined) {
      const p = param(w.budgetMicros, 'bigint');
      sets.push(`budget_micros = ${p}`, `budget_cents = ${this.t.centsDown}(${p})`);
    }
    if (w.budgetPeriod !== undefined) sets.push(`budget_period = ${param(w.budgetPeriod, 'text')}`);
    if (w.scopes !== undefined) sets.push(`scopes = ${param(w.scopes, 'text[]')}`);
    if (w.expiresAt !== undefined) sets.push(`expires_at = ${param(w.expiresAt, 'timestamptz')}`);
    // No name is the table's default (the package's is 'default', NOT NULL).
    if (w.name !== undefined) sets.push(w.name === null ? 'name = DEFAULT' : `name = ${param(w.name, 'text')}`);
    if (w.delegatedBy !== undefined) sets.push(`delegated_by = ${param(w.delegatedBy, 'text')}`);
    if (w.metadata !== undefined) sets.push(`key_metadata = ${param(w.metadata, 'jsonb')}`);
    if (w.alerts !== undefined) sets.push(`alert_percents = ${param(w.alerts, 'smallint[]')}`);
    if (w.rateLimit !== undefined) {
      sets.push(`rate_limit_requests = ${param(w.rateLimit?.requests ?? null, 'int')}`, `rate_limit_per_s = ${param(w.rateLimit?.perSeconds ?? null, 'int')}`);
    }
    if (w.concurrency !== undefined) sets.push(`concurrency_limit = ${param(w.concurrency, 'int')}`);
    if (sets.length > 0) await tx.query(`UPDATE ${this.t.table} SET ${sets.join(', ')} WHERE id = $1`, params);
    if (w.windows !== undefined) {
      const [owner] = await tx.query<{ account_id: string }>(`SELECT COALESCE(account_id::text, '') AS account_id FROM ${this.t.table} WHERE id = $1`, [w.id]);
      await this.windows.replace(tx, { keyId: w.id, accountId: owner?.account_id ?? '' }, w.windows);
    }
  }
}
