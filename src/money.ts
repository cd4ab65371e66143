import { AgentKeyError } from './errors.js';

/**
 * Amounts are stored as integer micro-dollars: 1 micro = $0.000001 = 0.0001 cent.
 * The API speaks cents (as the seed page does); this module is the only place that
 * converts between the two.
 */
export const MICROS_PER_CENT = 10_000;

/** Largest budget or single cost accepted, in cents ($9 billion): keeps every sum a safe integer. */
export const MAX_CENTS = 900_000_000_000;

/** Cents as callers give them: a number, or a decimal string such as `"0.3"`, read exactly. */
export type CentsInput = number | string;

/** A decimal string of cents: digits, an optional fraction, and a minus sign where allowed. */
const DECIMAL = /^(-?)(\d{1,16})(?:\.(\d{1,40}))?$/;

/** How far a number may sit from a micro boundary and still count as that boundary: about 18 ulps. */
const FLOAT_NOISE = 4e-15;

/**
 * Converts cents to micro-dollars exactly. A decimal string is read digit for digit. A
 * number is read from its shortest decimal form, so `0.03` is 300 (not 300.00000000000006),
 * and float noise lands on the boundary it came from: `0.1 + 0.2` (0.30000000000000004)
 * is within a few units in the last place of 0.3, so it is 3,000 micros, not 3,001. A
 * genuinely finer remainder is rounded up for a cost (never under-charged) and down for
 * a budget (never exceeded).
 *
 * @example centsToMicros(0.03) // 300
 * @example centsToMicros('0.00001') // 1 (0.1 micro, rounded up)
 */
export function centsToMicros(cents: CentsInput, rounding: 'up' | 'down' = 'up'): number {
  const negative = typeof cents === 'string' ? cents.startsWith('-') : cents < 0;
  const text = typeof cents === 'string' ? cents.replace(/^-/, '') : String(Math.abs(cents));
  const [mantissa = '0', exponent = '0'] = text.split('e');
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
  let micros = Number(intPart);
  if (/[1-9]/.test(rest)) {
    const x = typeof cents === 'number' ? Math.abs(cents) : Number.NaN;
    const near = (m: number) => Math.abs(x - m / MICROS_PER_CENT) <= FLOAT_NOISE * x;
    // A number a few ulps off a boundary is that boundary; a string is exact as written.
    if (near(micros + 1)) micros += 1;
    else if (!near(micros) && rounding === 'up') micros += 1;
  }
  return negative && micros !== 0 ? -micros : micros;
}

/** Micro-dollars back to cents, e.g. 300 -> 0.03. */
export function microsToCents(micros: number): number {
  return micros / MICROS_PER_CENT;
}

/**
 * True for a finite, non-negative amount of cents within MAX_CENTS: a number, or a
 * decimal string (`"0.3"`; no sign, exponent or spaces). With `signed`, a minus sign too.
 */
export function isValidCents(value: unknown, signed = false): value is CentsInput {
  if (typeof value === 'number') return Number.isFinite(value) && (signed || value >= 0) && Math.abs(value) <= MAX_CENTS;
  if (typeof value !== 'string') return false;
  const m = DECIMAL.exec(value);
  return m !== null && (signed || m[1] === '') && Number(m[2]) <= MAX_CENTS && (Number(m[2]) < MAX_CENTS || !/[1-9]/.test(m[3] ?? ''));
}

/** True for a number (not a string) of cents that isValidCents() accepts: for settings and values code sets. */
export function isCentsNumber(value: unknown): value is number {
  return typeof value === 'number' && isValidCents(value);
}

/** Checks a budget option: null/undefined means unlimited. Throws `invalid_budget` otherwise. */
export function budgetToMicros(value: unknown, field = 'budgetCents'): number | null {
  if (value === null || value === undefined) return null;
  if (!isValidCents(value)) {
    throw new AgentKeyError(
      'invalid_budget',
      `${field} must be a number of cents from 0 to ${MAX_CENTS} (or a decimal string such as "0.5"), or null for no limit; got ${describe(value)}.`,
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
