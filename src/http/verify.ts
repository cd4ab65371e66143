import type { AgentKey, ValidKey, ValidationResult } from '../agentkey.js';
import type { ReserveOptions, ReserveResult } from '../spending.js';
import { AgentKeyError } from '../errors.js';
import { type HttpError, errorToHttp } from './errors.js';
import { surfaceOptions, timeoutOption } from './options.js';
import { refusalOf, refuse } from './refusals.js';
import { withTimeout } from './timeout.js';

export { TIMEOUT, withTimeout } from './timeout.js';

export type VerifyOutcome = { ok: true; key: ValidKey } | { ok: false; error: HttpError };

export interface VerifyOptions {
  /** A scope the key must hold (403 otherwise). */
  scope?: string;
  /** How long to wait for the key store before failing closed with 503. Default 10 s. */
  timeoutMs?: number;
}

/** Checks middleware options once, when the middleware is built; `what` names them in errors. */
export function checkVerifyOptions(
  options: unknown,
  extra: readonly string[] = [],
  what = 'Middleware options',
): Required<Pick<VerifyOptions, 'timeoutMs'>> & VerifyOptions {
  const o = surfaceOptions<VerifyOptions>(options, ['scope', 'timeoutMs', ...extra], what);
  if (o.scope !== undefined && (typeof o.scope !== 'string' || o.scope.length === 0)) {
    throw new AgentKeyError('invalid_argument', 'The scope option must be a non-empty string.');
  }
  return { ...o, timeoutMs: timeoutOption(o.timeoutMs) };
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

/**
 * Who is calling, as an adapter learns it from a bearer: the validation result (for an
 * agentkey key, or an external subject's budget row) and how to hold money for it.
 */
export interface Identity {
  result: ValidationResult;
  reserve(options: ReserveOptions): Promise<ReserveResult>;
}

/**
 * A bearer refused outright, as data (never an HTTP error): the surface answers it from
 * the refusal table. `detail` says why, for a token that is not valid.
 */
export interface Denial {
  denied: 'invalid_token' | 'token_expired' | 'issuer_unavailable';
  detail?: string;
}

/** Turns a bearer into an Identity, or a Denial for a credential it refuses outright. */
export type Authenticate = (token: string) => Promise<Identity | Denial>;

/**
 * The Authenticate for agentkey's own keys. It takes a concurrency slot for the request
 * (`validate(key, { acquire: true })`): the surface frees it when the response ends.
 */
export function keyAuthenticator(ak: AgentKey): Authenticate {
  return async (rawKey) => ({ result: await ak.validate(rawKey, { acquire: true }), reserve: (o) => ak.reserve(rawKey, o) });
}

export type IdentityOutcome =
  | {
      ok: true;
      key: ValidKey;
      identity: Identity;
      /** Frees the request's concurrency slot: call it once when the response ends, however it ends (again: nothing). */
      release: () => void;
    }
  | { ok: false; error: HttpError };

/** The release of a validation that took a concurrency slot (a no-op otherwise). */
function releaseOf(identity: Identity | Denial): () => void {
  const result = 'result' in identity ? identity.result : null;
  const release = result?.valid ? result.release : undefined;
  return typeof release === 'function' ? release : () => {};
}

/**
 * The framework-neutral check behind every adapter, answered from the refusal table:
 * 401 for a missing, invalid, expired or revoked key, 429 for a key with nothing left to
 * spend, 403 for a missing scope, 500 when the store fails and 503 when it does not
 * answer within `timeoutMs` (fail closed).
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
  if (!token) return { ok: false, error: refuse('missing_key') };
  let identity: Identity | Denial;
  const pending = authenticate(token);
  try {
    identity = await withTimeout(pending, options.timeoutMs);
  } catch (err) {
    // Given up on: if it still succeeds later, the slot it took is freed at once.
    pending.then((late) => releaseOf(late)(), () => {});
    return { ok: false, error: errorToHttp(err) };
  }
  if ('denied' in identity) return { ok: false, error: refuse(identity.denied, identity.detail) };
  const result = identity.result;
  // A key with nothing left to spend is refused by validate() itself, as in the package: 429.
  if (!result.valid) return { ok: false, error: refusalOf(result) };
  const release = releaseOf(identity);
  if (options.scope !== undefined && !ak.hasScope(result, options.scope)) {
    release();
    const error = refuse('insufficient_scope', options.scope, { requiredScope: options.scope, availableScopes: result.scopes });
    return { ok: false, error };
  }
  return { ok: true, key: result, identity, release };
}
