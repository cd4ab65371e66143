import { AgentKeyError } from '../errors.js';
import { describe } from '../money.js';
import { checkOptions } from '../options.js';

/**
 * The one check of the options of an adapter, the self-serve routes or an identity, made
 * when it is built: a plain object of known names, so that a misspelt option (say
 * `scopes`) throws instead of silently turning a check off. No options (undefined or
 * null) are none at all, unless `required` says what is missing.
 *
 * @example const o = surfaceOptions<VerifyOptions>(options, ['scope', 'timeoutMs'], 'Hono middleware options');
 */
export function surfaceOptions<T extends object>(options: unknown, allowed: readonly string[], what: string, required?: string): Partial<T> {
  if (options === undefined || options === null) {
    if (required !== undefined) throw new AgentKeyError('invalid_argument', required);
    return {};
  }
  return checkOptions<Partial<T>>(options, allowed, what);
}

/** How long a surface waits for the key store before answering 503: a positive whole number of ms, default 10 s. */
export function timeoutOption(value: unknown): number {
  if (value === undefined) return 10_000;
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    throw new AgentKeyError('invalid_argument', `timeoutMs must be a positive whole number of milliseconds; got ${describe(value)}.`);
  }
  return value;
}
