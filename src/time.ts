import { AgentKeyError } from './errors.js';
import { describe } from './money.js';

export type DurationUnit = 's' | 'm' | 'h' | 'd' | 'w' | 'mo';
export interface Duration {
  amount: number;
  unit: DurationUnit;
}

export type BudgetPeriod = 'day' | 'month';
export const BUDGET_PERIODS: readonly BudgetPeriod[] = ['day', 'month'];

const UNIT_MS: Record<Exclude<DurationUnit, 'mo'>, number> = {
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Longest duration accepted anywhere: 100 years. */
const MAX_MS = 100 * 366 * 86_400_000;

/**
 * Parses '30s', '30m' (minutes), '1h', '7d', '2w', '1mo'. Throws `invalid_duration`
 * for anything else, including zero and durations longer than 100 years.
 *
 * @example parseDuration('7d') // { amount: 7, unit: 'd' }
 */
export function parseDuration(value: unknown, field = 'expiresIn'): Duration {
  const match = typeof value === 'string' ? /^([1-9][0-9]{0,6})(mo|s|m|h|d|w)$/.exec(value.trim()) : null;
  if (!match) {
    throw new AgentKeyError(
      'invalid_duration',
      `${field} must be a positive whole number followed by s, m (minutes), h, d, w or mo, such as '30m' or '7d'; got ${describe(value)}.`,
    );
  }
  const duration = { amount: Number(match[1]), unit: match[2] as DurationUnit };
  const approxMs = duration.unit === 'mo' ? duration.amount * 31 * 86_400_000 : duration.amount * UNIT_MS[duration.unit];
  if (approxMs > MAX_MS) {
    throw new AgentKeyError('invalid_duration', `${field} must be at most 100 years; got ${describe(value)}.`);
  }
  return duration;
}

/** A duration in milliseconds, for short fixed spans (no months): hold ttls. */
export function durationMs(value: unknown, field: string, maxMs: number): number {
  const d = parseDuration(value, field);
  const ms = d.unit === 'mo' ? Infinity : d.amount * UNIT_MS[d.unit];
  if (ms > maxMs) {
    throw new AgentKeyError('invalid_duration', `${field} must be at most ${maxMs / 3_600_000}h; got ${describe(value)}.`);
  }
  return ms;
}

/**
 * Adds a duration to an instant. Months are calendar months in UTC, clamped to the
 * last day of a shorter month (Jan 31 + 1mo = Feb 28/29).
 */
export function addDuration(from: Date, duration: Duration): Date {
  if (duration.unit !== 'mo') return new Date(from.getTime() + duration.amount * UNIT_MS[duration.unit]);
  return addUtcMonths(from, duration.amount);
}

export function addUtcMonths(from: Date, months: number): Date {
  const year = from.getUTCFullYear();
  const month = from.getUTCMonth() + months;
  const lastDay = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  const day = Math.min(from.getUTCDate(), lastDay);
  return new Date(
    Date.UTC(year, month, day, from.getUTCHours(), from.getUTCMinutes(), from.getUTCSeconds(), from.getUTCMilliseconds()),
  );
}

/** Checks a budgetPeriod option: 'day', 'month' or null. Throws `invalid_period` otherwise. */
export function parsePeriod(value: unknown, field = 'budgetPeriod'): BudgetPeriod | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string' && (BUDGET_PERIODS as readonly string[]).includes(value)) return value as BudgetPeriod;
  throw new AgentKeyError('invalid_period', `${field} must be 'day', 'month' or null; got ${describe(value)}.`);
}

/** Parses an absolute expiry given as a Date or an ISO-8601 string. */
export function parseInstant(value: unknown, field: string): Date {
  const date = value instanceof Date ? value : typeof value === 'string' && value.length <= 64 ? new Date(value) : null;
  if (!date || Number.isNaN(date.getTime())) {
    throw new AgentKeyError('invalid_argument', `${field} must be a Date or an ISO-8601 timestamp; got ${describe(value)}.`);
  }
  return date;
}
