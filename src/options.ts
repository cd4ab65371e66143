import { AgentKeyError } from './errors.js';
import { describe } from './money.js';

/** Throws unless `value` is a plain object whose keys are all in `allowed`. */
export function checkOptions<T extends object>(value: unknown, allowed: readonly string[], what: string): T {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new AgentKeyError('invalid_argument', `${what} must be an options object; got ${describe(value)}.`);
  }
  const unknown = Object.keys(value).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) {
    throw new AgentKeyError(
      'invalid_argument',
      `${what} got unknown option ${JSON.stringify(unknown[0])}; allowed: ${allowed.join(', ')}.`,
    );
  }
  return value as T;
}

/**
 * The characters no text input may hold: C0 and C1 control characters (U+0000–U+001F,
 * U+007F–U+009F: escape sequences, BEL, NUL...) and the bidirectional marks, embeddings,
 * overrides and isolates (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), which
 * make text read differently from what it is. Names, ids and labels end up in operators'
 * terminals, logs and dashboards; such characters have no place in them.
 */
const UNSAFE_TEXT = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

/**
 * The one rule for text the library accepts (names, account ids, subjects, user ids,
 * delegatedBy, idempotency keys, reasons): throws `invalid_argument` when `value` holds a
 * character of UNSAFE_TEXT, naming the field and the character, never echoing the text.
 */
export function checkText(value: string, field: string): string {
  const found = UNSAFE_TEXT.exec(value);
  if (found) {
    const code = (found[0].codePointAt(0) as number).toString(16).toUpperCase().padStart(4, '0');
    throw new AgentKeyError(
      'invalid_argument',
      `${field} must not contain control characters or bidirectional formatting characters; got U+${code} at index ${found.index}.`,
    );
  }
  return value;
}

/** A label-like string option: null/undefined allowed, otherwise 1..max characters under the rule of checkText(). */
export function optionalText(value: unknown, field: string, max = 256): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new AgentKeyError('invalid_argument', `${field} must be a non-empty string of at most ${max} characters; got ${describe(value)}.`);
  }
  return checkText(value, field);
}

/** An account id: a non-empty string (at most 256 characters, under the rule of checkText()) or a safe integer. */
export function accountIdText(value: unknown, field = 'accountId'): string {
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
  if (typeof value === 'string' && value.length > 0 && value.length <= 256) return checkText(value, field);
  throw new AgentKeyError('invalid_argument', `${field} must be a non-empty string or an integer; got ${describe(value)}.`);
}

/** A key id: a positive safe integer, or a string of digits. */
export function keyIdNumber(value: unknown, field = 'keyId'): number {
  const n = typeof value === 'string' && /^[0-9]{1,16}$/.test(value) ? Number(value) : value;
  if (typeof n === 'number' && Number.isSafeInteger(n) && n > 0) return n;
  throw new AgentKeyError('invalid_argument', `${field} must be a positive integer key id; got ${describe(value)}.`);
}
