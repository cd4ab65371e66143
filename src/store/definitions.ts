import type { Definition } from './catalog.js';
import type { TableNames } from './identifiers.js';
import { renderSql } from './sql/render.js';
import appendOnly from './sql/functions/append_only.sql';
import centsDown from './sql/functions/cents_down.sql';
import ceilingEvent from './sql/functions/ceiling_event.sql';
import centsUp from './sql/functions/cents_up.sql';
import checkPageValues from './sql/functions/check_page_values.sql';
import eventActor from './sql/functions/event_actor.sql';
import holdExpired from './sql/functions/hold_expired.sql';
import keyEvent from './sql/functions/key_event.sql';
import nextReset from './sql/functions/next_reset.sql';
import notifyAll from './sql/functions/notify_all.sql';
import notifyChange from './sql/functions/notify_change.sql';
import periodEnd from './sql/functions/period_end.sql';
import periodStart from './sql/functions/period_start.sql';
import settle from './sql/functions/settle.sql';
import spend from './sql/functions/spend.sql';
import spendMany from './sql/functions/spend_many.sql';
import sync from './sql/functions/sync.sql';
import rateTake from './sql/functions/rate_take.sql';
import appendOnlyTrigger from './sql/triggers/append_only.sql';
import ceilingChangedTrigger from './sql/triggers/ceiling_changed.sql';
import ceilingEventTrigger from './sql/triggers/ceiling_event.sql';
import changedTrigger from './sql/triggers/changed.sql';
import deletedTrigger from './sql/triggers/deleted.sql';
import eventsAppendOnlyTrigger from './sql/triggers/events_append_only.sql';
import outboxAppendOnlyTrigger from './sql/triggers/outbox_append_only.sql';
import windowsChangedTrigger from './sql/triggers/windows_changed.sql';
import holdExpiredTrigger from './sql/triggers/hold_expired.sql';
import outboxNotifyTrigger from './sql/triggers/outbox_notify.sql';
import keyEventTrigger from './sql/triggers/key_event.sql';
import syncTrigger from './sql/triggers/sync.sql';
import syncInsertTrigger from './sql/triggers/sync_insert.sql';
import accountLimitsChangedTrigger from './sql/triggers/account_limits_changed.sql';

/**
 * Agentkey's live definitions: each function and trigger is one file under sql/, made
 * again by every migrate() whose text differs from the database's (applyDefinitions in
 * catalog.ts), so the text in the file is the one that runs.
 */

interface FunctionFile {
  sql: string;
  /** `name(argtypes)` as to_regprocedure reads it, with the files' placeholders. */
  signature: string;
  /** Earlier signatures, dropped when it is made (an overload left behind could make calls ambiguous). */
  replaces?: readonly string[];
}

/** In the order they are made: a LANGUAGE sql function needs those it calls. */
const FUNCTIONS: readonly FunctionFile[] = [
  { sql: nextReset, signature: '{{schema}}agentkey_next_reset(text, timestamptz, timestamptz)' },
  { sql: centsUp, signature: '{{schema}}agentkey_cents_up(bigint)' },
  { sql: centsDown, signature: '{{schema}}agentkey_cents_down(bigint)' },
  { sql: checkPageValues, signature: '{{schema}}agentkey_check_page_values(text, numeric, numeric)' },
  { sql: sync, signature: '{{sync}}()' },
  { sql: appendOnly, signature: '{{schema}}agentkey_append_only()' },
  { sql: periodStart, signature: '{{schema}}agentkey_period_start(text, timestamptz)' },
  { sql: periodEnd, signature: '{{schema}}agentkey_period_end(text, timestamptz)' },
  { sql: notifyChange, signature: '{{schema}}agentkey_notify_change()' },
  { sql: notifyAll, signature: '{{schema}}agentkey_notify_all()' },
  { sql: eventActor, signature: '{{schema}}agentkey_event_actor()' },
  { sql: keyEvent, signature: '{{key_event}}()' },
  { sql: ceilingEvent, signature: '{{ceiling_event}}()' },
  { sql: holdExpired, signature: '{{hold_expired}}()' },
  {
    sql: spendMany,
    signature: '{{spend_many}}(text, text[], text[], bigint[], text[], integer[], text[], bigint[], text[], jsonb[], text[], bigint[], integer, jsonb[])',
    // Earlier forms, without the account (and before that without p_wait_ms and p_usage):
    // dropped when this one is made. A process of an older version then fails its steps with
    // a storage error, having written nothing, until it is upgraded too.
    replaces: [
      '{{spend_many}}(text[], text[], bigint[], text[], integer[], text[], bigint[], text[], jsonb[], text[], bigint[])',
      '{{spend_many}}(text[], text[], bigint[], text[], integer[], text[], bigint[], text[], jsonb[], text[], bigint[], integer)',
      '{{spend_many}}(text[], text[], bigint[], text[], integer[], text[], bigint[], text[], jsonb[], text[], bigint[], integer, jsonb[])',
    ],
  },
  {
    sql: spend,
    signature: '{{spend}}(text, text, text, bigint, text, bigint, text, jsonb, text, bigint)',
    replaces: ['{{spend}}(text, text, bigint, text, bigint, text, jsonb, text, bigint)'],
  },
  { sql: settle, signature: '{{settle}}(text, text, text, bigint, jsonb)', replaces: ['{{settle}}(text, text, bigint, jsonb)'] },
  {
    sql: rateTake,
    signature: '{{rate_take}}(text, integer[], text[], text[], integer[], integer[])',
    // Before the account: dropped (an older process's exact-mode validation then fails with a storage error).
    replaces: ['{{rate_take}}(integer[], text[], integer[], integer[])'],
  },
];

interface TriggerFile {
  sql: string;
  name: string;
  /** The table it is on, as a placeholder. */
  on: string;
}

/** Made after every function, in this order. */
const TRIGGERS: readonly TriggerFile[] = [
  { sql: appendOnlyTrigger, name: 'agentkey_append_only', on: '{{ledger}}' },
  { sql: changedTrigger, name: 'agentkey_changed', on: '{{table}}' },
  { sql: deletedTrigger, name: 'agentkey_deleted', on: '{{table}}' },
  { sql: ceilingChangedTrigger, name: 'agentkey_ceiling_changed', on: '{{accounts}}' },
  { sql: syncInsertTrigger, name: 'agentkey_sync_insert', on: '{{table}}' },
  { sql: syncTrigger, name: 'agentkey_sync', on: '{{table}}' },
  { sql: keyEventTrigger, name: 'agentkey_key_event', on: '{{table}}' },
  { sql: ceilingEventTrigger, name: 'agentkey_ceiling_event', on: '{{accounts}}' },
  { sql: eventsAppendOnlyTrigger, name: 'agentkey_events_append_only', on: '{{events}}' },
  { sql: outboxAppendOnlyTrigger, name: 'agentkey_outbox_append_only', on: '{{outbox}}' },
  { sql: windowsChangedTrigger, name: 'agentkey_windows_changed', on: '{{windows}}' },
  { sql: holdExpiredTrigger, name: 'agentkey_hold_expired', on: '{{holds}}' },
  { sql: outboxNotifyTrigger, name: 'agentkey_outbox_notify', on: '{{outbox}}' },
  { sql: accountLimitsChangedTrigger, name: 'agentkey_account_limits_changed', on: '{{account_limits}}' },
];

/** Every function of table `t`, rendered. */
export function functionDefinitions(t: TableNames): Definition[] {
  return FUNCTIONS.map((f) => ({
    kind: 'function',
    signature: renderSql(f.signature, t),
    sql: renderSql(f.sql, t),
    ...(f.replaces ? { replaces: f.replaces.map((r) => renderSql(r, t)) } : {}),
  }));
}

/** Every trigger of table `t`, rendered. */
export function triggerDefinitions(t: TableNames): Definition[] {
  return TRIGGERS.map((d) => ({ kind: 'trigger', name: d.name, table: renderSql(d.on, t), sql: renderSql(d.sql, t) }));
}
