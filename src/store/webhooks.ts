import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/**
 * All SQL of the outbox's consumers (sql/migrations/009_webhooks.sql): webhook endpoints,
 * the fan-out of outbox events into deliveries, claiming and recording deliveries, reading
 * the outbox in commit-safe order for `onEvent()`, and the `key.expired` sweep.
 *
 * Commit-safe order: an outbox id is handed out before its transaction commits, so a row
 * with a smaller id can appear after a larger one was read. Each row also has the id of the
 * transaction that wrote it (`xact`); every transaction below the current snapshot's xmin
 * has ended, so the rows below that horizon are final. Readers go by (xact, id) up to it and
 * remember where they stopped: nothing is passed over, nothing read twice.
 */

export interface WebhookRow {
  id: number;
  url: string;
  secret: string;
  event_types: string[] | null;
  account_id: string | null;
  description: string | null;
  enabled: boolean;
  created_at: Date;
  updated_at: Date;
}

export interface OutboxRow {
  id: number;
  type: string;
  account_id: string;
  key_id: number | null;
  data: Record<string, unknown>;
  created_at: Date;
}

export interface DeliveryRow {
  id: number;
  webhook_id: number;
  outbox_id: number;
  event_type: string;
  status: 'pending' | 'delivered' | 'failed';
  attempts: number;
  next_attempt_at: Date;
  last_status: number | null;
  last_error: string | null;
  created_at: Date;
  delivered_at: Date | null;
  attempt_log: { attempt: number; started_at: string; status: number | null; error: string | null; duration_ms: number }[];
}

/** A delivery a deliverer took, with what it needs to send it. */
export interface ClaimedRow {
  id: number;
  webhook_id: number;
  attempts: number;
  url: string;
  secret: string;
  outbox: OutboxRow;
}

/** Where a reader of the outbox stopped: the last (transaction, id) it read. */
export interface OutboxCursor {
  xact: string;
  id: number;
}

/** The settings rows (in `<base>_settings`) of the fan-out's and the expiry sweep's cursors. */
const FANOUT = 'webhooks.fanout';
const EXPIRY = 'key_expired.sweep';

/** How far back each expiry sweep looks again (dedupe keeps it once): a key whose expiry a transaction still open set is not passed over. */
const EXPIRY_LOOKBACK = "interval '1 minute'";

const WEBHOOK_COLUMNS = 'id, url, secret, event_types, account_id, description, enabled, created_at, updated_at';
const OUTBOX_COLUMNS = 'id, type, account_id, key_id, data, created_at';

export class WebhookStore {
  constructor(private readonly db: Db, private readonly t: TableNames) {}

  // Endpoints.

  /** A new endpoint; the fan-out starts from this transaction's horizon if it has not started yet. */
  async create(w: { url: string; secret: string; eventTypes: string[] | null; accountId: string | null; description: string | null; enabled: boolean }): Promise<WebhookRow> {
    return this.db.transaction(async (tx) => {
      await tx.query(
        `INSERT INTO ${this.t.settings} (name, value)
         VALUES ($1, jsonb_build_object('xact', pg_snapshot_xmin(pg_current_snapshot())::text, 'id', 0)) ON CONFLICT (name) DO NOTHING`,
        [FANOUT],
      );
      const rows = await tx.query<WebhookRow>(
        `INSERT INTO ${this.t.webhooks} (url, secret, event_types, account_id, description, enabled) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${WEBHOOK_COLUMNS}`,
        [w.url, w.secret, w.eventTypes, w.accountId, w.description, w.enabled],
      );
      return rows[0] as WebhookRow;
    });
  }

  async list(limit: number): Promise<WebhookRow[]> {
    return this.db.query<WebhookRow>(`SELECT ${WEBHOOK_COLUMNS} FROM ${this.t.webhooks} ORDER BY id LIMIT $1`, [limit]);
  }

  async get(id: number): Promise<WebhookRow | null> {
    return (await this.db.query<WebhookRow>(`SELECT ${WEBHOOK_COLUMNS} FROM ${this.t.webhooks} WHERE id = $1`, [id]))[0] ?? null;
  }

  /** Sets the given columns (names checked by the caller); null when no endpoint has this id. */
  async update(id: number, changes: Partial<Record<'url' | 'secret' | 'event_types' | 'account_id' | 'description' | 'enabled', unknown>>): Promise<WebhookRow | null> {
    const sets: string[] = [];
    const params: unknown[] = [id];
    for (const [column, value] of Object.entries(changes)) sets.push(`${column} = $${params.push(value)}`);
    const rows = await this.db.query<WebhookRow>(
      `UPDATE ${this.t.webhooks} SET ${[...sets, 'updated_at = now()'].join(', ')} WHERE id = $1 RETURNING ${WEBHOOK_COLUMNS}`,
      params,
    );
    return rows[0] ?? null;
  }

  /** Removes an endpoint with its deliveries and their attempts. */
  async remove(id: number): Promise<boolean> {
    return this.db.transaction(async (tx) => {
      const gone = await tx.query(`DELETE FROM ${this.t.webhooks} WHERE id = $1 RETURNING id`, [id]);
      if (gone.length === 0) return false;
      await tx.query(`DELETE FROM ${this.t.attempts} WHERE webhook_id = $1`, [id]);
      await tx.query(`DELETE FROM ${this.t.deliveries} WHERE webhook_id = $1`, [id]);
      return true;
    });
  }

  /** Deliveries newest first, each with its attempts (newest last). */
  async deliveries(f: { webhookId: number | null; status: string | null; before: number | null; limit: number }): Promise<DeliveryRow[]> {
    const where: string[] = [];
    const params: unknown[] = [f.limit];
    if (f.webhookId !== null) where.push(`d.webhook_id = $${params.push(f.webhookId)}`);
    if (f.status !== null) where.push(`d.status = $${params.push(f.status)}`);
    if (f.before !== null) where.push(`d.id < $${params.push(f.before)}`);
    return this.db.query<DeliveryRow>(
      `SELECT d.id, d.webhook_id, d.outbox_id, o.type AS event_type, d.status, d.attempts, d.next_attempt_at, d.last_status, d.last_error,
              d.created_at, d.delivered_at,
              COALESCE((SELECT json_agg(json_build_object('attempt', a.attempt, 'started_at', a.started_at, 'status', a.status, 'error', a.error, 'duration_ms', a.duration_ms) ORDER BY a.id)
                        FROM ${this.t.attempts} a WHERE a.delivery_id = d.id), '[]'::json) AS attempt_log
       FROM ${this.t.deliveries} d LEFT JOIN ${this.t.outbox} o ON o.id = d.outbox_id
       ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY d.id DESC LIMIT $1`,
      params,
    );
  }

  /** How many deliveries are pending (of them, how many have failed at least once) and failed for good. */
  async stats(): Promise<{ pending: number; failing: number; failed: number }> {
    const rows = await this.db.query<{ pending: number; failing: number; failed: number }>(
      `SELECT count(*) FILTER (WHERE status = 'pending')::int AS pending,
              count(*) FILTER (WHERE status = 'pending' AND last_error IS NOT NULL OR status = 'pending' AND last_status IS NOT NULL)::int AS failing,
              count(*) FILTER (WHERE status = 'failed')::int AS failed
       FROM ${this.t.deliveries} WHERE status <> 'delivered'`,
    );
    const r = rows[0];
    return { pending: Number(r?.pending ?? 0), failing: Number(r?.failing ?? 0), failed: Number(r?.failed ?? 0) };
  }

  // The outbox, read.

  /** Outbox rows newest first, by account and type. */
  async outbox(f: { accountId: string | null; type: string | null; before: number | null; limit: number }): Promise<OutboxRow[]> {
    const where: string[] = [];
    const params: unknown[] = [f.limit];
    if (f.accountId !== null) where.push(`account_id = $${params.push(f.accountId)}`);
    if (f.type !== null) where.push(`type = $${params.push(f.type)}`);
    if (f.before !== null) where.push(`id < $${params.push(f.before)}`);
    return this.db.query<OutboxRow>(
      `SELECT ${OUTBOX_COLUMNS} FROM ${this.t.outbox} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT $1`,
      params,
    );
  }

  /** Where a reader that starts now begins: every row written by a transaction still open, or later, is after it. */
  async horizon(): Promise<OutboxCursor> {
    const rows = await this.db.query<{ xact: string }>(`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xact`);
    return { xact: rows[0]?.xact ?? '0', id: 0 };
  }

  /** Rows after `cursor` that are final (their transactions ended), in (xact, id) order; `types` null for all. */
  async after(cursor: OutboxCursor, types: readonly string[] | null, limit: number): Promise<{ rows: OutboxRow[]; read: number; cursor: OutboxCursor }> {
    const rows = await this.db.query<OutboxRow & { xact: string }>(
      `SELECT ${OUTBOX_COLUMNS}, xact::text AS xact FROM ${this.t.outbox}
       WHERE (xact, id) > ($1::xid8, $2::bigint) AND xact < pg_snapshot_xmin(pg_current_snapshot())
       ORDER BY xact, id LIMIT $3`,
      [cursor.xact, cursor.id, limit],
    );
    const last = rows[rows.length - 1];
    const next = last ? { xact: last.xact, id: Number(last.id) } : cursor;
    const wanted = types === null ? rows : rows.filter((r) => types.includes(r.type));
    return { rows: wanted.map(({ xact: _, ...r }) => r), read: rows.length, cursor: next };
  }

  // Deliveries: fan-out, claim, record.

  /**
   * Turns up to `limit` outbox rows past the fan-out cursor into deliveries, one per
   * matching enabled endpoint, and moves the cursor, in one transaction. One process fans
   * out at a time (the cursor row is locked; the others skip it). Returns the rows read.
   */
  async fanOut(limit: number): Promise<number> {
    return this.db.transaction(async (tx) => {
      const [cur] = await tx.query<{ xact: string; id: number }>(
        `SELECT value->>'xact' AS xact, (value->>'id')::bigint AS id FROM ${this.t.settings} WHERE name = $1 FOR UPDATE SKIP LOCKED`,
        [FANOUT],
      );
      if (!cur) return 0;
      const [r] = await tx.query<{ events: number; xact: string | null; id: number | null }>(
        `WITH ev AS (
           SELECT o.id, o.xact, o.type, o.account_id FROM ${this.t.outbox} o
           WHERE (o.xact, o.id) > ($1::xid8, $2::bigint) AND o.xact < pg_snapshot_xmin(pg_current_snapshot())
           ORDER BY o.xact, o.id LIMIT $3),
         made AS (
           INSERT INTO ${this.t.deliveries} (webhook_id, outbox_id)
           SELECT w.id, ev.id FROM ev JOIN ${this.t.webhooks} w
             ON w.enabled AND w.since_xact <= ev.xact
            AND (w.event_types IS NULL OR ev.type = ANY (w.event_types))
            AND (w.account_id IS NULL OR w.account_id = ev.account_id)
           ORDER BY ev.xact, ev.id, w.id
           ON CONFLICT DO NOTHING RETURNING 1),
         last AS (SELECT xact, id FROM ev ORDER BY xact DESC, id DESC LIMIT 1)
         SELECT (SELECT count(*) FROM ev)::int AS events, (SELECT count(*) FROM made)::int AS made,
                (SELECT xact::text FROM last) AS xact, (SELECT id FROM last) AS id`,
        [cur.xact, Number(cur.id), limit],
      );
      if (r?.xact != null) {
        await tx.query(`UPDATE ${this.t.settings} SET value = jsonb_build_object('xact', $2::text, 'id', $3::bigint), updated_at = now() WHERE name = $1`, [
          FANOUT,
          r.xact,
          Number(r.id),
        ]);
      }
      return Number(r?.events ?? 0);
    });
  }

  /**
   * Takes up to `limit` due deliveries of enabled endpoints for `leaseMs` under the token
   * `lease`, skipping those another deliverer holds (row locks, then the lease): no two
   * deliverers send one delivery at the same time while its lease lasts.
   */
  async claim(limit: number, leaseMs: number, lease: string): Promise<ClaimedRow[]> {
    const rows = await this.db.query<{
      id: number; webhook_id: number; attempts: number; url: string; secret: string;
      o_id: number; o_type: string; o_account_id: string; o_key_id: number | null; o_data: Record<string, unknown>; o_created_at: Date;
    }>(
      `WITH due AS (
         SELECT d.id FROM ${this.t.deliveries} d JOIN ${this.t.webhooks} w ON w.id = d.webhook_id AND w.enabled
         WHERE d.status = 'pending' AND d.next_attempt_at <= clock_timestamp()
           AND (d.leased_until IS NULL OR d.leased_until <= clock_timestamp())
         ORDER BY d.next_attempt_at, d.id LIMIT $1
         FOR UPDATE OF d SKIP LOCKED),
       taken AS (
         UPDATE ${this.t.deliveries} d SET leased_until = clock_timestamp() + $2 * interval '1 millisecond', lease = $3,
           attempts = d.attempts + 1, updated_at = clock_timestamp()
         FROM due WHERE d.id = due.id
         RETURNING d.id, d.webhook_id, d.outbox_id, d.attempts)
       SELECT t.id, t.webhook_id, t.attempts, w.url, w.secret,
              o.id AS o_id, o.type AS o_type, o.account_id AS o_account_id, o.key_id AS o_key_id, o.data AS o_data, o.created_at AS o_created_at
       FROM taken t JOIN ${this.t.webhooks} w ON w.id = t.webhook_id JOIN ${this.t.outbox} o ON o.id = t.outbox_id
       ORDER BY o.id, t.webhook_id`,
      [limit, leaseMs, lease],
    );
    return rows.map((r) => ({
      id: Number(r.id),
      webhook_id: Number(r.webhook_id),
      attempts: Number(r.attempts),
      url: r.url,
      secret: r.secret,
      outbox: { id: Number(r.o_id), type: r.o_type, account_id: r.o_account_id, key_id: r.o_key_id, data: r.o_data, created_at: r.o_created_at },
    }));
  }

  /**
   * Records one attempt and settles the delivery: delivered; or pending again after
   * `retryInMs`; or failed when that retry would come past `retryForMs` after the
   * delivery was made. The attempt is kept even when the lease was lost (then the
   * delivery is left to the deliverer that holds it). Returns the new status, or null.
   */
  async record(a: {
    deliveryId: number; webhookId: number; attempt: number; lease: string; startedAt: Date; status: number | null; error: string | null;
    durationMs: number; delivered: boolean; retryInMs: number; retryForMs: number;
  }): Promise<'pending' | 'delivered' | 'failed' | null> {
    const rows = await this.db.query<{ status: 'pending' | 'delivered' | 'failed' }>(
      `WITH attempt AS (
         INSERT INTO ${this.t.attempts} (delivery_id, webhook_id, attempt, started_at, status, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7))
       UPDATE ${this.t.deliveries} SET
         status = CASE WHEN $8 THEN 'delivered'
                       WHEN clock_timestamp() + $9 * interval '1 millisecond' > created_at + $10 * interval '1 millisecond' THEN 'failed'
                       ELSE 'pending' END,
         next_attempt_at = CASE WHEN $8 THEN next_attempt_at ELSE clock_timestamp() + $9 * interval '1 millisecond' END,
         delivered_at = CASE WHEN $8 THEN clock_timestamp() END,
         leased_until = NULL, lease = NULL, last_status = $5, last_error = $6, updated_at = clock_timestamp()
       WHERE id = $1 AND lease = $11 AND status = 'pending'
       RETURNING status`,
      [a.deliveryId, a.webhookId, a.attempt, a.startedAt, a.status, a.error, Math.round(a.durationMs), a.delivered, a.retryInMs, a.retryForMs, a.lease],
    );
    return rows[0]?.status ?? null;
  }

  // key.expired.

  /**
   * Writes a `key.expired` outbox row for up to `limit` keys whose expiry has passed (not
   * revoked), once per key and expiry: the outbox's dedupe name is the key's id and its
   * expiry, so sweepers racing each other write each once. A cursor in the settings table
   * (the expiry up to which all were swept, less a minute looked at again) bounds the scan.
   * Returns how many it wrote.
   */
  async sweepExpired(limit: number): Promise<number> {
    const dedupe = `'key.expired:' || k.id || ':' || floor(extract(epoch FROM k.expires_at) * 1000000)::bigint`;
    return this.db.transaction(async (tx) => {
      const [r] = await tx.query<{ emitted: number }>(
        `WITH cur AS (
           SELECT COALESCE((SELECT (value->>'at')::timestamptz FROM ${this.t.settings} WHERE name = $2), '-infinity'::timestamptz) AS at),
         due AS (
           SELECT k.id, k.account_id, k.expires_at, ${dedupe} AS dedupe FROM ${this.t.table} k, cur
           WHERE k.expires_at IS NOT NULL AND k.revoked_at IS NULL AND k.expires_at >= cur.at AND k.expires_at <= now()
             -- With the account: (account_id, dedupe) is the dedupe index on Citus (docs/scaling.md).
             AND NOT EXISTS (SELECT 1 FROM ${this.t.outbox} o
                             WHERE o.account_id = COALESCE(k.account_id::text, '') AND o.key_id = k.id AND o.dedupe = ${dedupe})
           ORDER BY k.expires_at, k.id LIMIT $1),
         written AS (
           INSERT INTO ${this.t.outbox} (type, account_id, key_id, data, dedupe)
           SELECT 'key.expired', COALESCE(due.account_id::text, ''), due.id,
                  jsonb_build_object('key_id', due.id, 'account_id', due.account_id::text,
                                     'expires_at', to_char(due.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
                  due.dedupe
           FROM due ORDER BY due.expires_at, due.id
           -- No conflict target: the dedupe index is (dedupe), or (account_id, dedupe) on Citus.
           ON CONFLICT DO NOTHING RETURNING 1),
         moved AS (
           INSERT INTO ${this.t.settings} (name, value)
           SELECT $2, jsonb_build_object('at', CASE WHEN (SELECT count(*) FROM due) < $1 THEN now() - ${EXPIRY_LOOKBACK}
                                                    ELSE LEAST((SELECT max(expires_at) FROM due), now() - ${EXPIRY_LOOKBACK}) END)
           ON CONFLICT (name) DO UPDATE SET updated_at = now(),
             value = CASE WHEN (${this.t.settings}.value->>'at')::timestamptz < (EXCLUDED.value->>'at')::timestamptz THEN EXCLUDED.value
                          ELSE ${this.t.settings}.value END)
         SELECT (SELECT count(*) FROM written)::int AS emitted`,
        [limit, EXPIRY],
      );
      return Number(r?.emitted ?? 0);
    });
  }
}
