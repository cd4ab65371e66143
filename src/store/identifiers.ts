import { createHash } from 'node:crypto';
import { AgentKeyError } from '../errors.js';
import { describe } from '../money.js';

const PART = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** A checked, quoted table name and the names of everything agentkey keeps beside it. */
export interface TableNames {
  /** The table as given, e.g. 'billing.sdk_api_keys'. */
  name: string;
  /** Quoted for SQL, e.g. "billing"."sdk_api_keys". */
  table: string;
  /** Quoted schema prefix with its dot, or '' for the search path. */
  schema: string;
  /**
   * Base for index names (to be quoted): the table part, or for a long one its start and a
   * hash of the whole, so it fits PostgreSQL's 63-byte limit and no two tables share one.
   */
  indexBase: string;
  /** The period function and the migrations table, in the same schema as the keys table. */
  nextReset: string;
  /**
   * Micro-dollars to the whole cents the package's INTEGER columns show: spend rounded up,
   * budgets rounded down (so SQL over those columns never sees more room than there is).
   */
  centsUp: string;
  centsDown: string;
  migrations: string;
  /** The append-only usage ledger and the holds (reservations) table. */
  ledger: string;
  holds: string;
  /** Account ceilings. */
  accounts: string;
  /** The append-only log of changes to keys and ceilings (who did what), and the trigger function that writes it. */
  events: string;
  /** Budget windows past a key's or account's first; the outbox of events for webhooks; the table-wide settings. */
  windows: string;
  outbox: string;
  settings: string;
  /** Webhooks: the endpoints, one delivery per outbox event and matching endpoint, and every attempt of one. */
  webhooks: string;
  deliveries: string;
  attempts: string;
  /** Rate limits: an account's request and concurrency limits, and the exact mode's counters (one row per limit and window). */
  accountLimits: string;
  rateWindows: string;
  /** The exact mode's function that takes one request from each limit of a batch of requests. */
  rateTakeFn: string;
  eventFn: string;
  /** The trigger function that writes a 'hold.expired' event to the outbox. */
  holdExpiredFn: string;
  ceilingEventFn: string;
  /** The per-table PL/pgSQL functions that spend and settle. */
  spendFn: string;
  settleFn: string;
  /** The batch form of the spend function: many charges and holds in one atomic statement. */
  spendManyFn: string;
  /** The trigger function that keeps agentkey's exact columns in step with SQL edits of the package's columns. */
  syncFn: string;
  /** Rows set aside from side tables whose keys table was dropped (made only when needed). */
  orphans: string;
  /**
   * The LISTEN/NOTIFY channel on which changes to keys (revoked, expiry, scopes, budget...)
   * are announced, so every process drops them from its cache. Named from the table part
   * only, so 'keys' and 'public.keys' share it (a shared channel only costs extra misses).
   */
  channel: string;
  /** The channel on which every insert into the outbox is announced (once per statement), so deliverers and `onEvent()` wake at once. */
  outboxChannel: string;
}

/**
 * Checks `tableName` as an SQL identifier, optionally schema-qualified, before any
 * SQL is built from it. Throws `invalid_table_name` otherwise.
 *
 * @example tableNames('sdk_api_keys').table // '"sdk_api_keys"'
 */
export function tableNames(name: unknown): TableNames {
  const parts = typeof name === 'string' ? name.split('.') : [];
  if (parts.length < 1 || parts.length > 2 || !parts.every((p) => PART.test(p))) {
    throw new AgentKeyError(
      'invalid_table_name',
      `tableName must be an SQL identifier (letters, digits, underscores; optionally schema.table); got ${describe(name)}.`,
    );
  }
  const quoted = parts.map((p) => `"${p}"`);
  const schema = quoted.length === 2 ? `${quoted[0]}.` : '';
  const tablePart = parts[parts.length - 1] as string;
  const indexBase =
    tablePart.length <= 40 ? tablePart : `${tablePart.slice(0, 31)}_${createHash('sha256').update(tablePart).digest('hex').slice(0, 8)}`;
  const beside = (suffix: string) => `${schema}"${indexBase}_${suffix}"`;
  return {
    name: name as string,
    table: quoted.join('.'),
    schema,
    indexBase,
    nextReset: `${schema}agentkey_next_reset`,
    centsUp: `${schema}agentkey_cents_up`,
    centsDown: `${schema}agentkey_cents_down`,
    migrations: `${schema}agentkey_migrations`,
    ledger: beside('ledger'),
    holds: beside('holds'),
    accounts: beside('accounts'),
    events: beside('events'),
    windows: beside('windows'),
    outbox: beside('outbox'),
    settings: beside('settings'),
    webhooks: beside('webhooks'),
    deliveries: beside('webhook_deliveries'),
    attempts: beside('webhook_attempts'),
    accountLimits: beside('account_limits'),
    rateWindows: beside('rate_windows'),
    rateTakeFn: beside('rate_take'),
    eventFn: beside('key_event'),
    holdExpiredFn: beside('hold_expired'),
    ceilingEventFn: beside('ceiling_event'),
    spendFn: beside('spend'),
    settleFn: beside('settle'),
    spendManyFn: beside('spend_many'),
    syncFn: beside('sync'),
    orphans: beside('orphans'),
    channel: `agentkey_${createHash('sha256').update(tablePart).digest('hex').slice(0, 24)}`,
    outboxChannel: `agentkey_outbox_${createHash('sha256').update(tablePart).digest('hex').slice(0, 24)}`,
  };
}
