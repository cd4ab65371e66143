/**
 * How a refusal leaves an HTTP surface: `errorToHttp` for anything thrown, `packageBody`
 * for the package's Express shape, `sendJson` for Node's response. What each refusal
 * says is in the refusal table (refusals.ts).
 */
import { AgentKeyError } from '../errors.js';
import { type HttpError, type RefusalReason, REFUSALS, refuse } from './refusals.js';
import { TIMEOUT } from './timeout.js';

export { type HttpError, type HttpErrorBody, httpError, refuse, refusalOf } from './refusals.js';

/**
 * A refusal thrown rather than returned (say from deep inside a route): `errorToHttp`
 * answers it as it is.
 *
 * @example throw new RefusalError(refuse('missing_admin_key'))
 */
export class RefusalError extends Error {
  constructor(readonly refusal: HttpError) {
    super(refusal.body.error.message);
    this.name = 'RefusalError';
  }
}

/**
 * Maps anything thrown to a status and the JSON body, from the refusal table: an
 * `AgentKeyError` by its code, a wait on the store that ran out (`TIMEOUT`) as 503
 * `storage_timeout`, a `RefusalError` as it is, anything else as 500 `internal_error`.
 * Never leaks a stack trace or a driver's message.
 */
export function errorToHttp(err: unknown): HttpError {
  if (err instanceof RefusalError) return err.refusal;
  if (err === TIMEOUT) return refuse('storage_timeout');
  // A code missing from the table (another build's newer code) is still a fault, not a crash.
  if (err instanceof AgentKeyError && err.code in REFUSALS) return refuse(err.code as RefusalReason, err.message);
  return refuse('internal_error');
}

/** Writes a JSON response with Node's plain ServerResponse API (works under Express too). */
export function sendJson(res: JsonResponse, status: number, body: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify(body));
}

export interface JsonResponse {
  statusCode: number;
  setHeader(name: string, value: string): unknown;
  end(chunk?: string): unknown;
}

/**
 * The body the package's own HTTP surfaces send (`agentKeyMiddleware`, the self-serve
 * routes): `error` is a string, as the package's clients parse it, with this project's
 * `code` and `message` beside it. Refusals the package had keep its string (the table's
 * `packageError`); others show their message. `failure` is the string for a 5xx (the
 * package said 'auth_unavailable' in the middleware and 'Failed to create key' in the routes).
 */
export interface PackageErrorBody {
  error: string;
  code: string;
  message: string;
  [extra: string]: unknown;
}

export function packageBody(e: HttpError, failure = 'auth_unavailable'): PackageErrorBody {
  const { code, message, requiredScope, availableScopes, ...extra } = e.body.error;
  const error = e.status >= 500 ? failure : (e.packageError ?? message);
  const scope = code === 'insufficient_scope' ? { required: requiredScope, available: availableScopes ?? null } : {};
  return { error, ...scope, ...extra, code, message };
}
