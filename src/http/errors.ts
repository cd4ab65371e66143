import { AgentKeyError, type AgentKeyErrorCode } from '../errors.js';

/** The one JSON error body every agentkey HTTP surface sends. */
export interface HttpErrorBody {
  error: { code: string; message: string; [extra: string]: unknown };
}

export interface HttpError {
  status: number;
  body: HttpErrorBody;
}

export function httpError(status: number, code: string, message: string, extra: Record<string, unknown> = {}): HttpError {
  return { status, body: { error: { code, message, ...extra } } };
}

const STATUS: Partial<Record<AgentKeyErrorCode, number>> = {
  scope_not_allowed: 403,
  budget_exceeds_parent: 403,
  expiry_exceeds_parent: 403,
  parent_inactive: 403,
  depth_exceeded: 403,
  key_outside_tree: 403,
  parent_not_found: 404,
  not_migrated: 500,
  storage_error: 500,
  storage_timeout: 503,
  total_out_of_range: 422,
  invalid_pool: 500,
  invalid_table_name: 500,
};

export const STORE_TIMEOUT = 'The key store did not answer in time; try again later.';

/**
 * A wait on the key store that ran out: an adapter's own `timeoutMs`, or the library's
 * (`AgentKeyError` 'storage_timeout'). The package's surfaces fail closed on both alike, with 500.
 */
export function isStoreTimeout(err: unknown, timer: unknown): boolean {
  return err === timer || (err instanceof AgentKeyError && err.code === 'storage_timeout');
}

/** Maps any thrown error to a status and the JSON body; never leaks a stack trace. */
export function errorToHttp(err: unknown): HttpError {
  if (err instanceof AgentKeyError) {
    const status = STATUS[err.code] ?? 400;
    // Infrastructure detail stays in the server's logs, not in a client's response.
    const message =
      err.code === 'storage_timeout' ? STORE_TIMEOUT : status >= 500 ? 'The key store is unavailable; try again later.' : err.message;
    return httpError(status, err.code, message);
  }
  return httpError(500, 'internal_error', 'The server failed to handle this request.');
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
 * `code` and `message` beside it. Refusals the package had keep its string; others show
 * their message. `failure` is the string for a 5xx (the package said 'auth_unavailable'
 * in the middleware and 'Failed to create key' in the routes).
 */
export interface PackageErrorBody {
  error: string;
  code: string;
  message: string;
  [extra: string]: unknown;
}

const PACKAGE_ERROR: Record<string, string> = {
  missing_key: 'Missing API key',
  invalid_key: 'invalid',
  key_expired: 'expired',
  key_revoked: 'revoked',
  budget_exceeded: 'budget_exceeded',
  insufficient_scope: 'insufficient_scope',
  invalid_email: 'Valid email is required',
  email_required: 'Valid email is required',
};

export function packageBody(e: HttpError, failure = 'auth_unavailable'): PackageErrorBody {
  // `packageError`: the package's own text for this refusal, when it had one of its own.
  const { code, message, requiredScope, availableScopes, packageError, ...extra } = e.body.error;
  const error = e.status >= 500 ? failure : typeof packageError === 'string' ? packageError : (PACKAGE_ERROR[code] ?? message);
  const scope = code === 'insufficient_scope' ? { required: requiredScope, available: availableScopes ?? null } : {};
  return { error, ...scope, ...extra, code, message };
}
