import type { IndexSpec } from './catalog.js';
import type { TableNames } from './identifiers.js';

/**
 * Every index agentkey keeps, made by migrate() where the table has none that indexes the
 * same (found by what they index, not by name: see ensureIndexes in catalog.ts).
 * `definition` is what follows `ON table` as pg_get_indexdef prints it.
 */
export function indexes(t: TableNames): IndexSpec[] {
  const i = t.indexBase;
  const held = "WHERE (status = 'held'::text)";
  return [
    // The keys table.
    { table: t.table, name: `${i}_key_hash_uidx`, unique: true, definition: 'USING btree (key_hash)' },
    { table: t.table, name: `${i}_subject_uidx`, unique: true, definition: 'USING btree (external_subject) WHERE (external_subject IS NOT NULL)' },
    { table: t.table, name: `${i}_account_idx`, definition: 'USING btree (account_id)' },
    // The ledger and the holds.
    {
      table: t.ledger,
      name: `${i}_ledger_idem_uidx`,
      unique: true,
      definition: "USING btree (key_id, idempotency_key) WHERE ((idempotency_key IS NOT NULL) AND (kind = 'charge'::text))",
    },
    { table: t.ledger, name: `${i}_ledger_key_idx`, definition: 'USING btree (key_id, created_at)' },
    { table: t.ledger, name: `${i}_ledger_account_idx`, definition: 'USING btree (account_id, created_at)' },
    // The ledger only grows, in time order: a BRIN index serves time ranges at a fraction of
    // a B-tree's cost on every insert.
    { table: t.ledger, name: `${i}_ledger_time_brin`, definition: 'USING brin (created_at)' },
    {
      table: t.holds,
      name: `${i}_holds_idem_uidx`,
      unique: true,
      definition: 'USING btree (key_id, idempotency_key) WHERE (idempotency_key IS NOT NULL)',
    },
    { table: t.holds, name: `${i}_holds_live_idx`, definition: `USING btree (key_id, expires_at) ${held}` },
    { table: t.holds, name: `${i}_holds_expiry_idx`, definition: `USING btree (expires_at) ${held}` },
    // Delegation trees and account ceilings.
    { table: t.table, name: `${i}_parent_idx`, definition: 'USING btree (parent_id) WHERE (parent_id IS NOT NULL)' },
    { table: t.table, name: `${i}_ancestors_idx`, definition: 'USING gin (ancestor_ids)' },
    { table: t.holds, name: `${i}_holds_path_idx`, definition: `USING gin (path) ${held}` },
    { table: t.holds, name: `${i}_holds_account_idx`, definition: `USING btree (account_id, expires_at) ${held}` },
    // Rotation: a previous secret is looked up only while it may still work.
    {
      table: t.table,
      name: `${i}_previous_hash_idx`,
      definition: 'USING btree (previous_key_hash) WHERE (previous_key_hash IS NOT NULL)',
    },
    // The event log, read newest first by key or by account.
    { table: t.events, name: `${i}_events_key_idx`, definition: 'USING btree (key_id, id)' },
    { table: t.events, name: `${i}_events_account_idx`, definition: 'USING btree (account_id, id)' },
    // Budget windows: one per period for a key (or, key_id NULL, an account), read by owner.
    { table: t.windows, name: `${i}_windows_owner_uidx`, unique: true, definition: 'USING btree (account_id, COALESCE(key_id, (0)::bigint), period)' },
    { table: t.windows, name: `${i}_windows_key_idx`, definition: 'USING btree (key_id) WHERE (key_id IS NOT NULL)' },
    // The outbox: an event with a dedupe name is written once only; read in id order.
    { table: t.outbox, name: `${i}_outbox_dedupe_uidx`, unique: true, definition: 'USING btree (dedupe) WHERE (dedupe IS NOT NULL)' },
    { table: t.outbox, name: `${i}_outbox_account_idx`, definition: 'USING btree (account_id, id)' },
    // Webhooks: the outbox read in commit-safe order (by writing transaction, then id); one
    // delivery per event and endpoint; the due deliveries; an endpoint's deliveries newest
    // first; a delivery's attempts; keys by expiry for the key.expired sweep.
    { table: t.outbox, name: `${i}_outbox_xact_idx`, definition: 'USING btree (xact, id)' },
    { table: t.deliveries, name: `${i}_deliveries_uidx`, unique: true, definition: 'USING btree (outbox_id, webhook_id)' },
    { table: t.deliveries, name: `${i}_deliveries_due_idx`, definition: "USING btree (next_attempt_at) WHERE (status = 'pending'::text)" },
    { table: t.deliveries, name: `${i}_deliveries_webhook_idx`, definition: 'USING btree (webhook_id, id)' },
    { table: t.attempts, name: `${i}_attempts_delivery_idx`, definition: 'USING btree (delivery_id, id)' },
    { table: t.table, name: `${i}_expiry_idx`, definition: 'USING btree (expires_at) WHERE ((expires_at IS NOT NULL) AND (revoked_at IS NULL))' },
  ];
}
