import type { AgentKey, ValidKey, ValidationResult } from '../agentkey.js';
import type { ReserveOptions, ReserveResult } from '../spending.js';
import { AgentKeyError } from '../errors.js';
import { type HttpError, STORE_TIMEOUT, errorToHttp, httpError, isStoreTimeout } from './errors.js';

export type VerifyOutcome = { ok: true; key: ValidKey } | { ok: false; error: HttpError };

export interface VerifyOptions {
  /** A scope the key must hold (403 otherwise). */
  scope?: string;
  /** How long to wait for the key store before failing closed with 500. Default 10 s. */
  timeoutMs?: number;
}

/** Checks middleware options once, when the middleware is built. */
export function checkVerifyOptions(options: unknown, extra: readonly string[] = []): Required<Pick<VerifyOptions, 'timeoutMs'>> & VerifyOptions {
  const o = (options ?? {}) as VerifyOptions;
  if (typeof o !== 'object' || Array.isArray(o)) throw new AgentKeyError('invalid_argument', 'Middleware options must be an object.');
  // A misspelt option (say `scopes`) must not silently turn the scope check off.
  const allowed = ['scope', 'timeoutMs', ...extra];
  const unknown = Object.keys(o).find((k) => !allowed.includes(k));
  if (unknown) throw new AgentKeyError('invalid_argument', `Middleware got unknown option "${unknown}"; allowed: ${allowed.join(', ')}.`);
  if (o.scope !== undefined && (typeof o.scope !== 'string' || o.scope.length === 0)) {
    throw new AgentKeyError('invalid_argument', 'The scope option must be a non-empty string.');
  }
  const timeoutMs = o.timeoutMs ?? 10_000;
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) {
    throw new AgentKeyError('invalid_argument', 'timeoutMs must be a positive whole number of milliseconds.');
  }
  return { ...o, timeoutMs };
}

/** Throws at construction unless `ak` looks like an AgentKey (duck-typed: the ESM and CJS builds each have their own class). */
export function checkAgentKey(ak: unknown, what: string): void {
  const a = ak as Partial<AgentKey> | null | undefined;
  if (!a || typeof a.validate !== 'function' || typeof a.hasScope !== 'function' || typeof a.create !== 'function' || typeof a.revoke !== 'function') {
    throw new AgentKeyError('invalid_argument', `${what} needs an AgentKey instance as its first argument.`);
  }
}

/**
 * Reads the key from `Authorization: Bearer <key>` or `X-API-Key: <key>`.
 * Header values may be arrays (Node) or a getter (fetch Headers).
 */
export function keyFromHeaders(get: (name: string) => string | string[] | undefined | null): string | null {
  const auth = first(get('authorization'));
  if (auth) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    return match ? (match[1] as string) : null;
  }
  return first(get('x-api-key'))?.trim() || null;
}

function first(value: string | string[] | undefined | null): string | undefined {
  return Array.isArray(value) ? value[0] : (value ?? undefined);
}

const INVALID: Record<string, [number, string, string]> = {
  invalid: [401, 'invalid_key', 'The API key is not valid.'],
  expired: [401, 'key_expired', 'The API key has expired.'],
  revoked: [401, 'key_revoked', 'The API key has been revoked.'],
  budget_exceeded: [429, 'budget_exceeded', "This key's budget is spent."],
};

/**
 * Who is calling, as an adapter learns it from a bearer: the validation result (for an
 * agentkey key, or an external subject's budget row) and how to hold money for it.
 */
export interface Identity {
  result: ValidationResult;
  reserve(options: ReserveOptions): Promise<ReserveResult>;
}

/** Turns a bearer into an Identity; an `HttpError` for a credential it refuses outright. */
export type Authenticate = (token: string) => Promise<Identity | HttpError>;

/** The Authenticate for agentkey's own keys. */
export function keyAuthenticator(ak: AgentKey): Authenticate {
  return async (rawKey) => ({ result: await ak.validate(rawKey), reserve: (o) => ak.reserve(rawKey, o) });
}

export type IdentityOutcome = { ok: true; key: ValidKey; identity: Identity } | { ok: false; error: HttpError };

/**
 * The framework-neutral check behind every adapter: 401 for a missing, invalid,
 * expired or revoked key, 429 for a key with nothing left to spend, 403 for a missing
 * scope, 500 when the store fails (fail closed).
 */
export async function verifyKey(ak: AgentKey, rawKey: string | null, options: ReturnType<typeof checkVerifyOptions>): Promise<VerifyOutcome> {
  return verifyIdentity(ak, rawKey, keyAuthenticator(ak), options);
}

/** `verifyKey` for any kind of bearer, through `authenticate`. */
export async function verifyIdentity(
  ak: AgentKey,
  token: string | null,
  authenticate: Authenticate,
  options: ReturnType<typeof checkVerifyOptions>,
): Promise<IdentityOutcome> {
  if (!token) {
    return { ok: false, error: httpError(401, 'missing_key', 'Send an API key as "Authorization: Bearer <key>".') };
  }
  let identity: Identity | HttpError;
  try {
    identity = await withTimeout(authenticate(token), options.timeoutMs);
  } catch (err) {
    return { ok: false, error: isStoreTimeout(err, TIMEOUT) ? httpError(500, 'storage_timeout', STORE_TIMEOUT) : errorToHttp(err) };
  }
  if ('status' in identity) return { ok: false, error: identity };
  const result = identity.result;
  if (!result.valid) {
    // A key with nothing left to spend is refused by validate() itself, as in the package: 429.
    const [status, code, message] = INVALID[result.reason] ?? (INVALID.invalid as [number, string, string]);
    return { ok: false, error: httpError(status, code, message) };
  }
  if (options.scope !== undefined && !ak.hasScope(result, options.scope)) {
    return {
      ok: false,
      error: httpError(403, 'insufficient_scope', `This key lacks the scope "${options.scope}".`, {
        requiredScope: options.scope,
        availableScopes: result.scopes,
      }),
    };
  }
  return { ok: true, key: result, identity };
}

export const TIMEOUT = Symbol('timeout');

/** Rejects with `TIMEOUT` when `promise` has not settled after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(TIMEOUT), ms);
    timer.unref?.();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
