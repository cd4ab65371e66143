// Budget windows: what `budgets: [...]` and `alerts: [...]` mean, checked, before any SQL.
// A key's or account's first window stays where the package keeps its one budget (a key's
// page columns, an account's ceiling row); the others are rows of the windows table.
import { AgentKeyError } from './errors.js';
import { type CentsInput, budgetToMicros, describe } from './money.js';
import type { BudgetPeriod } from './time.js';

/** How long a window runs before it starts again, on its UTC boundary ('lifetime': never). */
export type WindowPeriod = 'day' | 'week' | 'month' | 'lifetime';
export const WINDOW_PERIODS: readonly WindowPeriod[] = ['day', 'week', 'month', 'lifetime'];

/** One window as callers give it: cents, and a period (omitted or null: lifetime). */
export interface BudgetWindowInput {
  cents: CentsInput;
  period?: WindowPeriod | null;
}

export interface WindowSpec {
  period: WindowPeriod;
  micros: number;
}

/** The windows of a key or account: the first (null when none fits where it goes) and the others. */
export interface WindowPlan {
  first: WindowSpec | null;
  others: WindowSpec[];
}

/** Most windows a key or account may have: one per period. */
export const MAX_WINDOWS = WINDOW_PERIODS.length;

/**
 * Checks `budgets` (at most 4 windows, each period at most once; [] for none) and splits it: the first window
 * whose period `fitsFirst` takes goes where the single budget lives, the rest are windows.
 * A key's first place (the package's columns) takes day, month or lifetime; an account's any.
 *
 * @example planWindows([{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }], keyFirst)
 *   // { first: { period: 'day', micros: 10000000 }, others: [{ period: 'month', micros: 100000000 }] }
 */
export function planWindows(value: unknown, fitsFirst: (p: WindowPeriod) => boolean, field = 'budgets'): WindowPlan {
  if (!Array.isArray(value) || value.length > MAX_WINDOWS) {
    throw new AgentKeyError(
      'invalid_budget',
      `${field} must be a list of at most ${MAX_WINDOWS} windows such as [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }] ([] for no budget); got ${Array.isArray(value) ? `${value.length} windows` : describe(value)}.`,
    );
  }
  const specs = value.map((w, i) => windowSpec(w, `${field}[${i}]`));
  const seen = new Set<WindowPeriod>();
  for (const s of specs) {
    if (seen.has(s.period)) throw new AgentKeyError('invalid_budget', `${field} has two ${s.period} windows; give each period at most once.`);
    seen.add(s.period);
  }
  const at = specs.findIndex((s) => fitsFirst(s.period));
  return at < 0 ? { first: null, others: specs } : { first: specs[at] as WindowSpec, others: specs.filter((_, i) => i !== at) };
}

/** A key's first window lives in the package's columns, which know day, month and none. */
export const keyFirst = (p: WindowPeriod): boolean => p !== 'week';
export const accountFirst = (): boolean => true;

/** The package's budget_period for a window period ('lifetime': none). */
export function pagePeriod(p: WindowPeriod): BudgetPeriod | null {
  return p === 'lifetime' ? null : (p as BudgetPeriod);
}

function windowSpec(value: unknown, field: string): WindowSpec {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new AgentKeyError('invalid_budget', `${field} must be an object such as { cents: 1000, period: 'day' }; got ${describe(value)}.`);
  }
  const w = value as Record<string, unknown>;
  const extra = Object.keys(w).filter((k) => k !== 'cents' && k !== 'period');
  if (extra.length > 0) throw new AgentKeyError('invalid_budget', `${field} has an unknown field ${JSON.stringify(extra[0])}; a window has cents and period.`);
  const micros = budgetToMicros(w.cents, `${field}.cents`);
  if (micros === null) throw new AgentKeyError('invalid_budget', `${field}.cents is required: a window without a cap limits nothing.`);
  const period = w.period ?? 'lifetime';
  if (typeof period !== 'string' || !(WINDOW_PERIODS as readonly string[]).includes(period)) {
    throw new AgentKeyError('invalid_period', `Invalid budget period: ${describe(w.period)} (${field}.period must be 'day', 'week', 'month', 'lifetime' or null).`);
  }
  return { period: period as WindowPeriod, micros };
}

/**
 * Alert percents: whole numbers from 1 to 100, at most 10, each once, sorted; null for none
 * of its own (the table's apply). An empty list turns alerts off for that key or account.
 */
export function parseAlerts(value: unknown, field = 'alerts'): number[] | null {
  if (value === null || value === undefined) return null;
  const bad = Array.isArray(value) ? value.find((p) => !(Number.isInteger(p) && p >= 1 && p <= 100)) : undefined;
  if (!Array.isArray(value) || value.length > 10 || bad !== undefined) {
    const got = !Array.isArray(value) ? describe(value) : value.length > 10 ? `${value.length} percents` : describe(bad);
    throw new AgentKeyError(
      'invalid_argument',
      `${field} must be a list of at most 10 whole percents from 1 to 100, such as [50, 80, 100], or null; got ${got}.`,
    );
  }
  return [...new Set(value as number[])].sort((a, b) => a - b);
}
