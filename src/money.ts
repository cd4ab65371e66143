import { AgentKeyError } from './errors.js';

/**
 * Amounts are stored as integer micro-dollars: 1 micro = $0.000001 = 0.0001 cent.
 * The API speaks cents (as the seed page does); this module is the only place that
 * converts between the two.
 */
export const MICROS_PER_CENT = 10_000;

/** Largest budget or single cost accepted, in cents ($9 billion): keeps every sum a safe integer. */
export const MAX_CENTS = 900_000_000_000;

/**
 * Converts cents to micro-dollars exactly, from the number's shortest decimal form,
 * so `0.03` is 300 micros (not 300.00000000000006). Anything finer than a micro-dollar
 * is rounded up for a cost (never under-charged) and down for a budget (never exceeded).
 *
 * @example centsToMicros(0.03) // 300
 */
export function centsToMicros(cents: number, rounding: 'up' | 'down' = 'up'): number {
  const [mantissa = '0', exponent = '0'] = String(Math.abs(cents)).split('e');
  const [whole = '0', fraction = ''] = mantissa.split('.');
  const digits = whole + fraction;
  const point = whole.length + Number(exponent) + 4;
  let intPart: string;
  let rest: string;
  if (point <= 0) {
    intPart = '0';
    rest = digits;
  } else if (point >= digits.length) {
    intPart = digits + '0'.repeat(point - digits.length);
    rest = '';
  } else {
    intPart = digits.slice(0, point);
    rest = digits.slice(point);
  }
  const micros = Number(intPart) + (rounding === 'up' && /[1-9]/.test(rest) ? 1 : 0);
  return cents < 0 ? -micros : micros;
}

/** Micro-dollars back to cents, e.g. 300 -> 0.03. */
export function microsToCents(micros: number): number {
  return micros / MICROS_PER_CENT;
}

/** True for a finite, non-negative number of cents within MAX_CENTS. */
export function isValidCents(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 && value <= MAX_CENTS;
}

/** Checks a budget option: null/undefined means unlimited. Throws `invalid_budget` otherwise. */
export function budgetToMicros(value: unknown, field = 'budgetCents'): number | null {
  if (value === null || value === undefined) return null;
  if (!isValidCents(value)) {
    throw new AgentKeyError(
      'invalid_budget',
      `${field} must be a number of cents from 0 to ${MAX_CENTS}, or null for no limit; got ${describe(value)}.`,
    );
  }
  return centsToMicros(value, 'down');
}

export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value == null) return String(value);
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}
