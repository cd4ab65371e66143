import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { type HttpError, errorToHttp, refuse } from '../http/errors.js';
import type { Env } from './context.js';

/**
 * How the service sends what it refuses. Every refusal comes from the refusal table
 * (src/http/refusals.ts), as every HTTP surface's does: the routes throw a
 * `RefusalError(refuse(...))` or `RefusalError(refusalOf(result))`; this file only turns
 * what Hono's own middleware throws into the table's rows, and sends the answer.
 */

/** Any thrown error as a status and the JSON body; never a stack trace or a driver's words. */
export function toHttp(err: unknown): HttpError {
  if (err instanceof HTTPException) {
    // Hono's timeout middleware (the only 503), its JSON validator (400) and a media type check (415).
    if (err.status === 503) return refuse('storage_timeout');
    if (err.status === 415) return refuse('unsupported_media_type');
    if (err.status === 400) return refuse('invalid_json');
    return refuse(err.status < 500 ? 'invalid_request' : 'internal_error');
  }
  return errorToHttp(err);
}

/** Answers with an error in the `/v1` routes' shape, `{ error: { code, message } }`; its code goes on the request's log line. */
export function sendError(c: Context<Env>, { status, body, headers }: HttpError): Response {
  c.set('errorCode', body.error.code);
  return c.json(body, status as 400, headers);
}

/** What the logs keep of a fault: enough to find it, in the server's logs only. */
export function errorDetail(err: unknown): Record<string, unknown> {
  if (err instanceof Error) return { name: err.name, message: err.message, cause: err.cause === undefined ? undefined : String(err.cause) };
  return { value: String(err) };
}
