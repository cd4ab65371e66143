// How rows and outcomes of the store look to callers: figures in cents, times as ISO strings.
import { type Micros, microsToCents, microsToCentsNumber, roomMicros, toMicros } from './money.js';
import type { AccountRow } from './store/accounts.js';
import type { EventRow } from './store/events.js';
import type { KeyRow } from './store/keys.js';
import type { SpendOutcome } from './store/spend.js';
import { type BudgetPeriod, formatPer } from './time.js';
import type { WindowRow } from './store/windows.js';
import type { AccountBudget, BudgetWindow, KeyEvent, KeyInfo, RateLimit, SpendFigures } from './types.js';
import type { WindowPeriod } from './windows.js';

export function iso(date: Date | string | null | undefined): string | null {
  return date == null ? null : new Date(date).toISOString();
}

/** What a budget leaves, never below 0: a number (it is at most the budget). */
export function remaining(budget: number | null, spent: Micros, held: Micros): number | null {
  return budget === null ? null : microsToCentsNumber(Math.max(0, roomMicros(budget, spent, held)));
}

/** What a key's budget stands at after a step: spent, and what is left of it (null when it has none). */
export function figures(out: SpendOutcome): SpendFigures {
  const spent = out.spent ?? 0;
  return {
    budgetUsedCents: microsToCentsNumber(spent),
    budgetRemainingCents: least(remaining(out.budget ?? null, spent, out.held ?? 0), out.window_room == null ? null : remainingOf(out.window_room)),
  };
}

/** A room (micros, may be negative) as what it leaves in cents, never below 0. */
function remainingOf(room: number): number {
  return microsToCentsNumber(Math.max(0, room));
}

function least(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.min(a, b);
}

/**
 * Every window of a key or account, its first (in the package's columns or the ceiling row)
 * first, then the others day, week, month, lifetime; with what each leaves after `held`.
 */
function windowsOf(
  first: { budget: number | null; period: string | null; spent: Micros; start: Date | string | null; reset: Date | string | null },
  others: WindowRow[] | null,
  held: Micros,
): BudgetWindow[] {
  const out: BudgetWindow[] = [];
  if (first.budget !== null) {
    out.push({
      period: (first.period ?? 'lifetime') as WindowPeriod,
      cents: microsToCentsNumber(first.budget),
      spentCents: microsToCents(first.spent),
      remainingCents: remaining(first.budget, first.spent, held) as number,
      periodStartAt: iso(first.start),
      resetAt: first.period === null ? null : iso(first.reset),
    });
  }
  for (const w of others ?? []) {
    const budget = Number(w.budget_micros);
    const spent = toMicros(w.spent_micros);
    out.push({
      period: w.period,
      cents: microsToCentsNumber(budget),
      spentCents: microsToCents(spent),
      remainingCents: remaining(budget, spent, held) as number,
      periodStartAt: iso(w.period_start_at),
      resetAt: iso(w.reset_at),
    });
  }
  return out;
}

/** The least any window leaves (null: no window). */
function leastRemaining(windows: BudgetWindow[]): number | null {
  return windows.reduce<number | null>((m, w) => least(m, w.remainingCents), null);
}

export function toKeyInfo(row: KeyRow): KeyInfo {
  const budgets = windowsOf(
    { budget: row.budget_micros, period: row.budget_period, spent: row.spent_micros, start: null, reset: row.budget_reset_at },
    row.windows,
    row.held_micros,
  );
  return {
    id: row.id,
    accountId: row.account_id,
    name: row.name,
    prefix: row.key_prefix,
    scopes: row.scopes,
    status: row.status,
    parentId: row.parent_id,
    depth: row.depth,
    budgetCents: row.budget_micros === null ? null : microsToCentsNumber(row.budget_micros),
    spentCents: microsToCents(row.spent_micros),
    heldCents: microsToCents(row.held_micros),
    remainingCents: leastRemaining(budgets),
    overageCents: microsToCents(row.overage_micros),
    budgetPeriod: row.budget_period as BudgetPeriod | null,
    budgetResetAt: iso(row.budget_reset_at),
    expiresAt: iso(row.expires_at),
    revokedAt: iso(row.revoked_at),
    createdAt: iso(row.created_at),
    lastUsedAt: iso(row.last_used_at),
    delegatedBy: row.delegated_by,
    externalSubject: row.external_subject,
    metadata: row.metadata ?? null,
    budgets,
    alerts: row.alert_percents ?? null,
    rateLimit: rateLimitView(row.rate_limit_requests, row.rate_limit_per_s),
    concurrency: row.concurrency_limit === null || row.concurrency_limit === undefined ? null : Number(row.concurrency_limit),
  };
}

export function toAccountBudget(row: AccountRow): AccountBudget {
  const budgets = windowsOf(
    { budget: row.budget_micros, period: row.budget_period, spent: row.spent_micros, start: row.period_start_at, reset: row.budget_reset_at },
    row.windows,
    row.held_micros,
  );
  return {
    accountId: row.account_id,
    budgetCents: microsToCentsNumber(row.budget_micros),
    budgetPeriod: row.budget_period,
    spentCents: microsToCents(row.spent_micros),
    heldCents: microsToCents(row.held_micros),
    remainingCents: leastRemaining(budgets) as number,
    periodStartAt: iso(row.period_start_at),
    budgetResetAt: iso(row.budget_reset_at),
    budgets,
    alerts: row.alert_percents ?? null,
  };
}

/** The event log's column names (sql/functions/key_event.sql) in `KeyInfo`'s names. */
const EVENT_FIELDS: Record<string, string> = {
  name: 'name',
  scopes: 'scopes',
  budget_micros: 'budgetCents',
  budget_period: 'budgetPeriod',
  expires_at: 'expiresAt',
  delegated_by: 'delegatedBy',
  user_id: 'userId',
  account_id: 'accountId',
  revoked_at: 'revokedAt',
  parent_id: 'parentId',
  previous_key_valid_until: 'previousKeyValidUntil',
  key_metadata: 'metadata',
  amount_micros: 'costCents',
  reason: 'reason',
};

/**
 * A value of the event log as `KeyInfo` shows it: micro-dollars (text) as cents, times as
 * ISO. A value that is not what agentkey writes there (a row inserted by SQL can hold
 * anything) is passed on as it is, never an error that would hide the rest of the log.
 */
function eventValue(field: string, value: unknown): unknown {
  if (value === null || value === undefined) return value;
  try {
    if (field === 'budget_micros' || field === 'amount_micros') return microsToCents(toMicros(value));
    if ((field.endsWith('_at') || field.endsWith('_until')) && typeof value === 'string') return iso(value);
  } catch {
    return value;
  }
  return value;
}

export function toKeyEvent(row: EventRow): KeyEvent {
  const raw: Record<string, unknown> = row.changes !== null && typeof row.changes === 'object' && !Array.isArray(row.changes) ? row.changes : {};
  // fromEntries, not assignment: a field named __proto__ (SQL can write one) stays a field.
  const changes: KeyEvent['changes'] = Object.fromEntries(
    Object.entries(raw).map(([field, change]) => {
      const name = Object.hasOwn(EVENT_FIELDS, field) ? (EVENT_FIELDS[field] as string) : field;
      if (change === null || typeof change !== 'object' || Array.isArray(change)) return [name, { after: change }];
      const c = change as { before?: unknown; after?: unknown };
      return [name, { ...('before' in c ? { before: eventValue(field, c.before) } : {}), ...('after' in c ? { after: eventValue(field, c.after) } : {}) }];
    }),
  );
  return {
    id: Number(row.id),
    keyId: row.key_id === null ? null : Number(row.key_id),
    accountId: String(row.account_id),
    kind: row.kind,
    actor: row.actor,
    actorKeyId: row.actor_key_id === null ? null : Number(row.actor_key_id),
    changes,
    at: iso(row.created_at) as string,
  };
}

/** A rate limit as the API shows it, from its two columns (null when either is). */
export function rateLimitView(requests: number | string | null | undefined, perSeconds: number | string | null | undefined): RateLimit | null {
  if (requests === null || requests === undefined || perSeconds === null || perSeconds === undefined) return null;
  return { requests: Number(requests), per: formatPer(Number(perSeconds)) };
}
