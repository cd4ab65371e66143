import { AgentKeyError } from './errors.js';
import { describe } from './money.js';

/** The super-scope of the `@katrinalaszlo/agentkey` package: a key holding it may do anything and mint any scope. */
export const ADMIN_SCOPE = 'admin';
/** Grants everything, like `admin`. */
export const ANY_SCOPE = '*';
const SCOPE_PATTERN = /^[A-Za-z0-9_.:\/*-]{1,128}$/;
/** `*` may stand alone or as the last segment: `proxy.*`. */
const WILDCARD_PATTERN = /^(\*|[^*]+\.\*|[^*]+)$/;
const MAX_SCOPES = 100;

/**
 * Checks a scopes option: null/undefined means unlimited; otherwise an array of up to
 * 100 distinct scope strings (letters, digits and `_ . : / -`, with `*` alone or as the
 * last segment, e.g. `proxy.*`), each listed in `validScopes` when that is configured
 * (`admin` always passes, as in the package). Throws `invalid_scope` with the package's
 * message, `Invalid scopes: a, b`, followed by why.
 */
export function parseScopes(value: unknown, validScopes: ReadonlySet<string> | null, field = 'scopes'): string[] | null {
  if (value === null || value === undefined) return null;
  if (!Array.isArray(value) || value.length > MAX_SCOPES) {
    throw new AgentKeyError(
      'invalid_scope',
      `Invalid scopes: ${describe(value)} (${field} must be an array of at most ${MAX_SCOPES} scope strings, or null).`,
    );
  }
  const invalid = invalidScopes(value, validScopes);
  if (invalid.length > 0) {
    const why = [
      invalid.some((s) => !wellFormed(s))
        ? 'each scope must be 1 to 128 letters, digits or _ . : / - characters, with * only alone or as the last segment (proxy.*)'
        : null,
      invalid.some(wellFormed) ? `allowed: ${[...(validScopes ?? [])].join(', ')}` : null,
    ];
    throw new AgentKeyError('invalid_scope', `Invalid scopes: ${invalid.map(show).join(', ')} (${why.filter(Boolean).join('; ')}).`);
  }
  return [...new Set(value as string[])];
}

/** The entries of `scopes` that `create()` would refuse, in order (the package's `validateScopes`). */
export function invalidScopes(scopes: readonly unknown[], validScopes: ReadonlySet<string> | null): unknown[] {
  return scopes.filter((s) => !wellFormed(s) || (validScopes !== null && s !== ADMIN_SCOPE && !validScopes.has(s)));
}

function wellFormed(scope: unknown): scope is string {
  return typeof scope === 'string' && SCOPE_PATTERN.test(scope) && WILDCARD_PATTERN.test(scope);
}

function show(scope: unknown): string {
  return typeof scope === 'string' && scope.length <= 128 ? scope : describe(scope);
}

function isSuper(scopes: readonly string[] | null): boolean {
  return scopes === null || scopes.includes(ADMIN_SCOPE) || scopes.includes(ANY_SCOPE);
}

/** True when `pattern` grants `scope`: equal, or a `prefix.*` wildcard over it. */
function grants(pattern: string, scope: string): boolean {
  return pattern === scope || (pattern.endsWith('.*') && scope.startsWith(pattern.slice(0, -1)) && scope.length > pattern.length - 1);
}

/**
 * True when `scopes` (null = unlimited) allows `scope`: `admin` and `*` allow everything,
 * `proxy.*` allows `proxy.chat` and `proxy.chat.stream`.
 */
export function scopeAllows(scopes: readonly string[] | null, scope: string): boolean {
  return isSuper(scopes) || (scopes as readonly string[]).some((p) => grants(p, scope));
}

/**
 * True when a key with `parent` scopes may mint a key with `child` scopes: never wider.
 * A wildcard child needs a parent wildcard at least as wide (`a.*` covers `a.b.*`).
 */
export function isAttenuation(parent: readonly string[] | null, child: readonly string[] | null): boolean {
  if (isSuper(parent)) return true;
  if (isSuper(child)) return false;
  return (child as readonly string[]).every((c) => (parent as readonly string[]).some((p) => grants(p, c)));
}

/**
 * The widest scopes within both `parent` and `child` (null = unlimited): what a key with
 * `child` scopes keeps when its parent narrows to `parent`. The child's scopes the parent
 * grants, and the parent's that fall within the child's (`['a.*', 'b.x']` under `['a.y']`
 * keeps `['a.y']`).
 */
export function intersectScopes(parent: readonly string[] | null, child: readonly string[] | null): string[] | null {
  if (isSuper(parent)) return child === null ? null : [...child];
  if (isSuper(child)) return [...(parent as readonly string[])];
  const kept = (child as readonly string[]).filter((c) => isAttenuation(parent, [c]));
  const within = (parent as readonly string[]).filter((p) => isAttenuation(child, [p]));
  return [...new Set([...kept, ...within])];
}
