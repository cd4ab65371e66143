import type { AdjustResult, CommitResult, ReleaseResult, ReserveResult, TrackUsageResult, ValidateFailure } from '../agentkey.js';
import type { AgentKeyErrorCode } from '../errors.js';
import { MAX_CENTS } from '../money.js';

/**
 * The refusal table: every way an agentkey HTTP surface says no, with its status, its
 * code and its one message. The Express middleware and routes, the Hono, fetch and
 * Fastify adapters, the identities (agentkey/jwt, agentkey/clerk) and the service all
 * answer from it, so one refusal reads the same wherever it is met.
 *
 * Rows come in three groups, each checked complete by its type:
 * - every reason a library result carries (`validate()`'s `{ valid: false }`, the
 *   `{ success: false }` of trackUsage, reserve, commit, release and adjust);
 * - every `AgentKeyErrorCode` (a thrown `AgentKeyError`, through `errorToHttp`);
 * - the refusals the surfaces make themselves (no key, a missing scope, a bad token...).
 *
 * Decided once, for every surface:
 * - A store that did not answer in time is 503 `storage_timeout` (the library's
 *   `timeoutMs` or an adapter's own); other store faults are 500, with no driver detail.
 * - A missing scope is 403 `insufficient_scope`. `POST /v1/verify` is the exception by
 *   design: its job is to report, so it answers 200 `{ valid: false, reason: 'insufficient_scope' }`.
 * - The package's Express surfaces keep its `error` strings (`packageError` below) and its
 *   statuses: a signup asking for scopes outside `signupScopes` is 400, not 403 (the
 *   `signup_scope_not_allowed` row), as the package's clients expect.
 *
 * A row with `named` is a refusal that names what was refused: the caller's detail (an
 * `AgentKeyError`'s own message, the scope a route needs) makes the sentence. Every
 * other row's message is fixed: no caller can word it differently. The rows of store
 * faults are fixed, so no driver or stack detail ever reaches a client.
 *
 * To add a row (a new error code, say `total_out_of_range`, 422): add it to its group;
 * the compiler names any group left incomplete, and the README's Refusals table is
 * checked against this one by test/refusals.test.ts.
 */

export interface Refusal {
  status: number;
  code: string;
  /** The sentence sent when there is no detail to name, or the row is fixed. */
  message: string;
  /** For a refusal that names what was refused: the sentence, from the caller's detail. */
  named?: (detail: string) => string;
  /** The package's own `error` string, on its Express surfaces (else they show the message). */
  packageError?: string | ((detail: string) => string);
}

type Refused<R> = R extends { success: false; reason: infer X } ? X : never;

/** Every reason a library result that says no can carry. */
export type LibraryReason =
  | ValidateFailure['reason']
  | Refused<TrackUsageResult>
  | Refused<ReserveResult>
  | Refused<CommitResult>
  | Refused<ReleaseResult>
  | Refused<AdjustResult>;

/** Refusals the HTTP surfaces make themselves. */
export type SurfaceReason =
  | 'missing_key'
  | 'insufficient_scope'
  | 'invalid_token'
  | 'token_expired'
  | 'issuer_unavailable'
  | 'invalid_reserve'
  | 'internal_error'
  | 'invalid_json'
  | 'body_too_large'
  | 'invalid_email'
  | 'email_required'
  | 'signup_scope_not_allowed'
  | 'signup_rate_limited'
  | 'key_not_in_account'
  | 'missing_hold_key'
  | 'missing_admin_key'
  | 'invalid_admin_key'
  | 'route_not_found'
  | 'method_not_allowed'
  | 'account_budget_not_found'
  | 'account_rate_limit_not_found'
  | 'invalid_request'
  | 'unsupported_media_type'
  | 'unhealthy'
  // The LLM proxy's own (agentkey/proxy): in each upstream API's error shape, with these codes.
  | 'model_not_allowed'
  | 'upstream_not_found'
  | 'upstream_auth_failed'
  | 'upstream_error'
  | 'upstream_timeout'
  | 'upstream_unreachable'
  | 'upstream_stream_failed';

export type RefusalReason = LibraryReason | AgentKeyErrorCode | SurfaceReason;

/** The detail is the whole sentence: an `AgentKeyError`'s message already says what was wrong. */
const own = (detail: string) => detail;

const STORE_UNAVAILABLE = 'The key store is unavailable; try again later.';

/** The library's results. */
const LIBRARY: Record<LibraryReason, Refusal> = {
  invalid: { status: 401, code: 'invalid_key', message: 'The API key is not valid.', packageError: 'invalid' },
  invalid_key: { status: 401, code: 'invalid_key', message: 'The API key is not valid.', packageError: 'invalid' },
  expired: { status: 401, code: 'key_expired', message: 'The API key has expired.', packageError: 'expired' },
  revoked: { status: 401, code: 'key_revoked', message: 'The API key has been revoked.', packageError: 'revoked' },
  // Also the key check's answer for a key with nothing left, as in the package (429, not 402).
  budget_exceeded: {
    status: 429,
    code: 'budget_exceeded',
    message: 'The budget left for this key cannot cover this request.',
    packageError: 'budget_exceeded',
  },
  invalid_cost: { status: 400, code: 'invalid_cost', message: 'costCents must be a number of cents of at least 0.', named: own },
  idempotency_conflict: {
    status: 409,
    code: 'idempotency_conflict',
    message: 'This call repeats an earlier one with a different cost; a retry must send the same cost.',
  },
  reservation_not_found: { status: 404, code: 'reservation_not_found', message: 'This key has no reservation with this id.' },
  already_released: { status: 409, code: 'already_released', message: 'The hold was already released; it cannot be committed.' },
  already_committed: { status: 409, code: 'already_committed', message: 'The hold was already committed; it cannot be released.' },
  refund_exceeds_spend: { status: 409, code: 'refund_exceeds_spend', message: 'A refund may not exceed what the key has spent.' },
  // A key's or its account's rate limit (detail 'requests') or concurrency limit ('concurrency'); with a Retry-After header.
  rate_limited: {
    status: 429,
    code: 'rate_limited',
    message: 'Too many requests with this key; try again after the Retry-After header\'s seconds.',
    named: (limit) =>
      limit === 'concurrency'
        ? 'Too many requests with this key are in flight; try again after the Retry-After header\'s seconds.'
        : 'Too many requests with this key; try again after the Retry-After header\'s seconds.',
  },
};

/** Thrown `AgentKeyError`s: 4xx show the error's own message, which names the field. */
const ERRORS: Record<Exclude<AgentKeyErrorCode, LibraryReason>, Refusal> = {
  invalid_argument: { status: 400, code: 'invalid_argument', message: 'An argument is not valid.', named: own },
  invalid_budget: { status: 400, code: 'invalid_budget', message: 'The budget is not a number of cents in range.', named: own },
  invalid_duration: { status: 400, code: 'invalid_duration', message: 'The duration is not valid.', named: own },
  invalid_period: { status: 400, code: 'invalid_period', message: "The budget period must be 'day', 'month' or null.", named: own },
  invalid_scope: { status: 400, code: 'invalid_scope', message: 'The scopes are not valid.', named: own },
  scope_not_allowed: { status: 403, code: 'scope_not_allowed', message: 'A key can only grant scopes it holds itself.', named: own },
  budget_exceeds_parent: { status: 403, code: 'budget_exceeds_parent', message: "A key's budget may not exceed its parent's.", named: own },
  expiry_exceeds_parent: { status: 403, code: 'expiry_exceeds_parent', message: 'A key may not outlive its parent.', named: own },
  parent_not_found: { status: 404, code: 'parent_not_found', message: 'The parent key does not exist.', named: own },
  parent_inactive: { status: 403, code: 'parent_inactive', message: 'The parent key is revoked or expired.', named: own },
  depth_exceeded: { status: 403, code: 'depth_exceeded', message: 'The delegation tree may not grow deeper.', named: own },
  key_outside_tree: { status: 403, code: 'key_outside_tree', message: "A key may revoke only itself and its descendants.", named: own },
  key_not_found: { status: 404, code: 'key_not_found', message: 'No key has this id.', named: own },
  key_inactive: { status: 409, code: 'key_inactive', message: 'The key is revoked; a revoked key cannot be changed.', named: own },
  narrows_children: {
    status: 409,
    code: 'narrows_children',
    message: 'The change would leave a descendant wider than its parent; pass cascade to narrow it too.',
    named: own,
  },
  // The operator's setup, not the client's request: 500, without the detail.
  invalid_table_name: { status: 500, code: 'invalid_table_name', message: STORE_UNAVAILABLE },
  invalid_pool: { status: 500, code: 'invalid_pool', message: STORE_UNAVAILABLE },
  not_migrated: { status: 500, code: 'not_migrated', message: STORE_UNAVAILABLE },
  storage_error: { status: 500, code: 'storage_error', message: STORE_UNAVAILABLE },
  storage_timeout: { status: 503, code: 'storage_timeout', message: 'The key store did not answer in time; try again later.' },
  // A total past BIGINT: the request is well formed, but it cannot be counted.
  total_out_of_range: { status: 422, code: 'total_out_of_range', message: 'This would take a total past what the key store can count.', named: own },
  webhook_not_found: { status: 404, code: 'webhook_not_found', message: 'No webhook endpoint has this id.', named: own },
  invalid_rate_limit: { status: 400, code: 'invalid_rate_limit', message: 'The rate limit or concurrency limit is not valid.', named: own },
  unknown_model: { status: 400, code: 'unknown_model', message: 'The model has no price in the catalog; configure one.', named: own },
  invalid_usage: { status: 400, code: 'invalid_usage', message: 'The token counts are not valid.', named: own },
  invalid_llm_request: { status: 400, code: 'invalid_llm_request', message: 'The LLM request body is not valid.', named: own },
};

/** The surfaces' own. */
const SURFACES: Record<SurfaceReason, Refusal> = {
  missing_key: { status: 401, code: 'missing_key', message: 'Send an API key as "Authorization: Bearer <key>".', packageError: 'Missing API key' },
  insufficient_scope: {
    status: 403,
    code: 'insufficient_scope',
    message: 'This key lacks the scope this route needs.',
    named: (scope) => `This key lacks the scope "${scope}".`,
    packageError: 'insufficient_scope',
  },
  invalid_token: {
    status: 401,
    code: 'invalid_token',
    message: 'The bearer token is not valid.',
    named: (why) => `The bearer token is not valid: ${asSentence(why)}`,
  },
  token_expired: { status: 401, code: 'token_expired', message: 'The bearer token has expired.' },
  // The client's token may be fine: fail closed, and say it is the issuer's fault.
  issuer_unavailable: { status: 503, code: 'issuer_unavailable', message: "The token issuer's keys could not be fetched; try again later." },
  // The app's reserveCents function answered something other than cents: the app's fault, so 500.
  invalid_reserve: {
    status: 500,
    code: 'invalid_reserve',
    message: 'reserveCents did not return a number of cents.',
    named: (got) => `reserveCents returned ${got}, not a number of cents from 0 to ${MAX_CENTS}.`,
  },
  internal_error: { status: 500, code: 'internal_error', message: 'The server failed to handle this request.' },
  invalid_json: { status: 400, code: 'invalid_json', message: 'The request body is not valid JSON.' },
  body_too_large: {
    status: 413,
    code: 'body_too_large',
    message: 'The request body is too large.',
    named: (limit) => `The request body must be at most ${limit}.`,
  },
  invalid_email: { status: 400, code: 'invalid_email', message: 'email must be a valid email address.', packageError: 'Valid email is required' },
  email_required: {
    status: 400,
    code: 'email_required',
    message: 'Signup needs an email address in the "email" field.',
    packageError: 'Valid email is required',
  },
  signup_scope_not_allowed: {
    status: 400,
    code: 'scope_not_allowed',
    message: 'These scopes are not allowed on signup.',
    named: (scopes) => `These scopes are not allowed on signup: ${scopes}.`,
    packageError: (scopes) => `Scopes not allowed on signup: ${scopes}`,
  },
  signup_rate_limited: { status: 429, code: 'rate_limited', message: 'Too many signups from this address; try again in a minute.' },
  key_not_in_account: { status: 404, code: 'not_found', message: 'No active key with this id belongs to your account.' },
  // The service's own (src/server).
  missing_hold_key: {
    status: 401,
    code: 'missing_key',
    message: 'Send the key that took the hold as "key" in the body or "Authorization: Bearer <key>".',
  },
  missing_admin_key: { status: 401, code: 'missing_admin_key', message: 'This route needs the admin key as "Authorization: Bearer <admin key>".' },
  invalid_admin_key: { status: 401, code: 'invalid_admin_key', message: 'The bearer is not the admin key; agent keys cannot use admin routes.' },
  route_not_found: { status: 404, code: 'not_found', message: 'No route matches this request.', named: (route) => `No route for ${route}.` },
  // The detail is the methods the path takes, as its Allow header lists them.
  method_not_allowed: {
    status: 405,
    code: 'method_not_allowed',
    message: 'This path does not take this method; the Allow header lists the ones it does.',
    named: (allow) => `This path does not take this method; it takes ${allow}.`,
  },
  account_budget_not_found: { status: 404, code: 'not_found', message: 'This account has no budget.' },
  account_rate_limit_not_found: { status: 404, code: 'not_found', message: 'This account has no rate limit or concurrency limit.' },
  invalid_request: { status: 400, code: 'invalid_request', message: 'The request is invalid.', named: own },
  unsupported_media_type: {
    status: 415,
    code: 'unsupported_media_type',
    message: 'Send the body as JSON with "Content-Type: application/json".',
  },
  unhealthy: { status: 503, code: 'unhealthy', message: 'The database is not reachable.' },
  // The LLM proxy: the detail is its whole sentence (the model and the key's list, the upstream's status).
  model_not_allowed: { status: 403, code: 'model_not_allowed', message: 'This key may not use this model.', named: own },
  upstream_not_found: { status: 404, code: 'upstream_not_found', message: 'No upstream of this name serves this API.', named: own },
  upstream_auth_failed: {
    status: 502,
    code: 'upstream_auth_failed',
    message: "The upstream refused the proxy's own credentials; nothing was charged.",
    named: own,
  },
  upstream_error: { status: 502, code: 'upstream_error', message: 'The upstream failed; nothing was charged.', named: own },
  upstream_timeout: { status: 504, code: 'upstream_timeout', message: 'The upstream did not answer in time; nothing was charged.', named: own },
  upstream_unreachable: { status: 502, code: 'upstream_unreachable', message: 'The upstream could not be reached; nothing was charged.', named: own },
  upstream_stream_failed: {
    status: 502,
    code: 'upstream_stream_failed',
    message: 'The upstream broke off its answer; what was used so far is charged.',
    named: own,
  },
};

/** The table's three groups, as the README shows them. */
export const REFUSAL_GROUPS = { library: LIBRARY, errors: ERRORS, surfaces: SURFACES } as const;

/** The whole table, by reason. */
export const REFUSALS: Readonly<Record<RefusalReason, Refusal>> = { ...LIBRARY, ...ERRORS, ...SURFACES };

/** The one JSON error body every agentkey HTTP surface sends. */
export interface HttpErrorBody {
  error: { code: string; message: string; [extra: string]: unknown };
}

export interface HttpError {
  status: number;
  body: HttpErrorBody;
  /** Headers every surface sends with it (a rate limit's Retry-After). */
  headers?: Record<string, string>;
  /** The package's `error` string for this refusal, on its Express surfaces; never sent elsewhere. */
  packageError?: string;
}

/** An error body of any status and code; surfaces answer refusals with `refuse()`. */
export function httpError(status: number, code: string, message: string, extra: Record<string, unknown> = {}): HttpError {
  return { status, body: { error: { code, message, ...extra } } };
}

/**
 * The answer to one refusal, from the table. `detail` names what was refused, for the
 * rows that name it (ignored by fixed rows); `extra` fields go into the body beside
 * `code` and `message`.
 *
 * @example refuse('insufficient_scope', 'proxy.chat', { requiredScope: 'proxy.chat' })
 */
export function refuse(reason: RefusalReason, detail?: string, extra: Record<string, unknown> = {}): HttpError {
  const row = REFUSALS[reason];
  const message = detail !== undefined && row.named ? row.named(detail) : row.message;
  const e = httpError(row.status, row.code, message, extra);
  const pkg = typeof row.packageError === 'function' ? (detail !== undefined ? row.packageError(detail) : undefined) : row.packageError;
  return pkg === undefined ? e : { ...e, packageError: pkg };
}

/**
 * The answer to a library result that says no: `validate()`'s `{ valid: false }`, or the
 * `{ success: false }` of a charge, hold, commit, release or adjustment. A budget
 * refusal carries which budget refused and the figures, when the result has them.
 *
 * @example const r = await ak.trackUsage(key, { costCents: 3 }); if (!r.success) return refusalOf(r);
 */
export function refusalOf(result: {
  reason: LibraryReason;
  limitedBy?: unknown;
  budgetUsedCents?: number;
  budgetRemainingCents?: number | null;
  limit?: 'requests' | 'concurrency';
  retryAfterMs?: number;
  resetAt?: string | null;
}): HttpError {
  if (result.reason === 'rate_limited') {
    const { limit, limitedBy, retryAfterMs = 1_000, resetAt = null } = result;
    const e = refuse('rate_limited', limit, { limit, limitedBy, retryAfterMs, resetAt });
    return { ...e, headers: { 'Retry-After': String(Math.max(0, Math.ceil(retryAfterMs / 1_000))) } };
  }
  if (result.reason === 'budget_exceeded' && result.limitedBy !== undefined) {
    const { limitedBy, budgetUsedCents, budgetRemainingCents } = result;
    return refuse('budget_exceeded', undefined, { limitedBy, budgetUsedCents, budgetRemainingCents });
  }
  return refuse(result.reason);
}

/** A detail as one sentence: one line, at most 200 characters, ending in a full stop. */
function asSentence(detail: string): string {
  const d = detail.replace(/\s+/g, ' ').trim().slice(0, 200);
  return /[.!?]$/.test(d) ? d : `${d}.`;
}
