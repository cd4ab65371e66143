import { AgentKeyError } from './errors.js';

/**
 * Amounts are stored as integer micro-dollars: 1 micro = $0.000001 = 0.0001 cent.
 * The API speaks cents (as the `@katrinalaszlo/agentkey` package does); this module is the
 * only place that converts between the two.
 */
export const MICROS_PER_CENT = 10_000;

/**
 * Largest budget or single cost accepted, in cents ($5 billion). Every figure up to it is
 * exact as a JavaScript number, to the micro: below 2^39 cents a double's step is finer
 * than a micro. Totals that grow past it (the spend of an unlimited key, an account's,
 * a report's) come back as exact decimal strings instead; see `Cents`.
 */
export const MAX_CENTS = 500_000_000_000;

/** MAX_CENTS in micro-dollars: the largest magnitude reported as a number. */
const MAX_NUMBER_MICROS = MAX_CENTS * 10_000;

/**
 * The most any counter can hold, in micro-dollars: PostgreSQL's BIGINT. A step that would
 * take a counter past it is refused with `total_out_of_range` and changes nothing.
 */
export const MAX_TOTAL_MICROS = 2n ** 63n - 1n;

/**
 * A figure in cents as agentkey reports it: a number up to MAX_CENTS ($5 billion) either
 * way, and beyond that an exact decimal string such as `"1000000000000.0001"`, which a
 * number could not hold. Budgets, single costs and what one step charges never pass
 * MAX_CENTS, so they are always numbers; totals may.
 */
export type Cents = number | string;

/**
 * Micro-dollars as the store reads them: a number while it is a safe integer, a bigint
 * beyond (only totals get there).
 */
export type Micros = number | bigint;

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

/**
 * Reads an integer amount of micro-dollars from the database: BIGINT comes as a number or a
 * bigint (PGlite) or as text (node-postgres), a sum as NUMERIC text. Exact either way.
 */
export function toMicros(value: unknown): Micros {
  if (typeof value === 'number') return value;
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value;
  if (typeof value === 'string' && /^-?\d+$/.test(value)) {
    const n = Number(value);
    return Number.isSafeInteger(n) ? n : BigInt(value);
  }
  if (value === null || value === undefined) return 0;
  throw new TypeError(`not an integer amount of micro-dollars: ${describe(value)}`);
}

/** Sums amounts of micro-dollars exactly, as a number while it stays safe. */
export function addMicros(...amounts: Micros[]): Micros {
  if (amounts.every((a) => typeof a === 'number')) {
    const sum = (amounts as number[]).reduce((s, a) => s + a, 0);
    if (Number.isSafeInteger(sum)) return sum;
  }
  return toMicros(amounts.reduce<bigint>((s, a) => s + BigInt(a), 0n));
}

/**
 * What a budget leaves once `spent` and `held` are taken (negative when over): a number,
 * exact while a budget's figures are (they are unless adjustments pushed spend past 2^53).
 */
export function roomMicros(budget: number, spent: Micros, held: Micros): number {
  if (typeof spent === 'number' && typeof held === 'number') return budget - spent - held;
  return Number(BigInt(budget) - BigInt(spent ?? 0) - BigInt(held ?? 0));
}

/** Whether two amounts of micro-dollars are the same. */
export function sameMicros(a: Micros, b: Micros): boolean {
  return BigInt(a ?? 0) === BigInt(b ?? 0);
}

/**
 * Micro-dollars back to cents, e.g. 300 -> 0.03: a number up to MAX_CENTS either way, an
 * exact decimal string beyond (`Cents`).
 */
export function microsToCents(micros: Micros): Cents {
  if (typeof micros === 'number' && Math.abs(micros) <= MAX_NUMBER_MICROS) return micros / MICROS_PER_CENT;
  // A counter that SQL left NULL reads as 0, as the spend functions read it.
  if (micros == null) return 0;
  const big = BigInt(micros);
  const digits = (big < 0n ? -big : big).toString().padStart(5, '0');
  const fraction = digits.slice(-4).replace(/0+$/, '');
  return `${big < 0n ? '-' : ''}${digits.slice(0, -4)}${fraction ? `.${fraction}` : ''}`;
}

/**
 * Micro-dollars as a number of cents, for the package's own result types (which are
 * numbers): exact up to MAX_CENTS, the nearest number beyond.
 */
export function microsToCentsNumber(micros: Micros): number {
  return Number(microsToCents(micros));
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
