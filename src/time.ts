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
 * Parses '30s', '30m' (minutes), '1h', '7d', '2w', '1mo'. Zero ('0h') is a duration too:
 * a key given it expires at once, as in the package. Throws `invalid_duration` with the
 * package's message, `Invalid duration: <input>`, for anything else, including durations
 * longer than 100 years.
 *
 * @example parseDuration('7d') // { amount: 7, unit: 'd' }
 */
export function parseDuration(value: unknown, field = 'expiresIn'): Duration {
  const match = typeof value === 'string' ? /^(0|[1-9][0-9]{0,6})(mo|s|m|h|d|w)$/.exec(value.trim()) : null;
  if (!match) {
    throw new AgentKeyError(
      'invalid_duration',
      `Invalid duration: ${shown(value)} (${field} must be a whole number followed by s, m (minutes), h, d, w or mo, such as '30m' or '7d').`,
    );
  }
  const duration = { amount: Number(match[1]), unit: match[2] as DurationUnit };
  const approxMs = duration.unit === 'mo' ? duration.amount * 31 * 86_400_000 : duration.amount * UNIT_MS[duration.unit];
  if (approxMs > MAX_MS) {
    throw new AgentKeyError('invalid_duration', `Invalid duration: ${shown(value)} (${field} must be at most 100 years).`);
  }
  return duration;
}

/**
 * The instant a duration from now ends, or null for no duration (null, undefined or '').
 * The package's helper; months are calendar months in UTC.
 *
 * @example expiryFromDuration('7d') // a Date seven days from now
 */
export function expiryFromDuration(dur: string | null | undefined, from: Date = new Date()): Date | null {
  if (dur === null || dur === undefined || dur === '') return null;
  return addDuration(from, parseDuration(dur, 'the duration'));
}

/** A duration in milliseconds, for short fixed spans (no months): hold ttls. Zero is refused. */
export function durationMs(value: unknown, field: string, maxMs: number): number {
  const d = parseDuration(value, field);
  const ms = d.unit === 'mo' ? Infinity : d.amount * UNIT_MS[d.unit];
  if (ms === 0) {
    throw new AgentKeyError('invalid_duration', `Invalid duration: ${shown(value)} (${field} must be longer than zero).`);
  }
  if (ms > maxMs) {
    throw new AgentKeyError('invalid_duration', `Invalid duration: ${shown(value)} (${field} must be at most ${maxMs / 3_600_000}h).`);
  }
  return ms;
}

/** The longest window of a rate limit: a day. */
export const MAX_RATE_PER_S = 86_400;

/**
 * The `per` of a rate limit: '1s' to '1d' ('30s', '1m', '15m', '1h', '24h'), in whole
 * seconds. Throws `invalid_rate_limit` naming the field otherwise.
 *
 * @example ratePerSeconds('1m') // 60
 */
export function ratePerSeconds(value: unknown, field = 'rateLimit.per'): number {
  const match = typeof value === 'string' ? /^([1-9][0-9]{0,5})(s|m|h|d)$/.exec(value.trim()) : null;
  const seconds = match ? (Number(match[1]) * UNIT_MS[match[2] as 's' | 'm' | 'h' | 'd']) / 1_000 : NaN;
  if (!(seconds >= 1 && seconds <= MAX_RATE_PER_S)) {
    throw new AgentKeyError(
      'invalid_rate_limit',
      `${field} must be a window from '1s' to '1d': a whole number followed by s, m (minutes), h or d, such as '1m'; got ${shown(value)}.`,
    );
  }
  return seconds;
}

/** A rate limit's window as `per` reads best: '1d', '2h', '1m', '90s'. */
export function formatPer(seconds: number): string {
  if (seconds % 86_400 === 0) return `${seconds / 86_400}d`;
  if (seconds % 3_600 === 0) return `${seconds / 3_600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
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

/**
 * Checks a budgetPeriod option: 'day', 'month' or null. Throws `invalid_period` with the
 * package's message, `Invalid budget period: <input>`, otherwise.
 */
export function parsePeriod(value: unknown, field = 'budgetPeriod'): BudgetPeriod | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string' && (BUDGET_PERIODS as readonly string[]).includes(value)) return value as BudgetPeriod;
  throw new AgentKeyError('invalid_period', `Invalid budget period: ${shown(value)} (${field} must be 'day', 'month' or null).`);
}

/** A value as the package's messages show it: a string as it is (cut at 40 characters), anything else described. */
function shown(value: unknown): string {
  return typeof value === 'string' ? (value.length > 40 ? `${value.slice(0, 40)}…` : value) : describe(value);
}

const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * Parses an instant given as a Date or an ISO-8601 string ('2026-11-01',
 * '2026-11-01T12:00:00Z'; a time without a zone is UTC), in the years 1 to 9999 that PostgreSQL stores. Strings that
 * `Date` would read leniently ('-1', 'March 7', '2026-02-30') are refused, not reinterpreted.
 */
export function parseInstant(value: unknown, field: string): Date {
  let date: Date | null = null;
  if (value instanceof Date) date = value;
  else if (typeof value === 'string' && value.length <= 64) {
    const m = ISO_8601.exec(value.trim());
    if (m) {
      const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
      const day = new Date(Date.UTC(2000, mo - 1, d));
      day.setUTCFullYear(y);
      // The calendar date must exist as written: Date would roll 2026-02-30 over to March 2.
      // A time without a zone is UTC, as periods are (Date would read it in the local zone).
      if (day.getUTCMonth() === mo - 1 && day.getUTCDate() === d) date = new Date(m[4] ? `${m[1]}-${m[2]}-${m[3]}T${m[4]}${m[5] ?? 'Z'}` : value.trim());
    }
  }
  if (!date || Number.isNaN(date.getTime()) || date.getUTCFullYear() < 1 || date.getUTCFullYear() > 9999) {
    throw new AgentKeyError('invalid_argument', `${field} must be a Date or an ISO-8601 date or time between the years 1 and 9999; got ${describe(value)}.`);
  }
  return date;
}
