import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

export type KeyStatus = 'active' | 'expired' | 'revoked';

/** A key as the store reads it: spend and reset already rolled over if the period ended. */
export interface KeyRow {
  id: number;
  account_id: string | number;
  name: string | null;
  key_prefix: string | null;
  scopes: string[] | null;
  budget_micros: number | null;
  spent_micros: number;
  /** Money held by live (unexpired, unsettled) reservations. */
  held_micros: number;
  budget_period: string | null;
  budget_reset_at: Date | null;
  expires_at: Date | null;
  revoked_at: Date | null;
  delegated_by: string | null;
  user_id: string | null;
  external_subject: string | null;
  created_at: Date | null;
  last_used_at: Date | null;
  parent_id: number | null;
  ancestor_ids: number[];
  depth: number;
  /** When this row was read (the statement's start), to order it against spending seen since. */
  read_at: Date;
  /** The earliest expiry among the key's ancestors, which ends the key too. */
  ancestors_expire_at: Date | null;
  status: KeyStatus;
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
  /** The parent's id and its own ancestors (root first), or null for a root key. */
  parent: { id: number; ancestorIds: number[] } | null;
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
  private readonly due: string;
  private readonly spentNow: string;
  private readonly columns: string;

  constructor(private readonly db: Db, private readonly t: TableNames) {
    this.due = `(budget_period IS NOT NULL AND budget_reset_at IS NOT NULL AND budget_reset_at <= now())`;
    this.spentNow = `(CASE WHEN ${this.due} THEN 0 ELSE spent_micros END)`;
    this.columns = `id, account_id, name, key_prefix, scopes, budget_micros,
      ${this.spentNow} AS spent_micros, budget_period,
      (SELECT COALESCE(sum(h.amount_micros), 0) FROM ${t.holds} h
        WHERE h.status = 'held' AND h.expires_at > now() AND h.path @> ARRAY[k.id::bigint])::bigint AS held_micros,
      CASE WHEN ${this.due} THEN ${this.nextReset('now()')} ELSE budget_reset_at END AS budget_reset_at,
      expires_at, revoked_at, delegated_by, user_id, external_subject, created_at, last_used_at,
      parent_id, ancestor_ids, depth,
      (SELECT min(a.expires_at) FROM ${t.table} a WHERE a.id = ANY(k.ancestor_ids)) AS ancestors_expire_at,
      statement_timestamp() AS read_at,
      -- A revoked or expired ancestor takes the whole subtree with it.
      CASE WHEN revoked_at IS NOT NULL OR EXISTS (SELECT 1 FROM ${t.table} a
                 WHERE a.id = ANY(k.ancestor_ids) AND a.revoked_at IS NOT NULL) THEN 'revoked'
           WHEN (expires_at IS NOT NULL AND expires_at <= now()) OR EXISTS (SELECT 1 FROM ${t.table} a
                 WHERE a.id = ANY(k.ancestor_ids) AND a.expires_at <= now()) THEN 'expired'
           ELSE 'active' END AS status`;
  }

  private nextReset(at: string): string {
    return `${this.t.nextReset}(budget_period, COALESCE(budget_anchor_at, created_at), ${at})`;
  }

  private where(ref: KeyRef): [string, string | number] {
    if ('hash' in ref) return ['key_hash = $1', ref.hash];
    if ('subject' in ref) return ['external_subject = $1', ref.subject];
    return ['id = $1', ref.id];
  }

  async insert(k: NewKey): Promise<{ id: number; expires_at: Date | null }> {
    const rows = await this.db.query<{ id: number; expires_at: Date | null }>(
      `INSERT INTO ${this.t.table} (account_id, key_hash, key_prefix, name, scopes,
         budget_micros, budget_cents, spent_micros, budget_used_cents,
         budget_period, budget_anchor_at, budget_reset_at, expires_at, delegated_by, user_id, external_subject,
         parent_id, ancestor_ids, depth)
       VALUES ($1, $2, $3, $4, $5::text[], $6::bigint, $6::bigint / 10000.0, 0, 0,
         $7::text, CASE WHEN $7::text IS NULL THEN NULL ELSE now() END,
         CASE WHEN $7::text IS NULL THEN NULL ELSE ${this.t.nextReset}($7::text, now(), now()) END,
         $8::timestamptz, $9, $10, $11, $12::bigint, $13::bigint[], cardinality($13::bigint[]))
       ${k.subject === null ? '' : 'ON CONFLICT DO NOTHING'}
       RETURNING id, expires_at`,
      [
        k.accountId,
        k.hash,
        k.visiblePrefix,
        k.name,
        k.scopes,
        k.budgetMicros,
        k.budgetPeriod,
        k.expiresAt,
        k.delegatedBy,
        k.userId,
        k.subject,
        k.parent?.id ?? null,
        k.parent ? [...k.parent.ancestorIds, k.parent.id] : [],
      ],
    );
    return rows[0] as { id: number; expires_at: Date | null };
  }

  /** Stamps `last_used_at` on many keys (never moving it back), locking them in id order. */
  async touch(ids: number[], at: Date[]): Promise<void> {
    await this.db.query(
      `WITH agentkey_locked AS (SELECT id FROM ${this.t.table} WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE)
       UPDATE ${this.t.table} k SET last_used_at = GREATEST(k.last_used_at, v.at)
       FROM unnest($1::bigint[], $2::timestamptz[]) AS v(id, at)
       WHERE k.id = v.id AND k.id IN (SELECT id FROM agentkey_locked)`,
      [ids, at],
    );
  }

  /** Many keys by lookup hash in one query, in the order asked (null where none matches). */
  async findByHashes(hashes: readonly string[]): Promise<(KeyRow | null)[]> {
    const rows = await this.db.query<KeyRow & { key_hash: string }>(
      `SELECT ${this.columns}, key_hash FROM ${this.t.table} k WHERE key_hash = ANY($1::text[])`,
      [hashes],
    );
    const byHash = new Map(rows.map((r) => [r.key_hash, r]));
    return hashes.map((h) => {
      const row = byHash.get(h);
      if (!row) return null;
      const { key_hash: _, ...rest } = row;
      return rest;
    });
  }

  async find(ref: KeyRef): Promise<KeyRow | null> {
    const [cond, value] = this.where(ref);
    const rows = await this.db.query<KeyRow>(`SELECT ${this.columns} FROM ${this.t.table} k WHERE ${cond}`, [value]);
    return rows[0] ?? null;
  }

  async list(f: KeyFilter): Promise<KeyRow[]> {
    const params: unknown[] = [f.limit];
    let where = 'true';
    if (f.accountId !== null) where += ` AND account_id = $${params.push(f.accountId)}`;
    if (f.parentId !== null) where += ` AND parent_id = $${params.push(f.parentId)}`;
    // A key under a revoked ancestor is revoked too, even if it was created while the revoke ran.
    if (!f.includeRevoked) {
      where += ` AND revoked_at IS NULL AND NOT EXISTS (SELECT 1 FROM ${this.t.table} a
                 WHERE a.id = ANY(k.ancestor_ids) AND a.revoked_at IS NOT NULL)`;
    }
    return this.db.query<KeyRow>(`SELECT ${this.columns} FROM ${this.t.table} k WHERE ${where} ORDER BY id LIMIT $1`, params);
  }

  /**
   * Revokes a key and its whole subtree in one statement, locking the rows in id order
   * (the order spending locks them in), so a revocation never deadlocks with a charge.
   */
  async revoke(id: number, accountId: string | null): Promise<boolean> {
    const rows = await this.db.query(
      `UPDATE ${this.t.table} SET revoked_at = now()
       WHERE id IN (SELECT id FROM ${this.t.table}
                    WHERE (id = $1 OR ancestor_ids @> ARRAY[$1::bigint]) AND revoked_at IS NULL
                    ORDER BY id FOR UPDATE)
         ${accountId === null ? '' : `AND EXISTS (SELECT 1 FROM ${this.t.table} r WHERE r.id = $1 AND r.account_id = $2)`}
       RETURNING id`,
      accountId === null ? [id] : [id, accountId],
    );
    return rows.length > 0;
  }
}
