import { AgentKeyError } from './errors.js';
import { describe } from './money.js';

/** The page's super-scope: a key holding it may do anything and mint any scope. */
export const ADMIN_SCOPE = 'admin';
const SCOPE_PATTERN = /^[A-Za-z0-9_.:\/*-]{1,128}$/;
const MAX_SCOPES = 100;

/**
 * Checks a scopes option: null/undefined means unlimited; otherwise an array of up to
 * 100 distinct scope strings (letters, digits and `_ . : / - *`), each listed in
 * `validScopes` when that is configured.
 */
export function parseScopes(value: unknown, validScopes: ReadonlySet<string> | null, field = 'scopes'): string[] | null {
  if (value === null || value === undefined) return null;
  if (!Array.isArray(value) || value.length > MAX_SCOPES) {
    throw new AgentKeyError('invalid_scope', `${field} must be an array of at most ${MAX_SCOPES} scope strings, or null; got ${describe(value)}.`);
  }
  for (const scope of value) {
    if (typeof scope !== 'string' || !SCOPE_PATTERN.test(scope)) {
      throw new AgentKeyError(
        'invalid_scope',
        `Each scope must be 1 to 128 letters, digits or _ . : / - * characters; got ${describe(scope)}.`,
      );
    }
    if (validScopes && !validScopes.has(scope)) {
      throw new AgentKeyError('invalid_scope', `Scope ${JSON.stringify(scope)} is not one of the configured validScopes.`);
    }
  }
  return [...new Set(value as string[])];
}

/** True when `scopes` (null = unlimited) allows `scope`. */
export function scopeAllows(scopes: readonly string[] | null, scope: string): boolean {
  return scopes === null || scopes.includes(ADMIN_SCOPE) || scopes.includes(scope);
}

/** True when a key with `parent` scopes may mint a key with `child` scopes (never wider). */
export function isAttenuation(parent: readonly string[] | null, child: readonly string[] | null): boolean {
  if (parent === null || parent.includes(ADMIN_SCOPE)) return true;
  if (child === null) return false;
  return child.every((scope) => parent.includes(scope));
}
