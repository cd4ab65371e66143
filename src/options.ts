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

/** A label-like string option: null/undefined allowed, otherwise 1..max characters. */
export function optionalText(value: unknown, field: string, max = 256): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new AgentKeyError('invalid_argument', `${field} must be a non-empty string of at most ${max} characters; got ${describe(value)}.`);
  }
  if (value.includes('\u0000')) {
    throw new AgentKeyError('invalid_argument', `${field} must not contain a NUL character (PostgreSQL cannot store one).`);
  }
  return value;
}

/** An account id: a non-empty string (at most 256 characters) or a safe integer. */
export function accountIdText(value: unknown, field = 'accountId'): string {
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
  if (typeof value === 'string' && value.length > 0 && value.length <= 256) return value;
  throw new AgentKeyError('invalid_argument', `${field} must be a non-empty string or an integer; got ${describe(value)}.`);
}

/** A key id: a positive safe integer, or a string of digits. */
export function keyIdNumber(value: unknown, field = 'keyId'): number {
  const n = typeof value === 'string' && /^[0-9]{1,16}$/.test(value) ? Number(value) : value;
  if (typeof n === 'number' && Number.isSafeInteger(n) && n > 0) return n;
  throw new AgentKeyError('invalid_argument', `${field} must be a positive integer key id; got ${describe(value)}.`);
}
