/**
 * The baseline the benchmark compares agentkey with: the obvious SQL, one statement per call,
 * on tables of its own. Its validate writes `last_used_at` every time; its charge is a guarded
 * UPDATE chained to a ledger INSERT (under an account ceiling, the same statement also updates
 * the account row).
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { sha256 } from './harness.js';

/** The obvious SQL: one statement per call, `last_used_at` written by every validation. */
export class Plain {
  constructor(private readonly pool: pg.Pool, readonly p: string) {}

  async setup(): Promise<void> {
    const p = this.p;
    await this.pool.query(`
      CREATE TABLE ${p}_keys (id BIGSERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
        scopes TEXT[], budget_micros BIGINT, spent_micros BIGINT NOT NULL DEFAULT 0, held_micros BIGINT NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ, last_used_at TIMESTAMPTZ);
      CREATE TABLE ${p}_accounts (account_id TEXT PRIMARY KEY, budget_micros BIGINT NOT NULL, spent_micros BIGINT NOT NULL DEFAULT 0);
      CREATE TABLE ${p}_ledger (id BIGSERIAL PRIMARY KEY, key_id BIGINT NOT NULL, kind TEXT NOT NULL,
        amount_micros BIGINT NOT NULL, reservation_id TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
      CREATE INDEX ON ${p}_ledger (key_id);
      CREATE TABLE ${p}_holds (id TEXT PRIMARY KEY, key_id BIGINT NOT NULL, amount_micros BIGINT NOT NULL,
        status TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);`);
  }

  /** The same raw keys agentkey got, with the same budgets (micro-dollars; null for none). */
  async addKeys(raws: string[], accountId: string, budgets: (number | null)[]): Promise<void> {
    await this.pool.query(
      `INSERT INTO ${this.p}_keys (account_id, key_hash, budget_micros) SELECT $1, h, b FROM unnest($2::text[], $3::bigint[]) AS u(h, b)`,
      [accountId, raws.map(sha256), budgets],
    );
  }

  async setAccountBudget(accountId: string, micros: number): Promise<void> {
    await this.pool.query(`INSERT INTO ${this.p}_accounts (account_id, budget_micros) VALUES ($1, $2)`, [accountId, micros]);
  }

  async validate(raw: string): Promise<boolean> {
    const { rows } = await this.pool.query(
      `UPDATE ${this.p}_keys SET last_used_at = now() WHERE key_hash = $1
       RETURNING id, account_id, scopes, budget_micros, spent_micros, held_micros, expires_at, revoked_at`,
      [sha256(raw)],
    );
    const k = rows[0];
    return !!k && k.revoked_at === null && (k.expires_at === null || k.expires_at > new Date());
  }

  async charge(raw: string, micros: number): Promise<boolean> {
    const { rows } = await this.pool.query(
      `WITH k AS (UPDATE ${this.p}_keys SET spent_micros = spent_micros + $2, last_used_at = now()
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
           AND (budget_micros IS NULL OR spent_micros + held_micros + $2 <= budget_micros)
         RETURNING id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros) SELECT id, 'charge', $2 FROM k RETURNING key_id`,
      [sha256(raw), micros],
    );
    return rows.length === 1;
  }

  async chargeUnderAccount(raw: string, micros: number): Promise<boolean> {
    const { rows } = await this.pool.query(
      `WITH a AS (UPDATE ${this.p}_accounts SET spent_micros = spent_micros + $2
         WHERE account_id = (SELECT account_id FROM ${this.p}_keys WHERE key_hash = $1) AND spent_micros + $2 <= budget_micros
         RETURNING account_id),
       k AS (UPDATE ${this.p}_keys k SET spent_micros = spent_micros + $2, last_used_at = now()
         FROM a WHERE k.key_hash = $1 AND k.account_id = a.account_id AND k.revoked_at IS NULL
         RETURNING k.id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros) SELECT id, 'charge', $2 FROM k RETURNING key_id`,
      [sha256(raw), micros],
    );
    return rows.length === 1;
  }

  async reserve(raw: string, micros: number): Promise<string | null> {
    const id = `rsv_${randomUUID()}`;
    const { rows } = await this.pool.query(
      `WITH k AS (UPDATE ${this.p}_keys SET held_micros = held_micros + $2, last_used_at = now()
         WHERE key_hash = $1 AND revoked_at IS NULL AND (budget_micros IS NULL OR spent_micros + held_micros + $2 <= budget_micros)
         RETURNING id),
       h AS (INSERT INTO ${this.p}_holds (id, key_id, amount_micros, status, expires_at)
         SELECT $3, id, $2, 'held', now() + interval '5 minutes' FROM k RETURNING key_id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros, reservation_id) SELECT key_id, 'hold', $2, $3 FROM h RETURNING key_id`,
      [sha256(raw), micros, id],
    );
    return rows.length === 1 ? id : null;
  }

  async commit(id: string, micros: number): Promise<boolean> {
    const { rows } = await this.pool.query(
      `WITH h AS (UPDATE ${this.p}_holds SET status = 'committed' WHERE id = $1 AND status = 'held' RETURNING key_id, amount_micros),
       k AS (UPDATE ${this.p}_keys k SET held_micros = k.held_micros - h.amount_micros, spent_micros = k.spent_micros + $2
         FROM h WHERE k.id = h.key_id RETURNING k.id)
       INSERT INTO ${this.p}_ledger (key_id, kind, amount_micros, reservation_id) SELECT id, 'commit', $2, $1 FROM k RETURNING key_id`,
      [id, micros],
    );
    return rows.length === 1;
  }

  /** Overspent keys, keys whose counter differs from their ledger, and the ledger's charge rows. */
  async check(): Promise<{ overspent: number; mismatched: number; rows: number; sum: number; accountOver: number }> {
    const { rows } = await this.pool.query(
      `SELECT
         (SELECT count(*) FROM ${this.p}_keys WHERE budget_micros IS NOT NULL AND spent_micros + held_micros > budget_micros)::int AS overspent,
         (SELECT count(*) FROM ${this.p}_keys k WHERE k.spent_micros <> COALESCE((SELECT sum(amount_micros) FROM ${this.p}_ledger l
            WHERE l.key_id = k.id AND l.kind IN ('charge', 'commit')), 0))::int AS mismatched,
         (SELECT count(*) FROM ${this.p}_ledger WHERE kind IN ('charge', 'commit'))::int AS rows,
         (SELECT COALESCE(sum(amount_micros), 0) FROM ${this.p}_ledger WHERE kind IN ('charge', 'commit'))::bigint AS sum,
         (SELECT count(*) FROM ${this.p}_accounts WHERE spent_micros > budget_micros)::int AS "accountOver"`,
    );
    const r = rows[0];
    return { overspent: r.overspent, mismatched: r.mismatched, rows: r.rows, sum: Number(r.sum), accountOver: r.accountOver };
  }
}
