import { OpenAPIHono } from '@hono/zod-openapi';
import type { Env } from './context.js';
import { RefusalError, refuse } from '../http/errors.js';
import { ErrorBody } from './schemas.js';

/**
 * What every route group shares: a router whose validators answer 400 in the service's
 * own words, and the documented error answers of the OpenAPI document.
 */

/** A router for one group of routes: a request that fails its schema is a 400 naming the field. */
export function router(): OpenAPIHono<Env> {
  return new OpenAPIHono<Env>({
    defaultHook: (result) => {
      if (!result.success) throw new RefusalError(refuse('invalid_request', describeIssue(result.error.issues[0], result.target)));
    },
  });
}

type Issue = { path: PropertyKey[]; message: string; code?: string; keys?: string[] };

function describeIssue(issue: Issue | undefined, target: string): string {
  const where = target === 'json' ? 'the body' : target === 'query' ? 'the query' : target === 'param' ? 'the path' : target;
  if (!issue) return `The request is invalid in ${where}.`;
  if (issue.code === 'unrecognized_keys' && issue.keys) {
    // A nested object's field by its whole path ("usage.inputToken"), so the caller knows which object.
    const named = issue.keys.map((k) => `"${[...issue.path.map(String), k].join('.')}"`);
    return `Unknown field${issue.keys.length > 1 ? 's' : ''} in ${where}: ${named.join(', ')}.`;
  }
  const field = issue.path.map(String).join('.');
  const message = issue.message.replace(/\.$/, '');
  return field ? `Field "${field}" in ${where} is invalid: ${message}.` : `The request is invalid in ${where}: ${message}.`;
}

/** What each error status means, as the document says it, with the codes it carries. */
const ANSWERS = {
  400: 'Malformed input: invalid_json, invalid_request (naming the field), or a value the library refuses (invalid_argument, invalid_cost...).',
  401: 'A missing or wrong key: missing_admin_key, invalid_admin_key (admin routes); missing_key, invalid_key, key_expired, key_revoked (agent routes).',
  403: 'Not allowed: a child key wider than its parent (scope_not_allowed, budget_exceeds_parent, expiry_exceeds_parent, parent_inactive, depth_exceeded).',
  404: 'Not found: key_not_found, reservation_not_found, parent_not_found, webhook_not_found, not_found.',
  405: 'method_not_allowed: this path does not take that method; the Allow header lists the ones it does.',
  409: 'Conflict: idempotency_conflict, already_committed, already_released; narrows_children, key_inactive (changing a key).',
  413: 'body_too_large: the body is over the service\'s limit (--body-limit).',
  415: 'unsupported_media_type: a body that is not declared as "Content-Type: application/json".',
  429: 'budget_exceeded: a budget (the key\'s, an ancestor\'s or the account\'s: see limitedBy) cannot cover the cost; rate_limited: a rate or concurrency limit (Retry-After header).',
  500: 'internal_error or storage_error: a fault, logged with the request id; the body never holds its detail.',
  503: 'storage_timeout: the database did not answer in time (a charge may still have landed: retry with the same idempotencyKey); unhealthy from /healthz.',
} as const;

export type ErrorStatus = keyof typeof ANSWERS;

const json = { 'application/json': { schema: ErrorBody } };
const allow = { Allow: { description: 'The methods this path takes.', schema: { type: 'string' as const, example: 'GET, HEAD' } } };
type Answer = { description: string; content: typeof json; headers?: typeof allow };

/** The documented error answers of a route: the statuses given, and 405 (another method on its path), which every path can send. */
export function errors<S extends ErrorStatus>(...statuses: S[]) {
  const answers: Partial<Record<ErrorStatus, Answer>> = {};
  for (const status of statuses) answers[status] = { description: ANSWERS[status], content: json };
  answers[405] = { description: ANSWERS[405], content: json, headers: allow };
  return answers as Record<S | 405, Answer>;
}

/** The errors of a route that waits on the database (500 for a fault, 503 when it does not answer in time), beside its own. */
export function storeErrors<S extends ErrorStatus>(...statuses: S[]) {
  return errors<S | 500 | 503>(...statuses, 500, 503);
}

/** The errors of a route that also takes a JSON body (400, 413, 415), beside its own. */
export function bodyErrors<S extends ErrorStatus>(...statuses: S[]) {
  return storeErrors<S | 400 | 413 | 415>(400, 413, 415, ...statuses);
}
