import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { errorToHttp } from '../http/errors.js';
import type { Env } from './context.js';

/**
 * How the service answers what it refuses: one JSON shape, `{ error: { code, message } }`,
 * from an ApiError (an expected refusal), an HTTPException (thrown by Hono's own
 * middleware and validators) or an AgentKeyError (mapped by the library's one table).
 */

/** An expected refusal: becomes the one JSON error shape with this status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export interface ErrorAnswer {
  status: number;
  body: { error: { code: string; message: string; [extra: string]: unknown } };
}

export function errorBody(code: string, message: string, extra: Record<string, unknown> = {}): ErrorAnswer['body'] {
  return { error: { code, message, ...extra } };
}

/** Any thrown error as a status and the JSON body; never a stack trace or a driver's words. */
export function toHttp(err: unknown): ErrorAnswer {
  if (err instanceof ApiError) return { status: err.status, body: errorBody(err.code, err.message, err.extra) };
  if (err instanceof HTTPException) {
    // Hono's timeout middleware (the only 503), its JSON validator (400) and zod-openapi's media type check (415).
    if (err.status === 503) return { status: 503, body: errorBody('storage_timeout', 'The key store did not answer in time; try again later.') };
    if (err.status === 400) return { status: 400, body: errorBody('invalid_json', 'The request body is not valid JSON.') };
    if (err.status === 415) return { status: 415, body: errorBody('unsupported_media_type', 'Send the body as JSON with "Content-Type: application/json".') };
    return { status: err.status, body: errorBody('bad_request', 'The request could not be handled.') };
  }
  return errorToHttp(err) as ErrorAnswer;
}

/** Answers with an error; its code goes on the request's log line. */
export function sendError(c: Context<Env>, { status, body }: ErrorAnswer): Response {
  c.set('errorCode', body.error.code);
  return c.json(body, status as 400);
}

/** What the logs keep of a fault: enough to find it, in the server's logs only. */
export function errorDetail(err: unknown): Record<string, unknown> {
  if (err instanceof Error) return { name: err.name, message: err.message, cause: err.cause === undefined ? undefined : String(err.cause) };
  return { value: String(err) };
}

const KEY_REFUSED: Record<string, [string, string]> = {
  invalid: ['invalid_key', 'The API key is not valid.'],
  invalid_key: ['invalid_key', 'The API key is not valid.'],
  expired: ['key_expired', 'The API key has expired.'],
  revoked: ['key_revoked', 'The API key has been revoked.'],
};

/** A refused charge or hold (the library's result) as the service's answer. */
export function spendRefused(result: { success: false; reason: string }): ApiError {
  const r = result as { reason: string; limitedBy?: unknown; budgetUsedCents?: number; budgetRemainingCents?: number | null };
  if (r.reason === 'budget_exceeded') {
    return new ApiError(429, 'budget_exceeded', 'The budget cannot cover this cost.', {
      limitedBy: r.limitedBy,
      budgetUsedCents: r.budgetUsedCents,
      budgetRemainingCents: r.budgetRemainingCents,
    });
  }
  if (r.reason === 'idempotency_conflict') {
    return new ApiError(409, 'idempotency_conflict', 'This idempotency key was already used with a different cost.');
  }
  if (r.reason === 'invalid_cost') return new ApiError(400, 'invalid_cost', 'costCents must be a number of cents of at least 0.');
  const [code, message] = KEY_REFUSED[r.reason] ?? (KEY_REFUSED.invalid as [string, string]);
  return new ApiError(401, code, message);
}

/** A refused commit or release (the library's reason) as the service's answer. */
export function settleRefused(reason: string): ApiError {
  if (reason === 'reservation_not_found') return new ApiError(404, 'reservation_not_found', 'This key has no reservation with this id.');
  if (reason === 'already_released') return new ApiError(409, 'already_released', 'The hold was already released; it cannot be committed.');
  if (reason === 'already_committed') return new ApiError(409, 'already_committed', 'The hold was already committed; it cannot be released.');
  if (reason === 'idempotency_conflict') {
    return new ApiError(409, 'idempotency_conflict', 'The hold was already committed with a different cost; a retry must repeat the same cost.');
  }
  return new ApiError(400, reason, 'costCents must be a number of cents of at least 0.');
}
